//! OTLP span export (`--features otlp`): a request's span reaches a local OTLP/HTTP
//! receiver, in the caller's trace, with the route, status and reason.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::*;

/// An OTLP/HTTP receiver: keeps every body POSTed to `/v1/traces`.
async fn otlp_receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let bodies = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let bodies = bodies.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        if path == "/v1/traces" {
                            bodies.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
                        }
                        let mut response = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                        response
                            .headers_mut()
                            .insert("content-type", http::HeaderValue::from_static("application/json"));
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn each_request_is_exported_as_a_span_in_the_callers_trace() {
    let (receiver, received) = otlp_receiver().await;
    let text = echo_config().replace(
        "drain_timeout_ms = 5000\n",
        &format!("drain_timeout_ms = 5000\notlp_traces_endpoint = \"http://{receiver}/v1/traces\"\n"),
    );
    let gw = start(&text).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let resp = gw
        .http
        .post(gw.url("/admin/users"))
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    poll_until("the span is exported", || async {
        received.lock().unwrap().iter().any(|b| b.contains(trace_id))
    })
    .await;
    let body = received
        .lock()
        .unwrap()
        .iter()
        .find(|b| b.contains(trace_id))
        .cloned()
        .unwrap();
    let export: serde_json::Value = serde_json::from_str(&body).unwrap();
    let span = export["resourceSpans"][0]["scopeSpans"][0]["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["traceId"] == trace_id)
        .unwrap()
        .clone();
    assert_eq!(span["parentSpanId"], parent, "{span}");
    assert_eq!(span["name"], "POST admin");
    let text = span.to_string();
    assert!(text.contains("policy.explicit_deny"), "{text}");
    assert!(body.contains("pinpoint"), "the service is named");
}
