//! Pinpoint decides on exactly the request it forwards: every class of request that used
//! to walk around the proxy, sent over raw sockets (so no client library normalises it
//! first) in several spellings each, and generated paths checked against what the
//! upstream received.

use std::time::Duration;

use pinpoint_core::identity::{KeyKind, PrincipalKind};
use pinpoint_core::{Mark, Reason};
use pinpoint_store::NewKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::*;

/// Routes for every class: a public catch-all, an admin route whose writes a policy
/// refuses, a shop with a permission map, a case-folding legacy route, and routes that
/// accept path parameters, refuse override headers, and take small bodies only.
fn hardening_config() -> String {
    r#"
[server]
data_dir = "DATA_DIR"
reload_poll_ms = 50
max_head_bytes = 8192
max_header_bytes = 2048
max_headers = 40

[upstreams.echo]
targets = ["builtin:echo"]

[[routes]]
id = "public"
path_prefix = "/"
upstream = "echo"

[[routes]]
id = "admin"
path_prefix = "/admin"
upstream = "echo"

[[routes]]
id = "shop"
path_prefix = "/shop"
upstream = "echo"
permissions = { GET = "shop:read", POST = "shop:write" }

[[routes]]
id = "legacy"
path_prefix = "/legacy"
upstream = "echo"
case_insensitive = true

[[routes]]
id = "matrix"
path_prefix = "/matrix"
upstream = "echo"
allow_path_parameters = true

[[routes]]
id = "strict"
path_prefix = "/strict"
upstream = "echo"
override_headers = "refuse"

[[routes]]
id = "upload"
path_prefix = "/upload"
upstream = "echo"
max_body_bytes = 1024
body_timeout_ms = 400

[[routes]]
id = "secure"
host = "secure.example"
path_prefix = "/"
upstream = "echo"
permissions = { "*" = "sec:all" }

[[policy.rules]]
id = "admin-read-only"
routes = ["admin"]
methods = ["post", "Put", "PATCH", "DELETE"]

[[policy.rules]]
id = "legacy-secret"
routes = ["legacy"]
path_prefix = "/legacy/secret"
"#
    .to_owned()
}

/// A gateway with the hardening config, a key holding only `shop:read` and a key whose
/// principal holds no role at all.
/// Standard base64 with padding, as clients wrap a credential.
fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn hardened() -> (TestGateway, String, String) {
    let (dir, store, admin_key) = fresh_store().await;
    let org = store.create_org("acme").await.unwrap();
    let readers = store
        .create_role(&org.id, "shop-readers", &["shop:read".to_owned()])
        .await
        .unwrap();
    let reader = store
        .create_principal(&org.id, PrincipalKind::User, "reader", None)
        .await
        .unwrap();
    store.assign_role(&reader.id, &readers.id).await.unwrap();
    let nobody = store
        .create_principal(&org.id, PrincipalKind::User, "nobody", None)
        .await
        .unwrap();
    let key = |principal: String| {
        let store = store.clone();
        let org = org.id.clone();
        async move {
            store
                .create_key(NewKey {
                    name: "test".into(),
                    kind: KeyKind::Application,
                    org_id: org,
                    principal_id: Some(principal),
                    scopes: None,
                    expires_at_ms: None,
                })
                .await
                .unwrap()
                .key
        }
    };
    let reader_key = key(reader.id.clone()).await;
    let nobody_key = key(nobody.id.clone()).await;
    let gw = start_in(dir, store, admin_key, &hardening_config()).await;
    (gw, reader_key, nobody_key)
}

/// A response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The reason of a problem response (checked to be one), or `None` for a pass.
    fn reason(&self) -> Option<String> {
        self.header("x-pinpoint-reason").map(|r| {
            let body = self.json();
            assert_eq!(body["reason"], r);
            assert_eq!(body["status"], self.status);
            assert_eq!(body["request_id"], self.header("x-request-id").unwrap());
            r.to_owned()
        })
    }

    /// The path the echo upstream received.
    fn upstream_path(&self) -> String {
        assert_eq!(self.status, 200, "{}", self.body);
        self.json()["path"].as_str().unwrap().to_owned()
    }
}

/// Reads one response (with `Content-Length` framing) from `stream`.
async fn read_response(stream: &mut TcpStream) -> Raw {
    read_response_to(stream, false).await
}

/// Reads one response; for a HEAD request (`head_only`) its head alone.
async fn read_response_to(stream: &mut TcpStream, head_only: bool) -> Raw {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .filter(|_| !head_only)
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "body cut short");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
    Raw { status, headers, body }
}

