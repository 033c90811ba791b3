//! gRPC through the proxy over HTTP/2 on both sides: a call passes with its body and
//! trailers intact, and the gateway's own refusals of a gRPC call come as `grpc-status`
//! and `grpc-message` (trailers-only), with the reason code beside them.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::*;

/// An HTTP/2 (prior knowledge) server that answers every call like a gRPC service: the
/// request's frames back, then trailers `grpc-status: 0` and `x-trailer: kept`.
async fn grpc_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let te = req.headers().get("te").cloned();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    trailers.insert("x-trailer", http::HeaderValue::from_static("kept"));
                    if let Some(te) = te {
                        trailers.insert("x-te-seen", te);
                    }
                    let frames = vec![
                        Ok::<_, std::convert::Infallible>(Frame::data(body)),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let mut response = http::Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                    response
                        .headers_mut()
                        .insert("content-type", http::HeaderValue::from_static("application/grpc"));
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// One gRPC call over an h2c connection to the proxy: status, headers, body and trailers.
async fn call(gw: &TestGateway, path: &str, message: &[u8]) -> (u16, http::HeaderMap, Bytes, Option<http::HeaderMap>) {
    let stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    let request = http::Request::post(format!("http://{}{path}", gw.proxy))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(frame)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (parts.status.as_u16(), parts.headers, collected.to_bytes(), trailers)
}

#[tokio::test]
async fn a_grpc_call_passes_with_its_trailers_and_refusals_speak_grpc() {
    let upstream = grpc_echo().await;
    let text = config_with(
        &format!("\"{upstream}\""),
        "http2 = true",
        r#"
[[routes]]
id = "greeter"
path_prefix = "/helloworld.Greeter/"
methods = ["POST"]
upstream = "main"

[[routes]]
id = "vault"
path_prefix = "/vault.Secrets/"
methods = ["POST"]
upstream = "main"
auth = "required"
"#,
    )
    .replace("drain_timeout_ms = 5000\n", "drain_timeout_ms = 5000\nh2c = true\n");
    let gw = start(&text).await;

    let (status, headers, body, trailers) = call(&gw, "/helloworld.Greeter/SayHello", b"\x0a\x05world").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(&body[5..], b"\x0a\x05world", "the message comes back whole");
    let trailers = trailers.expect("trailers pass through");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-trailer"], "kept");
    assert_eq!(trailers["x-te-seen"], "trailers", "TE: trailers reaches the service");

    for (path, grpc_status, reason) in [
        ("/vault.Secrets/Get", "16", "authn.credentials_missing"),
        ("/nowhere.Svc/Call", "12", "route.not_found"),
    ] {
        let (status, headers, body, _) = call(&gw, path, b"").await;
        assert_eq!(status, 200, "{path}: gRPC refusals are trailers-only responses");
        assert_eq!(headers["grpc-status"], grpc_status, "{path}");
        assert_eq!(headers["x-pinpoint-reason"], reason, "{path}");
        let message = headers["grpc-message"].to_str().unwrap();
        assert!(message.starts_with(reason), "{path}: {message}");
        assert!(body.is_empty());
        let request_id = headers["x-request-id"].to_str().unwrap();
        let d = gw.decision(request_id).await;
        assert_eq!(
            d.reason.map(|r| r.code()),
            Some(reason),
            "the decision keeps the reason"
        );
    }
}
