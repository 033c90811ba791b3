//! Upstream pools with real servers: active health checks take a killed target out and
//! bring it back with no failed request while another target is healthy; weighted round
//! robin and least connections; a pool with every target down answers 503 with
//! `Retry-After`; an HTTPS upstream verified against its own CA, spoken to over HTTP/2.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::*;

/// A small HTTP server (HTTP/1.1 and HTTP/2; TLS when given a config): answers
/// `{"server": name, "version": ...}`, `/slow` after 700 ms. Aborting its task closes
/// every connection it holds.
fn serve_named(listener: TcpListener, name: &'static str, tls: Option<Arc<rustls::ServerConfig>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tls = tls.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                    if req.uri().path().ends_with("/slow") {
                        tokio::time::sleep(Duration::from_millis(700)).await;
                    }
                    let body = serde_json::json!({"server": name, "version": format!("{:?}", req.version())});
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body.to_string()))))
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    }
                    Some(config) => {
                        if let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                }
            });
        }
    })
}

async fn named_server(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    (listener.local_addr().unwrap(), serve_named(listener, name, None))
}

async fn served_by(gw: &TestGateway, path: &str) -> (u16, String) {
    let resp = gw.http.get(gw.url(path)).send().await.unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    (status, body["server"].as_str().unwrap_or_default().to_owned())
}

async fn target_state(gw: &TestGateway, target: SocketAddr) -> String {
    let health = gw.api_json("/healthz", None).await;
    health["upstreams"]["main"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target.to_string())
        .map(|t| t["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_killed_target_is_taken_out_and_brought_back_without_a_failed_request() {
    let (a, a_server) = named_server("a").await;
    let (b, _b_server) = named_server("b").await;
    let gw = start(&config_with(
        &format!("\"{a}\", \"{b}\""),
        "health_check = { path = \"/health\", interval_ms = 100, timeout_ms = 100, healthy_threshold = 2, unhealthy_threshold = 2 }",
        "",
    ))
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (status, server) = served_by(&gw, "/orders/1").await;
        assert_eq!(status, 200);
        seen.insert(server);
    }
    assert_eq!(seen.len(), 2, "both targets serve");

    a_server.abort();
    let mut failed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while target_state(&gw, a).await != "down" {
        assert!(tokio::time::Instant::now() < deadline, "a was never taken out");
        let (status, server) = served_by(&gw, "/orders/1").await;
        failed += usize::from(status != 200);
        assert!(status != 200 || server == "b");
    }
    for _ in 0..10 {
        assert_eq!(served_by(&gw, "/orders/1").await, (200, String::from("b")));
    }
    assert_eq!(failed, 0, "no caller sees the dead target");
    let target_up = |metrics: &str, target: SocketAddr| {
        metrics
            .lines()
            .find(|l| l.starts_with("pinpoint_upstream_target_up") && l.contains(&format!("target=\"{target}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    let metrics = gw.metrics().await;
    assert_eq!(
        (target_up(&metrics, a).as_deref(), target_up(&metrics, b).as_deref()),
        (Some("0"), Some("1"))
    );

    // Revived on the same port: checks bring it back.
    let listener = TcpListener::bind(a).await.unwrap();
    let _a_again = serve_named(listener, "a", None);
    poll_until("a is back", || async { target_state(&gw, a).await == "up" }).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        seen.insert(served_by(&gw, "/orders/1").await.1);
    }
    assert!(seen.contains("a"), "{seen:?}");
    let metrics = gw.metrics().await;
    for to in ["down", "up"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("pinpoint_upstream_target_transitions_total")
                    && l.contains(&format!("to=\"{to}\""))),
            "{to} is counted"
        );
    }
}

#[tokio::test]
async fn a_pool_with_every_target_down_answers_503_with_retry_after() {
    let (a, a_server) = named_server("a").await;
    let gw = start(&config_with(
        &format!("\"{a}\""),
        "health_check = { path = \"/\", interval_ms = 100, timeout_ms = 100, healthy_threshold = 1, unhealthy_threshold = 1 }",
        "",
    ))
    .await;
    assert_eq!(served_by(&gw, "/orders/1").await.0, 200);
    a_server.abort();
    poll_until("a is down", || async { target_state(&gw, a).await == "down" }).await;
    let resp = gw.http.get(gw.url("/orders/1")).send().await.unwrap();
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    problem(resp, 503, "upstream.unavailable").await;
}

#[tokio::test]
async fn weighted_round_robin_and_least_connections() {
    let (a, _a) = named_server("a").await;
    let (b, _b) = named_server("b").await;
    let gw = start(&config_with(
        &format!("{{ target = \"{a}\", weight = 3 }}, \"{b}\""),
        "",
        "",
    ))
    .await;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..40 {
        *counts.entry(served_by(&gw, "/orders/1").await.1).or_insert(0) += 1;
    }
    assert_eq!(counts, [(String::from("a"), 30), (String::from("b"), 10)].into());

    let gw = start(&config_with(
        &format!("\"{a}\", \"{b}\""),
        "balance = \"least_connections\"",
        "",
    ))
    .await;
    let slow = {
        let (http, url) = (gw.http.clone(), gw.url("/orders/slow"));
        tokio::spawn(async move {
            let body: serde_json::Value = http.get(url).send().await.unwrap().json().await.unwrap();
            body["server"].as_str().unwrap().to_owned()
        })
    };
    // While one target holds the slow request, the other takes every new one.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut fast = std::collections::BTreeSet::new();
    for _ in 0..6 {
        fast.insert(served_by(&gw, "/orders/1").await.1);
    }
    let busy = slow.await.unwrap();
    assert_eq!(fast.len(), 1, "{fast:?}");
    assert!(!fast.contains(&busy), "the busy target ({busy}) got none of {fast:?}");
}

#[tokio::test]
async fn an_https_upstream_with_its_own_ca_over_http2() {
    // A CA, and a certificate for the name the upstream is reached by.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![String::from("backend.internal")])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = serve_named(listener, "tls-backend", Some(Arc::new(server)));

    let gw = start(&config_with(
        &format!("\"https://{addr}\""),
        &format!(
            "tls = {{ ca = {:?}, server_name = \"backend.internal\" }}",
            ca_path.display().to_string()
        ),
        "",
    ))
    .await;
    let resp = gw.http.get(gw.url("/orders/1")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["server"], "tls-backend");
    assert_eq!(body["version"], "HTTP/2.0", "HTTP/2 by ALPN: {body}");

    // Without that CA (the system's roots), the upstream's certificate is not trusted.
    let gw = start(&config_with(
        &format!("\"https://{addr}\""),
        "tls = { server_name = \"backend.internal\" }",
        "",
    ))
    .await;
    let resp = gw.http.get(gw.url("/orders/1")).send().await.unwrap();
    let body = problem(resp, 502, "upstream.connect_failed").await;
    assert!(
        !body.to_string().contains(&addr.to_string()),
        "the address stays operator-side"
    );
}

#[tokio::test]
async fn an_upstream_switching_protocols_unasked_is_a_bad_response() {
    let upstream = raw_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        Duration::ZERO,
    )
    .await;
    let gw = start(&config_with(&format!("\"{upstream}\""), "", "")).await;
    problem(
        gw.http.get(gw.url("/orders/1")).send().await.unwrap(),
        502,
        "upstream.bad_response",
    )
    .await;
}

#[tokio::test]
async fn an_upstream_server_name_that_is_no_name_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pinpoint.toml");
    std::fs::write(
        &path,
        "[upstreams.main]\ntargets = [\"https://127.0.0.1:9\"]\ntls = { server_name = \"orders.internal:8443\" }\n\n\
         [[routes]]\nid = \"all\"\npath_prefix = \"/\"\nupstream = \"main\"\n",
    )
    .unwrap();
    let error = pinpoint_gateway::runtime::load_file(&path)
        .expect_err("refused")
        .to_string();
    assert!(error.contains("orders.internal:8443"), "{error}");
}