/// Sends `head` (a request line and headers, without the blank line) and `body` on a
/// fresh connection and reads the response.
async fn send(gw: &TestGateway, head: &str, body: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream
        .write_all(format!("{head}\r\nHost: gw.test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    stream.write_all(body).await.unwrap();
    read_response_to(&mut stream, head.starts_with("HEAD ")).await
}

async fn request(gw: &TestGateway, method: &str, target: &str, headers: &[(&str, &str)]) -> Raw {
    let mut head = format!("{method} {target} HTTP/1.1");
    for (n, v) in headers {
        head.push_str(&format!("\r\n{n}: {v}"));
    }
    send(gw, &head, b"").await
}

#[tokio::test]
async fn every_spelling_of_a_path_is_decided_and_forwarded_as_its_canonical_form() {
    let (gw, _, _) = hardened().await;
    let spellings = [
        "/orders/../admin/users",
        "//admin/users",
        "/%61dmin/users",
        "/%61%64%6D%69%6E/users",
        "/./admin/users",
        "/admin//users",
        "/admin/./users",
        "/x/y/../../admin/users",
        "/admin/users/x/..",
    ];
    for raw in spellings {
        // Writes are refused by the admin route's policy, whatever the spelling...
        let resp = request(&gw, "POST", raw, &[("content-length", "0")]).await;
        assert_eq!(resp.status, 403, "{raw}: {}", resp.body);
        assert_eq!(resp.reason().as_deref(), Some("policy.explicit_deny"), "{raw}");
        let d = gw.decision(resp.header("x-request-id").unwrap()).await;
        assert_eq!(d.route.as_deref(), Some("admin"), "{raw}");
        assert!(
            d.path == "/admin/users" || d.path == "/admin/users/",
            "{raw}: {}",
            d.path
        );
        assert_eq!(d.raw_path.as_deref(), Some(raw));
        // ... and reads reach the upstream with the canonical path, never the raw one.
        let resp = request(&gw, "GET", raw, &[]).await;
        let got = resp.upstream_path();
        assert!(
            got == "/admin/users" || got == "/admin/users/",
            "{raw} forwarded as {got}"
        );
    }
    // Escapes that are not unreserved stay escaped, in upper-case hex; raw UTF-8 is escaped.
    let resp = request(&gw, "GET", "/files/a%3ab%20c", &[]).await;
    assert_eq!(resp.upstream_path(), "/files/a%3Ab%20c");
    let resp = request(&gw, "GET", "/files/caf%c3%a9", &[]).await;
    assert_eq!(resp.upstream_path(), "/files/caf%C3%A9");
}

#[tokio::test]
async fn ambiguous_paths_are_refused_before_routing_with_what_was_wrong() {
    let (gw, _, _) = hardened().await;
    let cases = [
        ("/admin%2fusers", "request.path_encoded_separator"),
        ("/admin%2Fusers", "request.path_encoded_separator"),
        ("/public%2F..%2Fadmin", "request.path_encoded_separator"),
        ("/admin%5cusers", "request.path_encoded_separator"),
        ("/admin%5Cusers", "request.path_encoded_separator"),
        ("/orders/%2e%2e/admin/users", "request.path_encoded_dot_segment"),
        ("/orders/.%2E/admin/users", "request.path_encoded_dot_segment"),
        ("/orders/%2E./admin/users", "request.path_encoded_dot_segment"),
        ("/orders/%2e/x", "request.path_encoded_dot_segment"),
        ("/a%00b", "request.path_control_character"),
        ("/a%0d%0aX-Injected:%201", "request.path_control_character"),
        ("/a%7f", "request.path_control_character"),
        ("/a%zz", "request.path_invalid_encoding"),
        ("/a%4", "request.path_invalid_encoding"),
        ("/a%", "request.path_invalid_encoding"),
        ("/..", "request.path_above_root"),
        ("/../admin/users", "request.path_above_root"),
        ("/a/../../admin", "request.path_above_root"),
        ("/admin;x/users", "request.path_parameters"),
        ("/admin;jsessionid=1", "request.path_parameters"),
        ("/admin%3Bx/users", "request.path_parameters"),
        ("/admin%3bx/users", "request.path_parameters"),
    ];
    for (raw, reason) in cases {
        for method in ["GET", "POST"] {
            let resp = request(&gw, method, raw, &[("content-length", "0")]).await;
            assert_eq!(resp.status, 400, "{method} {raw}: {}", resp.body);
            assert_eq!(resp.reason().as_deref(), Some(reason), "{method} {raw}");
            assert!(!resp.body.contains("\"path\""), "never forwarded: {}", resp.body);
        }
    }
    // The trace says what was sent; the caller is told what was wrong.
    let resp = request(&gw, "GET", "/admin%2fusers", &[]).await;
    let d = gw.decision(resp.header("x-request-id").unwrap()).await;
    let entry = d.deciding_layer().unwrap();
    assert_eq!(entry.layer, "request");
    assert!(entry.note.as_deref().unwrap().contains("/admin%2fusers"));
    assert_eq!(d.trace.len(), 1, "nothing after the edge ran");
    // Raw backslashes, where the HTTP parser lets them through, are refused too.
    let resp = request(&gw, "GET", "/admin\\users", &[]).await;
    assert_eq!(resp.status, 400);
    if resp.header("x-request-id").is_some() {
        assert_eq!(resp.reason().as_deref(), Some("request.path_backslash"));
    }
    // A route that accepts path parameters gets them, canonical.
    let resp = request(&gw, "GET", "/matrix/a;v=1/b%3bc", &[]).await;
    assert_eq!(resp.upstream_path(), "/matrix/a;v=1/b%3Bc");
}

#[tokio::test]
async fn methods_are_upper_case_and_permission_maps_fail_closed() {
    let (gw, reader_key, nobody_key) = hardened().await;
    let bearer = |k: &str| format!("Bearer {k}");
    for method in ["post", "Post", "pOST", "get", "delete"] {
        let resp = request(&gw, method, "/shop/cart", &[("authorization", &bearer(&reader_key))]).await;
        assert_eq!(resp.status, 400, "{method}");
        assert_eq!(
            resp.reason().as_deref(),
            Some("request.method_not_canonical"),
            "{method}"
        );
    }
    // A method the permission map does not name is refused, for every caller.
    for key in [&reader_key, &nobody_key] {
        for method in ["PUT", "PATCH", "DELETE", "OPTIONS"] {
            let resp = request(
                &gw,
                method,
                "/shop/cart",
                &[("authorization", &bearer(key)), ("content-length", "0")],
            )
            .await;
            assert_eq!(resp.status, 403, "{method}: {}", resp.body);
            assert_eq!(resp.reason().as_deref(), Some("authz.method_not_permitted"), "{method}");
            assert!(resp.json()["detail"].as_str().unwrap().contains(method));
        }
    }
    // HEAD follows GET: allowed with shop:read, refused without it.
    let resp = request(&gw, "HEAD", "/shop/items", &[("authorization", &bearer(&reader_key))]).await;
    assert_eq!(resp.status, 200);
    let resp = request(&gw, "HEAD", "/shop/items", &[("authorization", &bearer(&nobody_key))]).await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.header("x-pinpoint-reason"), Some("authz.permission_missing"));
    // POST still needs shop:write.
    let resp = request(
        &gw,
        "POST",
        "/shop/cart",
        &[("authorization", &bearer(&reader_key)), ("content-length", "0")],
    )
    .await;
    assert_eq!(resp.reason().as_deref(), Some("authz.permission_missing"));
    // WebDAV and other extension methods are allowed only where a route names them.
    for method in [
        "MKCOL",
        "PROPFIND",
        "PROPPATCH",
        "MOVE",
        "COPY",
        "LOCK",
        "TRACE",
        "PURGE",
    ] {
        for path in ["/admin/users", "/anything", "/shop/cart"] {
            let resp = request(&gw, method, path, &[("authorization", &bearer(&reader_key))]).await;
            assert_eq!(resp.status, 405, "{method} {path}");
            assert_eq!(resp.reason().as_deref(), Some("route.method_not_allowed"));
        }
    }
    // A policy rule's method list is matched whatever its case in the config.
    let resp = request(&gw, "PUT", "/admin/users", &[("content-length", "0")]).await;
    assert_eq!(resp.reason().as_deref(), Some("policy.explicit_deny"));
}

#[tokio::test]
async fn paths_that_match_a_route_only_ignoring_case_are_refused_unless_it_folds_case() {
    let (gw, _, _) = hardened().await;
    for raw in ["/ADMIN/users", "/Admin/users", "/aDmIn", "/%41dmin/users", "/SHOP/cart"] {
        for method in ["GET", "POST"] {
            let resp = request(&gw, method, raw, &[("content-length", "0")]).await;
            assert_eq!(resp.status, 400, "{method} {raw}: {}", resp.body);
            assert_eq!(resp.reason().as_deref(), Some("route.case_mismatch"), "{raw}");
            let d = gw.decision(resp.header("x-request-id").unwrap()).await;
            let entry = d.deciding_layer().unwrap();
            let resembled = entry.rule_id.as_deref().unwrap();
            assert!(
                d.path.to_ascii_lowercase().contains(resembled),
                "{raw} resembles {resembled}"
            );
        }
    }
    // A path only a less specific route matches exactly is not "ambiguous" when no
    // more specific route resembles it.
    assert_eq!(request(&gw, "GET", "/administrators", &[]).await.status, 200);
    // A case-folding route matches in any case, and so do its rules.
    let resp = request(&gw, "GET", "/LEGACY/Page", &[]).await;
    assert_eq!(resp.upstream_path(), "/LEGACY/Page");
    let d = gw.decision(resp.header("x-request-id").unwrap()).await;
    assert_eq!(d.route.as_deref(), Some("legacy"));
    for raw in ["/legacy/secret", "/LEGACY/SECRET/x", "/Legacy/Secret"] {
        let resp = request(&gw, "GET", raw, &[]).await;
        assert_eq!(resp.reason().as_deref(), Some("policy.explicit_deny"), "{raw}");
    }
}

#[tokio::test]
async fn headers_that_change_meaning_upstream_are_the_gateways() {
    let (gw, reader_key, _) = hardened().await;
    let overrides = [
        ("X-HTTP-Method-Override", "POST"),
        ("x-http-method", "DELETE"),
        ("X-Method-Override", "PUT"),
        ("X_HTTP_Method_Override", "POST"),
        ("X-Original-URL", "/admin/users"),
        ("X-Rewrite-URL", "/admin/users"),
        ("x_original_url", "/admin/users"),
    ];
    for (name, value) in overrides {
        let resp = request(&gw, "GET", "/admin/users", &[(name, value)]).await;
        let echoed = resp.json();
        assert_eq!(resp.status, 200);
        let sent: Vec<String> = echoed["headers"].as_object().unwrap().keys().cloned().collect();
        assert!(
            !sent
                .iter()
                .any(|h| h.replace('_', "-").eq_ignore_ascii_case(&name.replace('_', "-"))),
            "{name} reached the upstream: {sent:?}"
        );
        // A route that refuses them says so.
        let resp = request(&gw, "GET", "/strict/x", &[(name, value)]).await;
        assert_eq!(resp.status, 400, "{name}");
        assert_eq!(resp.reason().as_deref(), Some("request.override_header"));
    }
    // Headers Pinpoint sets can never come from the client, in any spelling.
    let forged = [
        ("X-Pinpoint-Principal", "forged"),
        ("x_pinpoint_principal", "forged"),
        ("X-Pinpoint-Org", "forged"),
        ("X_Pinpoint_Org", "forged"),
        ("X-Pinpoint-Anything", "forged"),
        ("X_Forwarded_For", "10.9.9.9"),
        ("X-Client-Request-Id", "forged"),
    ];
    for (name, value) in forged {
        let resp = request(&gw, "GET", "/anything", &[(name, value)]).await;
        assert!(
            !resp.body.contains("forged") && !resp.body.contains("10.9.9.9"),
            "{name}: {}",
            resp.body
        );
    }
    // Pinpoint's credentials never reach an upstream, even on a public route; other
    // credentials do (the upstream may have its own auth).
    let token_resp = gw
        .http
        .post(gw.api_url("/api/v2/tokens"))
        .bearer_auth(&gw.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(token_resp.status(), 201);
    let token: serde_json::Value = token_resp.json().await.unwrap();
    let token = token["data"]["attributes"]["access_token"].as_str().unwrap().to_owned();
    let ours = [
        ("Authorization", format!("Bearer {reader_key}")),
        ("Authorization", format!("bearer {token}")),
        ("X-API-Key", reader_key.clone()),
        ("DD-API-KEY", reader_key.clone()),
        ("DD-APPLICATION-KEY", reader_key.clone()),
        ("X_API_Key", "anything".to_owned()),
    ];
    for (name, value) in &ours {
        let resp = request(&gw, "GET", "/probe", &[(name, value)]).await;
        assert_eq!(resp.status, 200);
        let headers = &resp.json()["headers"];
        assert!(
            headers.get(name.to_ascii_lowercase()).is_none() && !resp.body.contains(value.as_str()),
            "{name} reached the upstream: {headers}"
        );
    }
    let resp = request(
        &gw,
        "GET",
        "/anything",
        &[("Authorization", "Bearer upstream-own-token")],
    )
    .await;
    assert_eq!(resp.json()["headers"]["authorization"], "Bearer upstream-own-token");
}

#[tokio::test]
async fn limits_are_refused_before_any_byte_goes_upstream_and_never_charge_it() {
    let (gw, _, _) = hardened().await;
    // One header over max_header_bytes, too many headers, a head over max_head_bytes.
    let big = "v".repeat(3000);
    let resp = request(&gw, "GET", "/anything", &[("x-big", &big)]).await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (431, Some("request.header_too_large"))
    );
    let many: Vec<(String, String)> = (0..45).map(|i| (format!("x-h{i}"), "1".to_owned())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let resp = request(&gw, "GET", "/anything", &many).await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (431, Some("request.too_many_headers"))
    );
    let mid = "m".repeat(1900);
    let several: Vec<(&str, &str)> = ["x-a", "x-b", "x-c", "x-d", "x-e"]
        .iter()
        .map(|n| (*n, mid.as_str()))
        .collect();
    let resp = request(&gw, "GET", "/anything", &several).await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (431, Some("request.headers_too_large"))
    );
    let long_target = format!("/{}", "p".repeat(9000));
    let resp = request(&gw, "GET", &long_target, &[]).await;
    assert_eq!(resp.status, 431, "an oversized request line");

    // A declared body over the route's limit: refused at once, unread, connection closed.
    let resp = send(&gw, "POST /upload/x HTTP/1.1\r\nContent-Length: 5000", b"").await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (413, Some("request.body_too_large"))
    );
    assert_eq!(resp.header("connection"), Some("close"));
    // A chunked body crossing it.
    let chunk = format!("{:x}\r\n{}\r\n", 800, "c".repeat(800));
    let body = format!("{chunk}{chunk}0\r\n\r\n");
    let resp = send(
        &gw,
        "POST /upload/x HTTP/1.1\r\nTransfer-Encoding: chunked",
        body.as_bytes(),
    )
    .await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (413, Some("request.body_too_large"))
    );
    // Within the limit, chunked: forwarded whole, with a length.
    let small = format!("{:x}\r\n{}\r\n0\r\n\r\n", 100, "s".repeat(100));
    let resp = send(
        &gw,
        "POST /upload/x HTTP/1.1\r\nTransfer-Encoding: chunked",
        small.as_bytes(),
    )
    .await;
    let echoed = resp.json();
    assert_eq!(echoed["body"], "s".repeat(100));
    assert_eq!(echoed["headers"]["content-length"], "100");

    // A slow body: 408 when the route's body time runs out.
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream
        .write_all(b"POST /upload/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let resp = read_response(&mut stream).await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (408, Some("request.body_timeout"))
    );
    // A malformed chunk size.
    let resp = send(
        &gw,
        "POST /upload/x HTTP/1.1\r\nTransfer-Encoding: chunked",
        b"zz\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (400, Some("request.body_incomplete"))
    );
    // A client that aborts its body.
    for _ in 0..5 {
        let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
        stream
            .write_all(b"POST /upload/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .unwrap();
        drop(stream);
    }
    // None of that touched the upstream's health: it still serves.
    for _ in 0..3 {
        let resp = send(&gw, "POST /upload/x HTTP/1.1\r\nContent-Length: 2", b"ok").await;
        assert_eq!(resp.json()["body"], "ok");
    }
    poll_until("aborted bodies recorded as the client's", || async {
        let metrics = gw.metrics().await;
        let count: u64 = metrics
            .lines()
            .filter(|l| l.contains("reason=\"request.body_incomplete\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        count >= 6
    })
    .await;
    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains("upstream.connect_failed") && !metrics.contains("upstream.bad_response"),
        "{metrics}"
    );
}

#[tokio::test]
async fn keep_alive_stays_honest_after_a_response_sent_before_the_body_was_read() {
    let (gw, _, _) = hardened().await;
    // A small body on a refused request is drained: the connection serves the next one.
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream
        .write_all(b"POST /shop/cart HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 12\r\n\r\n{\"sku\":\"A\"}\n")
        .await
        .unwrap();
    let first = read_response(&mut stream).await;
    assert_eq!(first.status, 401);
    assert_ne!(first.header("connection"), Some("close"));
    stream
        .write_all(b"GET /anything HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    // A large body is not waited for: the refusal says the connection closes.
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream
        .write_all(b"POST /shop/cart HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1000000\r\n\r\npartial")
        .await
        .unwrap();
    let resp = read_response(&mut stream).await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.header("connection"), Some("close"));
    // So does one for a client that waits for 100 Continue.
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream
        .write_all(b"POST /shop/cart HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut stream).await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.header("connection"), Some("close"));
}

#[tokio::test]
async fn request_ids_cannot_be_hijacked_and_both_ids_find_the_decision() {
    let (gw, _, _) = hardened().await;
    let first = request(
        &gw,
        "POST",
        "/admin/users",
        &[("x-request-id", "shared-id"), ("content-length", "0")],
    )
    .await;
    let second = request(&gw, "GET", "/admin/users", &[("x-request-id", "shared-id")]).await;
    let (id1, id2) = (
        first.header("x-request-id").unwrap(),
        second.header("x-request-id").unwrap(),
    );
    assert_ne!(id1, "shared-id");
    assert_ne!(id1, id2);
    assert_eq!(first.header("x-client-request-id"), Some("shared-id"));
    assert_eq!(first.json()["request_id"], id1);
    let d1 = gw.decision(id1).await;
    assert_eq!(
        d1.status, 403,
        "the second request did not replace the first's decision"
    );
    assert_eq!(gw.decision(id2).await.status, 200);
    // The API lists every decision a client id names, newest first.
    let listed = gw.api_json("/api/v2/decisions/shared-id", Some(&gw.admin_key)).await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id2, id1]);
    let one = gw
        .api_json(&format!("/api/v2/decisions/{id1}"), Some(&gw.admin_key))
        .await;
    assert_eq!(one["data"]["attributes"]["status"], 403);
}

