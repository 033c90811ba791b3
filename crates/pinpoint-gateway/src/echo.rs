//! The built-in echo upstream used by the demo config (`builtin:echo`) and the benchmark
//! (`pinpoint echo`): it answers every request with a JSON description of what it received,
//! or, in [`EchoMode::Fixed`] (the benchmark's upstream), with the same small body every
//! time, so its work does not grow with the headers a proxy in front of it adds.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Largest request body the echo service reads.
const MAX_BODY: usize = 1 << 20;

/// What the echo service answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoMode {
    /// A JSON description of the request: method, path, query, headers and body.
    Describe,
    /// The same small JSON body for every request (the body is read and discarded).
    Fixed,
}

/// The body [`EchoMode::Fixed`] answers with.
pub const FIXED_BODY: &str = r#"{"service":"pinpoint-echo","fixed":true}"#;

/// Serves the describing echo service on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    serve_mode(listener, shutdown, EchoMode::Describe).await
}

/// Serves the echo service in `mode` on `listener` until `shutdown` resolves.
pub async fn serve_mode(listener: TcpListener, shutdown: impl Future<Output = ()>, mode: EchoMode) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "echo accept failed");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .max_headers(200)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| async move {
                        match mode {
                            EchoMode::Describe => describe(req).await,
                            EchoMode::Fixed => fixed(req).await,
                        }
                    }),
                )
                .await;
        });
    }
}

async fn fixed(req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let mut body = req.into_body();
    // Read (and drop) the body, so the connection can carry the next request.
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    let mut response = http::Response::new(Full::new(Bytes::from_static(FIXED_BODY.as_bytes())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

async fn describe(req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(json(413, serde_json::json!({"error": "body larger than 1 MiB"})));
        }
    };
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    Ok(json(
        200,
        serde_json::json!({
            "service": "pinpoint-echo",
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "headers": headers,
            "body_bytes": body.len(),
            "body": String::from_utf8_lossy(&body),
        }),
    ))
}

fn json(status: u16, value: serde_json::Value) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