/// How [`counting_upstream`] treats the requests on a connection.
#[derive(Clone, Copy, PartialEq)]
enum Conduct {
    /// Answers every request, keeping the connection open.
    KeepAlive,
    /// Answers with `Connection: close` and closes.
    CloseEach,
    /// Answers the first request; reads the second and closes without an answer (a
    /// keep-alive timer firing as the request arrives).
    DropSecond,
}

/// An HTTP/1.1 upstream that counts the connections it accepts and answers requests with
/// `ok` as `conduct` says.
async fn counting_upstream(conduct: Conduct) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                for answered in 0.. {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                    seen.drain(..end);
                    let reply: &[u8] = match conduct {
                        Conduct::DropSecond if answered == 1 => return,
                        Conduct::CloseEach => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                    };
                    if stream.write_all(reply).await.is_err() || conduct == Conduct::CloseEach {
                        let _ = stream.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Connections to an upstream are kept and reused for request after request; one the
/// upstream closes is not reused, and no request fails for it.
#[tokio::test]
async fn upstream_connections_are_reused_and_a_closed_one_is_not() {
    use std::sync::atomic::Ordering;
    for close in [false, true] {
        let conduct = if close { Conduct::CloseEach } else { Conduct::KeepAlive };
        let (upstream, accepted) = counting_upstream(conduct).await;
        let gw = start(&config_with(&format!("\"{upstream}\""), "", "")).await;
        for i in 0..30 {
            let resp = gw.http.get(gw.url(&format!("/orders/{i}"))).send().await.unwrap();
            assert_eq!(resp.status(), 200, "request {i} (close: {close})");
            assert_eq!(resp.text().await.unwrap(), "ok");
        }
        let connections = accepted.load(Ordering::SeqCst);
        match close {
            // Sequential requests from one client, on one worker: one connection, or a
            // few if the test's client lands on several workers.
            false => assert!(connections <= 4, "{connections} connections for 30 requests"),
            true => assert_eq!(connections, 30),
        }
    }
}

/// A kept-alive connection the upstream closes as a request goes out on it (its idle
/// timer fired): a safe request on a connection idle for a second or more goes again on a
/// new connection; a POST is not sent twice (an honest 502).
#[tokio::test]
async fn a_safe_request_meeting_a_keep_alive_close_goes_again_on_a_new_connection() {
    use std::sync::atomic::Ordering;
    let (upstream, accepted) = counting_upstream(Conduct::DropSecond).await;
    let gw = start(&config_with(&format!("\"{upstream}\""), "", "")).await;
    let get = || async { gw.http.get(gw.url("/orders/1")).send().await.unwrap() };
    assert_eq!(get().await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let resp = get().await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let resp = gw.http.post(gw.url("/orders/1")).body("x").send().await.unwrap();
    problem(resp, 502, "upstream.bad_response").await;
}