/// What the HTTP parser refuses before any layer runs is refused like everything else: a
/// problem body with its reason and a request id whose decision is recorded; and counted.
#[tokio::test]
async fn refusals_made_by_the_http_parser_are_problems_with_decisions_and_counted_by_kind() {
    let (gw, _, _) = hardened().await;
    let huge = format!("GET /x HTTP/1.1\r\nX-Huge: {}\r\n\r\n", "h".repeat(64 * 1024));
    for (listener, head, status, reason) in [
        (
            gw.proxy,
            "GET /x HTTP/1.1\r\nBad Header\r\n\r\n".to_owned(),
            400,
            "request.malformed",
        ),
        (
            gw.proxy,
            "GET /x HTTP/1.1\r\nHost: a\r\nX: \u{1}\r\n\r\n".to_owned(),
            400,
            "request.malformed",
        ),
        (
            gw.proxy,
            "GET /x HTTP/7.1\r\nHost: a\r\n\r\n".to_owned(),
            400,
            "request.malformed",
        ),
        (gw.proxy, huge, 431, "request.headers_too_large"),
        (
            gw.api,
            "GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n".to_owned(),
            400,
            "request.malformed",
        ),
    ] {
        let mut stream = TcpStream::connect(listener).await.unwrap();
        let _ = stream.write_all(head.as_bytes()).await;
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let start = reply.rfind(&format!("HTTP/1.1 {status} "));
        assert!(start.is_some(), "{head:.60}: {reply:.300}");
        let last = &reply[start.unwrap_or_default()..];
        assert!(last.contains("content-type: application/problem+json"), "{last}");
        assert!(last.contains(&format!("x-pinpoint-reason: {reason}")), "{last}");
        let request_id = last
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap()
            .trim()
            .to_owned();
        let body: serde_json::Value = serde_json::from_str(&last[last.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        assert_eq!(
            (body["reason"].as_str(), body["request_id"].as_str()),
            (Some(reason), Some(request_id.as_str()))
        );
        let d = gw.decision(&request_id).await;
        assert_eq!((d.status, d.reason.map(|r| r.code())), (status, Some(reason)));
    }
    poll_until("parser refusals counted", || async {
        let m = gw.metrics().await;
        m.contains("pinpoint_connection_errors_total{kind=\"malformed\"}")
            && m.contains("pinpoint_connection_errors_total{kind=\"head_too_large\"}")
    })
    .await;
}

/// Sends raw bytes on a fresh connection and reads the response.
async fn send_raw(gw: &TestGateway, bytes: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_response(&mut stream).await
}

#[tokio::test]
async fn what_the_attacks_on_the_first_version_found_is_refused_or_removed() {
    let (gw, reader_key, _) = hardened().await;
    // Dot-segments with parameters, on a route that accepts parameters too.
    for raw in [
        "/matrix/..;/admin/users",
        "/matrix/%2e%2e;/admin",
        "/matrix/.;x/admin",
        "/matrix/..%3b/admin",
    ] {
        let resp = request(&gw, "POST", raw, &[("content-length", "0")]).await;
        assert_eq!(
            (resp.status, resp.reason().as_deref()),
            (400, Some("request.path_parameters")),
            "{raw}"
        );
    }
    // Characters that fold or normalise to ASCII.
    for raw in [
        "/%C5%BFhop/x",
        "/%EF%BD%81dmin/users",
        "/admin%EF%BC%8Fusers",
        "/legacy/pr%C4%B1vate",
    ] {
        let resp = request(&gw, "GET", raw, &[]).await;
        assert_eq!(
            (resp.status, resp.reason().as_deref()),
            (400, Some("request.path_confusable")),
            "{raw}"
        );
    }
    // A path that grows past what can be forwarded is the client's 414, not a 502.
    let grows = format!("GET /{} HTTP/1.1\r\nHost: gw.test\r\n\r\n", "\u{e9}".repeat(3000));
    let resp = send_raw(&gw, grows.as_bytes()).await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (414, Some("request.target_too_long"))
    );
    // Host: one spelling, required by HTTP/1.1, never dropped by `Connection`.
    for host in ["gw.test.", "gw.test.:80", "gw.test:abc"] {
        let resp = send_raw(&gw, format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await;
        assert_eq!(
            (resp.status, resp.reason().as_deref()),
            (400, Some("request.host_invalid")),
            "{host}"
        );
    }
    let resp = send_raw(&gw, b"GET http://zzz/x HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (400, Some("request.host_invalid"))
    );
    let resp = send_raw(&gw, b"GET /x HTTP/1.1\r\nHost: gw.test\r\nConnection: host\r\n\r\n").await;
    assert_eq!(resp.json()["headers"]["host"], "gw.test");
    // Transfer codings other than chunked.
    let resp = send(
        &gw,
        "POST /upload/x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked",
        b"0\r\n\r\n",
    )
    .await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (501, Some("request.transfer_encoding"))
    );
    // More override and forwarding headers; a peer that is not a trusted proxy states nothing.
    let sent = [
        ("X-Forwarded-Prefix", "/admin"),
        ("X-Forwarded-Path", "/admin"),
        ("X-Forwarded-Method", "DELETE"),
        ("X-Envoy-Original-Path", "/admin"),
        ("Forwarded", "for=10.9.9.9;host=admin.internal"),
        ("X-Real-IP", "10.9.9.9"),
        ("True-Client-IP", "10.9.9.9"),
        ("X-Forwarded-Host", "admin.internal"),
    ];
    for (name, value) in sent {
        let resp = request(&gw, "GET", "/probe", &[(name, value)]).await;
        let headers = &resp.json()["headers"];
        assert!(
            headers.get(name.to_ascii_lowercase()).is_none(),
            "{name} reached the upstream: {headers}"
        );
    }
    // Credentials in other wrappings, on a public route.
    let wrapped = [
        ("Authorization", format!("Bearer\t{reader_key}")),
        ("Authorization", format!("Bearer \"{reader_key}\"")),
        ("Authorization", format!("x, Bearer {reader_key}")),
        ("X-API-Key", format!("key={reader_key}")),
        ("DD-API-KEY", format!("\"{reader_key}\"")),
    ];
    for (name, value) in &wrapped {
        let resp = request(&gw, "GET", "/probe", &[(name, value)]).await;
        assert!(
            !resp.body.contains(&reader_key[..20]),
            "{name}: {value} reached the upstream"
        );
    }
}

#[tokio::test]
async fn what_the_second_attack_found_is_refused_or_removed() {
    let (gw, reader_key, _) = hardened().await;
    // A segment that is only parameters, resolved away by `..` here but `//` to Tomcat.
    for raw in ["/matrix/;jsessionid=1/../admin", "/matrix/;/../admin", "/x/;a"] {
        let resp = request(&gw, "POST", raw, &[("content-length", "0")]).await;
        assert_eq!(
            (resp.status, resp.reason().as_deref()),
            (400, Some("request.path_parameters")),
            "{raw}"
        );
    }
    // More characters that fold: ß, ẞ, a combining dot, default-ignorables; Windows'
    // trailing dots and spaces.
    for raw in [
        "/legacy/pa%C3%9F",
        "/legacy/PA%E1%BA%9E",
        "/legacy/I%CC%87",
        "/ad%C2%ADmin",
        "/legacy/admin./x",
        "/legacy/x%20/y",
    ] {
        let resp = request(&gw, "GET", raw, &[]).await;
        assert_eq!(
            (resp.status, resp.reason().as_deref()),
            (400, Some("request.path_confusable")),
            "{raw}"
        );
    }
    // `_method` in the query or the body is an override too.
    let resp = request(&gw, "GET", "/admin/users?_method=DELETE", &[]).await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (400, Some("request.override_header"))
    );
    let resp = send(
        &gw,
        "POST /orders/1 HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 14",
        b"_method=DELETE",
    )
    .await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (400, Some("request.override_header"))
    );
    // A host's routes come before routes for any host, whatever their prefixes.
    let resp = send_raw(&gw, b"GET /admin/users HTTP/1.1\r\nHost: secure.example\r\n\r\n").await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (401, Some("authn.credentials_missing"))
    );
    // Other spellings of an address are refused; IPv6 is matched in its one form.
    for host in ["127.1", "2130706433", "0x7f.0.0.1", "127.000.000.001"] {
        let resp = send_raw(&gw, format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await;
        assert_eq!(
            (resp.status, resp.reason().as_deref()),
            (400, Some("request.host_invalid")),
            "{host}"
        );
    }
    let resp = send_raw(&gw, b"GET /x HTTP/1.1\r\nHost: [0:0:0:0:0:0:0:1]\r\n\r\n").await;
    let d = gw.decision(resp.header("x-request-id").unwrap()).await;
    assert_eq!(d.host.as_deref(), Some("::1"));
    // HTTP/1.0 with an absolute target and no Host: refused, not routed on an authority the
    // upstream never sees.
    let resp = send_raw(&gw, b"GET http://secure.example/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (400, Some("request.host_invalid"))
    );
    // Headers that may appear once.
    let resp = request(
        &gw,
        "GET",
        "/shop/items",
        &[
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("authorization", &format!("Bearer {reader_key}")),
        ],
    )
    .await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (400, Some("request.header_repeated"))
    );
    // A Pinpoint credential anywhere: any header, cookies, odd JWT wrappings; in the URL, refused.
    for (name, value) in [
        ("Cookie", format!("session=1; api={reader_key}")),
        ("X-Auth-Token", reader_key.clone()),
        ("Api-Key", reader_key.replacen('_', "-", 2)),
        ("X-Token", reader_key.replace('_', "%5F")),
        ("X-A", reader_key.replace('_', "\\u005f")),
        ("X-A", reader_key[3..].to_owned()),
        ("X-A", pinpoint_core::hex::lower(reader_key.as_bytes())),
        ("X-Request-Id", reader_key[3..].to_owned()),
        // Wrappings inside wrappings, base64 with a character glued to its front, hex
        // with separators, a header named by the key in hex.
        ("X-A", b64(&b64(&reader_key))),
        ("X-A", pinpoint_core::hex::lower(b64(&reader_key).as_bytes())),
        ("X-A", format!("a{}", b64(&reader_key))),
        (
            "X-Request-Id",
            format!("a{}", b64(&reader_key).replace(['+', '/', '='], "-")),
        ),
        (
            "X-A",
            reader_key
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
        ),
        ("X-A", reader_key.bytes().map(|b| format!("0x{b:02x}")).collect()),
        // Base64 wrapped in lines of 20, quoted-printable, HTML references, decimal bytes.
        (
            "X-A",
            b64(&reader_key)
                .as_bytes()
                .chunks(20)
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("X-A", reader_key.replace('_', "=5F")),
        ("X-A", reader_key.replace('_', "&#95;")),
        (
            "X-A",
            reader_key.bytes().map(|b| b.to_string()).collect::<Vec<_>>().join(","),
        ),
    ] {
        let resp = request(&gw, "GET", "/probe", &[(name, &value)]).await;
        assert!(
            !resp.body.contains(&reader_key[3..19]) && !resp.body.contains(value.as_str()),
            "{name}: {value} reached the upstream"
        );
    }
    let named = format!("x-{}", pinpoint_core::hex::lower(reader_key.as_bytes()));
    let resp = request(&gw, "GET", "/probe", &[(&named, "1")]).await;
    assert!(!resp.body.contains(&named[2..40]), "{named} reached the upstream");
    // A tunnel is not a request Pinpoint can decide on; an encoded `?` or `#` would end the
    // path early for a server that decodes before splitting.
    let resp = send_raw(&gw, b"CONNECT /probe HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (501, Some("request.connect_not_supported"))
    );
    for path in ["/probe/secret%3F.json", "/probe/secret%23"] {
        let resp = request(&gw, "GET", path, &[]).await;
        assert_eq!(
            (resp.status, resp.reason().as_deref()),
            (400, Some("request.path_encoded_delimiter")),
            "{path}"
        );
    }
    let resp = request(&gw, "GET", &format!("/probe?api_key={reader_key}"), &[]).await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (400, Some("request.credential_in_url"))
    );
    // A key as the method: refused as part of the request line, never written down.
    let resp = send_raw(
        &gw,
        format!("{reader_key} /probe HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (400, Some("request.credential_in_url"))
    );
    let d = gw.decision(resp.header("x-request-id").unwrap()).await;
    assert!(!d.method.contains(&reader_key[3..19]), "{}", d.method);
    // Whatever a filter quotes of the request (here the CSRF filter, the Origin it
    // compared) is written down without the credential in it.
    let origin = format!("https://{}.example", reader_key.replace('_', "-"));
    let resp = request(
        &gw,
        "POST",
        "/orders/1",
        &[("cookie", "session=1"), ("origin", &origin), ("content-length", "0")],
    )
    .await;
    assert_eq!(resp.status, 403, "{}", resp.body);
    let d = gw.decision(resp.header("x-request-id").unwrap()).await;
    let recorded = serde_json::to_string(&d.trace).unwrap();
    assert!(recorded.contains("csrf"), "{recorded}");
    assert!(!recorded.contains(&reader_key[3..19]), "{recorded}");
    // Identity and scheme assertions never pass.
    for (name, value) in [
        ("X-Remote-User", "admin"),
        ("X-Forwarded-User", "admin"),
        ("X-Script-Name", "/admin"),
        ("X-Forwarded-Protocol", "https"),
    ] {
        let resp = request(&gw, "GET", "/probe", &[(name, value)]).await;
        assert!(
            resp.json()["headers"].get(name.to_ascii_lowercase()).is_none(),
            "{name} reached the upstream"
        );
    }
}

