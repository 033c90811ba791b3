//! The proxy listener: proxied requests, every proxy reason code, shadow mode, balancing
//! and passive health, problem formats, metrics.

use std::time::Duration;

use pinpoint_core::{Mark, Mode, Reason};

use crate::*;

#[tokio::test]
async fn allowed_request_is_proxied_with_request_id_and_trace() {
    let gw = start(&echo_config()).await;
    let resp = gw
        .http
        .post(gw.url("/orders/42?expand=items"))
        .header("x-request-id", "client-id-1")
        .header("content-type", "application/json")
        .body(r#"{"sku":"a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Pinpoint's own id keys the decision; the client's is kept and echoed beside it.
    let own_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(own_id, "client-id-1");
    assert_eq!(resp.headers()["x-client-request-id"], "client-id-1");
    let echoed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/orders/42");
    assert_eq!(echoed["query"], "expand=items");
    assert_eq!(echoed["body"], r#"{"sku":"a"}"#);
    assert_eq!(echoed["headers"]["x-request-id"], own_id.as_str());
    assert_eq!(echoed["headers"]["x-client-request-id"], "client-id-1");
    assert_eq!(echoed["headers"]["x-forwarded-for"], "127.0.0.1");

    let d = gw.decision("client-id-1").await;
    assert_eq!(d, gw.decision(&own_id).await, "found by either id");
    assert_eq!(d.client_request_id.as_deref(), Some("client-id-1"));
    assert_eq!(d.status, 200);
    assert_eq!(d.reason, None);
    assert_eq!(d.route.as_deref(), Some("orders"));
    assert_eq!(d.path, "/orders/42", "the query string is never stored");
    let marks: Vec<_> = d.trace.iter().map(|t| (&*t.layer, t.mark)).collect();
    assert_eq!(
        marks,
        [
            ("route", Mark::Pass),
            ("cors", Mark::Skip),
            ("net", Mark::Skip),
            ("authn", Mark::Skip),
            ("authz", Mark::Skip),
            ("csrf", Mark::Skip),
            ("waf", Mark::Skip),
            ("policy", Mark::Skip),
            ("rate", Mark::Skip),
            ("upstream", Mark::Pass)
        ]
    );
    assert!(
        !serde_json::to_string(&d).unwrap().contains("sku"),
        "bodies are never stored"
    );

    // A malformed client id is replaced by a generated one.
    let resp = gw
        .http
        .get(gw.url("/orders"))
        .header("x-request-id", "bad id!")
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));

    // One shaped like a key (whether or not the key exists) is not kept, echoed or
    // passed upstream: ids are written down in clear.
    let key_shaped = "pp_0123456789abcdef_s3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3t";
    let resp = gw
        .http
        .get(gw.url("/orders"))
        .header("x-request-id", key_shaped)
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("x-client-request-id").is_none());
    let own_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let echoed: serde_json::Value = resp.json().await.unwrap();
    assert!(echoed["headers"].get("x-client-request-id").is_none(), "{echoed}");
    assert_eq!(gw.decision(&own_id).await.client_request_id, None);
}

#[tokio::test]
async fn missing_route_is_404_route_not_found() {
    let gw = start(&echo_config()).await;
    let resp = gw.http.get(gw.url("/ordersx")).send().await.unwrap();
    let body = problem(resp, 404, "route.not_found").await;
    let d = gw.decision(body["request_id"].as_str().unwrap()).await;
    assert_eq!(d.status, 404);
    assert_eq!(d.reason, Some(Reason::RouteNotFound));
    assert_eq!(d.deciding_layer().unwrap().layer, "route");
    assert_eq!(d.trace[1].mark, Mark::Skip, "later layers are not reached");
}

#[tokio::test]
async fn wrong_method_is_405_with_allow_header() {
    let gw = start(&echo_config()).await;
    let resp = gw.http.delete(gw.url("/orders/1")).send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "GET, POST, HEAD");
    let body = problem(resp, 405, "route.method_not_allowed").await;
    let d = gw.decision(body["request_id"].as_str().unwrap()).await;
    assert_eq!(d.reason, Some(Reason::RouteMethodNotAllowed));
    assert_eq!(d.deciding_layer().unwrap().rule_id.as_deref(), Some("orders"));
}

