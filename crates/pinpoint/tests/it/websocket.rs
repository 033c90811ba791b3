//! WebSockets through the proxy, with a real client and server (tungstenite): a route
//! that allows them authorizes the handshake like any request and then tunnels frames
//! both ways; a route that does not refuses the handshake with a reason.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::*;

/// A WebSocket server that echoes every text and binary message.
async fn websocket_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn websocket_config(echo: std::net::SocketAddr) -> String {
    config_with(
        &format!("\"{echo}\""),
        "",
        r#"
[[routes]]
id = "live"
path_prefix = "/live"
upstream = "main"
websocket = true

[[routes]]
id = "private-live"
path_prefix = "/private-live"
upstream = "main"
websocket = true
auth = "required"
"#,
    )
}

async fn open(
    gw: &TestGateway,
    path: &str,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    tokio_tungstenite::client_async(format!("ws://{}{path}", gw.proxy), stream).await
}

#[tokio::test]
async fn a_websocket_route_tunnels_frames_both_ways() {
    let gw = start(&websocket_config(websocket_echo().await)).await;
    let (mut ws, handshake) = open(&gw, "/live/feed").await.expect("the handshake goes through");
    assert_eq!(handshake.status(), 101);
    let request_id = handshake.headers()["x-request-id"].to_str().unwrap().to_owned();
    for text in ["hello", "through the gateway", &"x".repeat(70_000)] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().to_vec(),
        vec![0u8, 1, 2, 255]
    );
    ws.close(None).await.unwrap();
    drop(ws);

    // The decision records the upgrade.
    let d = gw.decision(&request_id).await;
    assert_eq!((d.status, d.route.as_deref()), (101, Some("live")));
    let upstream = d.trace.iter().find(|t| t.layer == "upstream").unwrap();
    assert!(
        upstream
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("upgraded to websocket"),
        "{d:?}"
    );
    // Closed tunnels are counted per route.
    poll_until("the closed tunnel is counted", || async {
        gw.metrics()
            .await
            .lines()
            .any(|l| l.starts_with("pinpoint_websockets_closed_total") && l.contains("route=\"live\""))
    })
    .await;
}

#[tokio::test]
async fn routes_without_websocket_refuse_the_handshake_and_auth_still_applies() {
    let gw = start(&websocket_config(websocket_echo().await)).await;
    for (path, status, reason) in [
        ("/orders/1", 400, "route.upgrade_not_allowed"),
        ("/private-live/feed", 401, "authn.credentials_missing"),
    ] {
        match open(&gw, path).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), status, "{path}");
                let body: serde_json::Value =
                    serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body["reason"], reason, "{path}: {body}");
            }
            other => panic!("{path}: expected a refusal, got {:?}", other.map(|(_, r)| r.status())),
        }
    }
    // A cross-site page cannot open one with the browser's cookies (no CORS applies to
    // WebSockets): the handshake's Origin is checked like a POST's.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/live/feed", gw.proxy).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    request.headers_mut().insert("cookie", "session=abc".parse().unwrap());
    let stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    match tokio_tungstenite::client_async(request, stream).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            assert!(body["reason"].as_str().unwrap().starts_with("csrf."), "{body}");
        }
        other => panic!(
            "a cross-site handshake went through: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    // Other upgrades are ignored: the request is served as plain HTTP.
    let gw = start(&echo_config()).await;
    let resp = gw
        .http
        .get(gw.url("/orders/1"))
        .header("upgrade", "h2c")
        .header("connection", "upgrade, http2-settings")
        .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echoed: serde_json::Value = resp.json().await.unwrap_or_default();
    assert!(echoed["headers"].get("upgrade").is_none(), "{echoed}");
}