#[tokio::test]
async fn legitimate_requests_pass_and_only_what_is_pinpoints_is_removed() {
    let (gw, reader_key, _) = hardened().await;
    // Ordinary paths: a trailing dot, German and Turkish words, on a route that does not fold case.
    for path in [
        "/wiki/Washington,_D.C.",
        "/de/stra%C3%9Fe",
        "/tr/%C4%B0stanbul",
        "/v1/projects/x:batchGet",
        "/~user/a+b@c",
    ] {
        let resp = request(&gw, "GET", path, &[]).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.body);
    }
    // A JSON body that mentions `_method` as data.
    let body = br#"{"x":"_method","nested":{"_method":"PUT"}}"#;
    let resp = send(
        &gw,
        &format!(
            "POST /orders/1 HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}",
            body.len()
        ),
        body,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    // Cookies: ones merely shaped like a key stay; a real key is cut out, the rest kept.
    let resp = request(
        &gw,
        "GET",
        "/probe",
        &[("cookie", "session=abc; last_app_5f3a9c1e2b4d6e8f=seen")],
    )
    .await;
    assert_eq!(
        resp.json()["headers"]["cookie"],
        "session=abc; last_app_5f3a9c1e2b4d6e8f=seen"
    );
    let resp = request(
        &gw,
        "GET",
        "/probe",
        &[("cookie", &format!("session=abc; api={reader_key}"))],
    )
    .await;
    assert_eq!(resp.json()["headers"]["cookie"], "session=abc");
    // Long ordinary lists (ids joined by an encoded comma) pass whole, in the query and in
    // a cookie: the credential search decodes them without refusing what it cannot afford.
    let ids: Vec<String> = (0..40u128)
        .map(|i| {
            let h = format!(
                "{:032x}",
                (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            );
            format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
        })
        .collect();
    let list = ids.join("%2C");
    let resp = request(&gw, "GET", &format!("/probe?ids={list}"), &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let cookie = format!("session=abc; recently_viewed={list}");
    let resp = request(&gw, "GET", "/probe", &[("cookie", &cookie)]).await;
    assert_eq!(resp.json()["headers"]["cookie"], cookie.as_str());
    // A key wrapped in base64 in the query is refused like a plain one.
    use base64::Engine;
    let wrapped = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&reader_key);
    let resp = request(&gw, "GET", &format!("/probe?k={wrapped}"), &[]).await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (400, Some("request.credential_in_url"))
    );
    // Identity a TLS or auth proxy would assert never comes from a client.
    for name in [
        "X-Forwarded-Client-Cert",
        "X-SSL-Client-S-DN",
        "X-Consumer-Username",
        "X-Goog-Authenticated-User-Email",
        "X-MS-Client-Principal-Name",
    ] {
        let resp = request(&gw, "GET", "/probe", &[(name, "admin")]).await;
        assert!(
            resp.json()["headers"].get(name.to_ascii_lowercase()).is_none(),
            "{name} reached the upstream"
        );
    }
}