#[tokio::test]
async fn policy_deny_is_403_and_safe_for_the_caller() {
    let gw = start(&echo_config()).await;
    let resp = gw.http.post(gw.url("/admin/users")).send().await.unwrap();
    let body = problem(resp, 403, "policy.explicit_deny").await;
    let text = body.to_string();
    assert!(
        !text.contains("admin-read-only"),
        "rule ids are for the operator: {text}"
    );
    assert!(!text.contains("operator-only text"), "{text}");
    assert!(!text.contains(&gw.admin_key), "{text}");
    let d = gw.decision(body["request_id"].as_str().unwrap()).await;
    let deciding = d.deciding_layer().unwrap();
    assert_eq!(deciding.layer, "policy");
    assert_eq!(deciding.rule_id.as_deref(), Some("admin-read-only"));
    assert_eq!(deciding.note.as_deref(), Some("operator-only text"));
    assert_eq!(deciding.mode, Mode::Enforce);
    assert!(
        d.trace.iter().all(|t| t.layer != "upstream"),
        "no upstream entry on a denial"
    );
    assert_eq!(
        d.trace.last().unwrap().mark,
        Mark::Skip,
        "layers after the deny are not reached"
    );

    // GET on the same route passes the policy.
    assert_eq!(gw.http.get(gw.url("/admin/users")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn report_mode_records_would_deny_and_lets_the_request_pass() {
    let gw = start(&config_with("\"builtin:echo\"", "", "[policy]\nmode = \"report\"\n")).await;
    let resp = gw
        .http
        .post(gw.url("/admin/users"))
        .header("x-request-id", "shadow-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let d = gw.decision("shadow-1").await;
    assert_eq!(d.status, 200);
    assert_eq!(d.reason, None);
    let policy = d.trace.iter().find(|t| t.layer == "policy").unwrap();
    assert_eq!(policy.mark, Mark::WouldDeny);
    assert_eq!(policy.mode, Mode::Report);
    assert_eq!(policy.reason, Some(Reason::PolicyExplicitDeny));
    assert_eq!(d.trace.last().unwrap().mark, Mark::Pass);
    let metrics = gw.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("pinpoint_denials_total{")
            && l.contains("reason=\"policy.explicit_deny\"")
            && l.contains("mode=\"report\"")),
        "{metrics}"
    );
}

#[tokio::test]
async fn dead_target_is_502_then_ejected_503() {
    let dead = dead_addr().await;
    let gw = start(&config_with(&format!("\"{dead}\""), "fail_timeout_ms = 60000", "")).await;
    // The default max_fails: three faults within fail_timeout_ms eject the target.
    for _ in 0..2 {
        problem(
            gw.http.get(gw.url("/orders")).send().await.unwrap(),
            502,
            "upstream.connect_failed",
        )
        .await;
    }
    let body = problem(
        gw.http.get(gw.url("/orders")).send().await.unwrap(),
        502,
        "upstream.connect_failed",
    )
    .await;
    let text = body.to_string();
    assert!(
        !text.contains(&dead.port().to_string()),
        "no internal address in {text}"
    );
    let d = gw.decision(body["request_id"].as_str().unwrap()).await;
    let up = d.trace.last().unwrap();
    assert_eq!((&*up.layer, up.mark), ("upstream", Mark::Deny));
    assert!(
        up.note.as_deref().unwrap().contains(&dead.to_string()),
        "the operator sees the target"
    );

    let body = problem(
        gw.http.get(gw.url("/orders")).send().await.unwrap(),
        503,
        "upstream.unavailable",
    )
    .await;
    let d = gw.decision(body["request_id"].as_str().unwrap()).await;
    assert_eq!(d.reason, Some(Reason::UpstreamUnavailable));
}

#[tokio::test]
async fn silent_upstream_is_504_timeout() {
    let silent = raw_upstream(b"", Duration::from_secs(30)).await;
    let gw = start(&config_with(&format!("\"{silent}\""), "request_timeout_ms = 200", "")).await;
    let body = problem(
        gw.http.get(gw.url("/orders")).send().await.unwrap(),
        504,
        "upstream.timeout",
    )
    .await;
    let d = gw.decision(body["request_id"].as_str().unwrap()).await;
    assert_eq!(d.reason, Some(Reason::UpstreamTimeout));
}

#[tokio::test]
async fn garbage_from_upstream_is_502_bad_response() {
    let garbage = raw_upstream(b"this is not HTTP\r\n\r\n", Duration::ZERO).await;
    let gw = start(&config_with(&format!("\"{garbage}\""), "", "")).await;
    let body = problem(
        gw.http.get(gw.url("/orders")).send().await.unwrap(),
        502,
        "upstream.bad_response",
    )
    .await;
    let d = gw.decision(body["request_id"].as_str().unwrap()).await;
    assert_eq!(d.reason, Some(Reason::UpstreamBadResponse));
}

#[tokio::test]
async fn round_robin_skips_an_ejected_target() {
    let second = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second_addr = second.local_addr().unwrap();
    tokio::spawn(pinpoint_gateway::echo::serve(second, std::future::pending()));
    let dead = dead_addr().await;
    let targets = format!("\"builtin:echo\", \"{second_addr}\", \"{dead}\"");
    let gw = start(&config_with(&targets, "fail_timeout_ms = 60000", "")).await;
    let mut statuses = Vec::new();
    let mut served_by = Vec::new();
    for i in 0..9 {
        let id = format!("rr-{i}");
        let resp = gw
            .http
            .get(gw.url("/orders"))
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        served_by.push(gw.decision(&id).await.upstream_target);
    }
    // A GET that met the dead target is retried once on the next one: no caller sees 502.
    assert_eq!(statuses, [200; 9], "{statuses:?}");
    let mut retried = 0;
    for i in 0..9 {
        let d = gw.decision(&format!("rr-{i}")).await;
        let attempts: Vec<_> = d.trace.iter().filter(|t| t.layer == "upstream").collect();
        if attempts.len() == 2 {
            retried += 1;
            assert_eq!(attempts[0].mark, Mark::Skip);
            assert_eq!(attempts[0].reason, Some(Reason::UpstreamConnectFailed));
            assert_eq!(attempts[0].rule_id.as_deref(), Some(dead.to_string().as_str()));
            assert_eq!(attempts[1].mark, Mark::Pass);
        }
    }
    assert!(
        (1..=3).contains(&retried),
        "the dead target is ejected after its faults: {retried}"
    );
    let to_second = served_by
        .iter()
        .filter(|t| t.as_deref() == Some(&second_addr.to_string()))
        .count();
    assert!(
        (3..=6).contains(&to_second),
        "both live targets share the load: {served_by:?}"
    );
}

#[tokio::test]
async fn problems_come_as_html_or_text_when_asked() {
    let gw = start(&echo_config()).await;
    let resp = gw
        .http
        .get(gw.url("/nope"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let html = resp.text().await.unwrap();
    assert!(html.contains("route.not_found") && html.contains(&id) && html.contains("No route for this request"));

    let resp = gw
        .http
        .get(gw.url("/nope"))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("404 No route for this request") && text.contains("reason: route.not_found"));

    // The problem type link resolves on the proxy listener itself.
    let page = gw
        .http
        .get(gw.url("/_pinpoint/reasons"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(page, pinpoint_core::reason::render_markdown());
}

#[tokio::test]
async fn metrics_count_requests_denials_and_latency() {
    let gw = start(&echo_config()).await;
    gw.http.get(gw.url("/orders")).send().await.unwrap();
    gw.http.post(gw.url("/admin/x")).send().await.unwrap();
    let metrics = gw.metrics().await;
    let has = |needle: &[&str]| metrics.lines().any(|l| needle.iter().all(|n| l.contains(n)));
    assert!(
        has(&["pinpoint_requests_total{", "route=\"orders\"", "status=\"200\""]),
        "{metrics}"
    );
    assert!(
        has(&["pinpoint_requests_total{", "route=\"admin\"", "status=\"403\""]),
        "{metrics}"
    );
    assert!(
        has(&[
            "pinpoint_denials_total{",
            "layer=\"policy\"",
            "reason=\"policy.explicit_deny\"",
            "route=\"admin\"",
            "mode=\"enforce\""
        ]),
        "{metrics}"
    );
    assert!(
        has(&["pinpoint_request_duration_seconds_bucket{", "route=\"orders\""]),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_fixed_echo_answers_the_same_body_and_keeps_the_connection() {
    let fixed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fixed_addr = fixed.local_addr().unwrap();
    tokio::spawn(pinpoint_gateway::echo::serve_mode(
        fixed,
        std::future::pending(),
        pinpoint_gateway::echo::EchoMode::Fixed,
    ));
    let gw = start(&config_with(&format!("\"{fixed_addr}\""), "", "")).await;
    // Two POSTs with bodies over the gateway's pooled upstream connection: the body is
    // read and dropped, the answer never depends on the request.
    for body in ["{\"n\":1}".repeat(200), String::new()] {
        let resp = gw.http.post(gw.url("/orders")).body(body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), pinpoint_gateway::echo::FIXED_BODY);
    }
}

#[tokio::test]
async fn traceparent_is_propagated_or_started_and_recorded() {
    let gw = start(&echo_config()).await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = gw
        .http
        .get(gw.url("/orders/1"))
        .header("traceparent", format!("00-{caller_trace}-00f067aa0ba902b7-01"))
        .header("tracestate", "vendor=opaque")
        .send()
        .await
        .unwrap();
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let echoed: serde_json::Value = resp.json().await.unwrap();
    let sent = echoed["headers"]["traceparent"].as_str().unwrap().to_owned();
    let fields: Vec<&str> = sent.split('-').collect();
    assert_eq!(
        fields[..2],
        ["00", caller_trace],
        "the upstream joins the caller's trace: {sent}"
    );
    assert_ne!(fields[2], "00f067aa0ba902b7", "with Pinpoint's span as its parent");
    assert_eq!(echoed["headers"]["tracestate"], "vendor=opaque");
    assert_eq!(gw.decision(&request_id).await.trace_id.as_deref(), Some(caller_trace));

    // Without one (or with a malformed one), Pinpoint starts a trace and records it.
    for header in [None, Some("00-zz-00f067aa0ba902b7-01")] {
        let mut request = gw.http.get(gw.url("/orders/1")).header("tracestate", "vendor=opaque");
        if let Some(h) = header {
            request = request.header("traceparent", h);
        }
        let resp = request.send().await.unwrap();
        let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let echoed: serde_json::Value = resp.json().await.unwrap();
        let sent = echoed["headers"]["traceparent"].as_str().unwrap().to_owned();
        let trace_id = sent.split('-').nth(1).unwrap().to_owned();
        assert_eq!(trace_id.len(), 32, "{sent}");
        assert!(
            echoed["headers"].get("tracestate").is_none(),
            "state without a parent is dropped"
        );
        assert_eq!(gw.decision(&request_id).await.trace_id, Some(trace_id));
    }
}