#[tokio::test]
async fn a_trusted_proxys_whole_chain_is_decided_on_and_forwarded() {
    let extra = "\n[net]\ntrusted_proxies = [\"127.0.0.1/32\"]\n";
    let gw = start(&config_with("\"builtin:echo\"", "", extra)).await;
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream
        .write_all(b"GET /orders/1 HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 10.1.1.1\r\nForwarded: for=9.9.9.9\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut stream).await;
    let echoed = resp.json();
    assert_eq!(echoed["headers"]["x-forwarded-for"], "6.6.6.6, 10.1.1.1, 127.0.0.1");
    assert!(echoed["headers"].get("forwarded").is_none());
    let d = gw.decision(resp.header("x-request-id").unwrap()).await;
    assert!(d.client_addr.starts_with("10.1.1.1"), "{}", d.client_addr);
}

#[tokio::test]
async fn an_upstream_cannot_speak_for_pinpoint() {
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\nX-Pinpoint-Reason: policy.explicit_deny\r\nX-Client-Request-Id: forged\r\nContent-Length: 2\r\n\r\nok",
        Duration::ZERO,
    )
    .await;
    let gw = start(&config_with(&format!("\"{up}\""), "", "")).await;
    let resp = gw.http.get(gw.url("/orders")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-pinpoint-reason").is_none());
    assert!(resp.headers().get("x-client-request-id").is_none());
}

/// A small deterministic generator (xorshift), so a failure names its seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
}

/// What a permissive upstream makes of a path: every escape decoded, dot-segments
/// resolved, repeated slashes merged, case kept.
fn as_an_upstream_reads_it(path: &str) -> String {
    let decoded = pinpoint_core::canonical::percent_decode(path);
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

#[tokio::test]
async fn generated_paths_reach_the_upstream_only_as_the_route_and_rules_that_allowed_them() {
    let (gw, _, _) = hardened().await;
    let pieces = [
        "/", "//", "/.", "/..", "/./", "/../", "admin", "ADMIN", "Admin", "%61dmin", "%41DMIN", "users", "secret",
        "legacy", "%2e", "%2E%2e", "%2f", "%5c", "\\", ";x", "%3b", "a", "%20", "%00", "%", "%zz", "~", "%7e", "é",
        "shop",
    ];
    let mut gen = Gen(0x9e37_79b9_7f4a_7c15);
    let mut forwarded = 0;
    for case in 0..300 {
        let mut raw = String::from("/");
        for _ in 0..(1 + gen.next() % 6) {
            raw.push_str(gen.pick(&pieces));
        }
        // Raw bytes the request line cannot carry are left to the canonicaliser's unit tests.
        if raw.contains(' ') {
            continue;
        }
        let target: String = raw
            .chars()
            .map(|c| if c == 'é' { "%C3%A9".to_owned() } else { c.to_string() })
            .collect();
        let resp = request(&gw, "GET", &target, &[]).await;
        let Some(id) = resp.header("x-request-id").map(str::to_owned) else {
            // The HTTP parser itself refused the request line.
            assert_eq!(resp.status, 400, "case {case}: {target}");
            continue;
        };
        let d = gw.decision(&id).await;
        if resp.status != 200 {
            assert!(
                resp.reason().is_some(),
                "case {case}: {target} refused without a reason"
            );
            continue;
        }
        forwarded += 1;
        let got = resp.upstream_path();
        assert_eq!(
            got, d.path,
            "case {case}: {target}: the upstream got what was decided on"
        );
        // The upstream's reading of what it got is what the route layer matched on.
        let read = as_an_upstream_reads_it(&got);
        let expected_route = if read == "/admin" || read.starts_with("/admin/") {
            "admin"
        } else if read.eq_ignore_ascii_case("/legacy") || read.to_ascii_lowercase().starts_with("/legacy/") {
            "legacy"
        } else if read == "/shop" || read.starts_with("/shop/") {
            "shop"
        } else {
            "public"
        };
        assert_eq!(
            d.route.as_deref(),
            Some(expected_route),
            "case {case}: {target} -> {got} read as {read}"
        );
        assert!(
            !read.to_ascii_lowercase().starts_with("/legacy/secret"),
            "case {case}: {target} reached the legacy secret"
        );
        // Even an upstream that folds case reaches admin only through the admin route.
        let folded = read.to_ascii_lowercase();
        if folded == "/admin" || folded.starts_with("/admin/") {
            assert_eq!(
                d.route.as_deref(),
                Some("admin"),
                "case {case}: {target} reached admin through another route"
            );
        }
        assert_eq!(d.trace[0].mark, Mark::Pass);
        assert_ne!(d.reason, Some(Reason::RouteNotFound));
    }
    assert!(
        forwarded > 30,
        "the generator exercised the forwarding path: {forwarded}"
    );
}

#[tokio::test]
async fn what_the_third_attack_found_is_refused() {
    let (gw, reader_key, _) = hardened().await;
    // No Host, whatever the version: the upstream request always carries one.
    let resp = send_raw(&gw, b"GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (400, Some("request.host_invalid"))
    );
    // Brackets hold an IPv6 address, followed by nothing but a port.
    for host in [
        "[public.example]",
        "[::1]@secure.example",
        "[::1]/../admin",
        "[::1].secure.example",
        "[::1]]",
        "[::1]x:80",
    ] {
        let resp = send_raw(&gw, format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await;
        assert_eq!(
            (resp.status, resp.reason().as_deref()),
            (400, Some("request.host_invalid")),
            "{host}"
        );
    }
    let resp = send_raw(&gw, b"GET /x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    // A credential in the path is refused like one in the query, and never written down.
    for path in [
        format!("/orders/{reader_key}"),
        format!("/orders/x/{}", reader_key.replace('_', "%5F")),
    ] {
        let resp = request(&gw, "GET", &path, &[]).await;
        assert_eq!(
            (resp.status, resp.reason().as_deref()),
            (400, Some("request.credential_in_url")),
            "{path}"
        );
        let d = gw.decision(resp.header("x-request-id").unwrap()).await;
        assert!(!d.path.contains(&reader_key[3..19]), "{}", d.path);
        assert!(d.raw_path.is_none_or(|p| !p.contains(&reader_key[3..19])));
    }
    // Wrapped in base64 from a segment's start, encoded twice, in a path refused for
    // something else too, or in the Host: refused first, and never written down.
    use base64::Engine;
    let wrapped = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&reader_key);
    let key_id = &reader_key[3..19];
    for (target, host) in [
        (format!("/pub/{wrapped}"), "gw.example".to_owned()),
        (format!("/pub/x/{wrapped}"), "gw.example".to_owned()),
        (
            format!("/x?k={}", reader_key.replace('_', "%255F")),
            "gw.example".to_owned(),
        ),
        (format!("/pub/%2e%2e/{reader_key}"), "gw.example".to_owned()),
        (format!("/pub/%2F/{reader_key}"), "gw.example".to_owned()),
        ("/x".to_owned(), format!("pp-{key_id}.example")),
    ] {
        let resp = send_raw(&gw, format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await;
        assert_eq!(
            (resp.status, resp.reason().as_deref()),
            (400, Some("request.credential_in_url")),
            "{target} {host}"
        );
        let d = gw.decision(resp.header("x-request-id").unwrap()).await;
        let recorded = format!("{} {:?} {:?}", d.path, d.raw_path, d.host);
        assert!(
            !recorded.contains(key_id) && !recorded.contains(&wrapped[..20]),
            "{recorded}"
        );
    }
}

/// A preflight is routed by the method it asks about only when no route takes `OPTIONS`,
/// and then it is answered or refused, never forwarded.
#[tokio::test]
async fn a_preflight_routed_by_the_method_it_asks_about_is_never_forwarded() {
    let config = |cors: &str| {
        format!(
            "[server]\ndata_dir = \"DATA_DIR\"\n[upstreams.echo]\ntargets = [\"builtin:echo\"]\n\
             [[routes]]\nid = \"catalog-read\"\npath_prefix = \"/catalog\"\nmethods = [\"GET\"]\nupstream = \"echo\"\n\
             [[routes]]\nid = \"catalog-write\"\npath_prefix = \"/catalog\"\nmethods = [\"POST\", \"OPTIONS\"]\nupstream = \"echo\"\nauth = \"required\"\n\
             [[routes]]\nid = \"pub\"\npath_prefix = \"/pub\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"echo\"\n{cors}"
        )
    };
    let preflight = |path: &str, origin: bool| {
        format!(
            "OPTIONS {path} HTTP/1.1\r\nHost: gw.example\r\nAccess-Control-Request-Method: GET\r\n{}\r\n",
            if origin { "Origin: https://app.example\r\n" } else { "" }
        )
        .replace(
            "Method: GET\r\n",
            if path.starts_with("/pub") {
                "Method: POST\r\n"
            } else {
                "Method: GET\r\n"
            },
        )
    };
    let gw = start(&config("")).await;
    // `OPTIONS` has a route of its own: it is decided there, as OPTIONS.
    for origin in [false, true] {
        let resp = send_raw(&gw, preflight("/catalog/items", origin).as_bytes()).await;
        assert_eq!(
            (resp.status, resp.reason().as_deref()),
            (401, Some("authn.credentials_missing")),
            "origin {origin}"
        );
    }
    // No route takes OPTIONS: without CORS nothing answers it, so it is refused as OPTIONS.
    for origin in [false, true] {
        let resp = send_raw(&gw, preflight("/pub/x", origin).as_bytes()).await;
        assert_eq!(
            (resp.status, resp.reason().as_deref()),
            (405, Some("route.method_not_allowed")),
            "origin {origin}: {}",
            resp.body
        );
        let d = gw.decision(resp.header("x-request-id").unwrap()).await;
        assert!(d.upstream_target.is_none(), "forwarded to {:?}", d.upstream_target);
    }
    gw.stop().await;
    // CORS in report mode does not answer either: still refused, not forwarded.
    let gw = start(&config(
        "[cors]\nmode = \"report\"\nallowed_origins = [\"https://other.example\"]\n",
    ))
    .await;
    let resp = send_raw(&gw, preflight("/pub/x", true).as_bytes()).await;
    assert_eq!(
        (resp.status, resp.reason().as_deref()),
        (405, Some("route.method_not_allowed"))
    );
    gw.stop().await;
    // An allowed origin's preflight is answered, as browsers need.
    let gw = start(&config("[cors]\nallowed_origins = [\"https://app.example\"]\n")).await;
    let resp = send_raw(&gw, preflight("/pub/x", true).as_bytes()).await;
    assert_eq!(resp.status, 204, "{}", resp.body);
    gw.stop().await;
}
