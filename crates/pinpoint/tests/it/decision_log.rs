//! The decision log at volume: refusals and report-mode would-denies all kept, allowed
//! requests sampled per route, and per-minute rollups that count every request exactly.

use std::collections::HashMap;

use pinpoint_core::{Mode, Reason};
use pinpoint_store::prelude::*;
use pinpoint_store::rollups;

use crate::{config_with, start};

/// Sends `count` requests of `method` to `path` over `parallel` connections at once and
/// returns each response's status and `X-Request-Id`.
async fn send(gw: &crate::TestGateway, method: reqwest::Method, path: &str, count: usize) -> Vec<(u16, String)> {
    let parallel = 16;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..parallel {
        let (http, url, method) = (gw.http.clone(), gw.url(path), method.clone());
        let share = count / parallel + usize::from(worker < count % parallel);
        tasks.spawn(async move {
            let mut seen = Vec::with_capacity(share);
            for _ in 0..share {
                let resp = http.request(method.clone(), &url).send().await.expect("request");
                let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
                seen.push((resp.status().as_u16(), id));
            }
            seen
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(seen) = tasks.join_next().await {
        all.extend(seen.expect("sender"));
    }
    all
}

#[tokio::test]
async fn refusals_are_all_kept_allowed_requests_sampled_and_every_request_counted() {
    let gw = start(&config_with(
        "\"builtin:echo\"",
        "",
        r#"
[decision_log]
sample_allowed = 0.0
flush_interval_ms = 10

[[routes]]
id = "kept"
path_prefix = "/kept"
upstream = "main"
decision_sample = 1.0

[[routes]]
id = "watched"
path_prefix = "/watched"
upstream = "main"
waf = "report"
"#,
    ))
    .await;

    let allowed = send(&gw, reqwest::Method::GET, "/orders/1", 1000).await;
    let refused = send(&gw, reqwest::Method::POST, "/admin/x", 40).await;
    let kept = send(&gw, reqwest::Method::GET, "/kept/x", 20).await;
    let watched = send(&gw, reqwest::Method::GET, "/watched/x?q=1'%20OR%20'1'='1", 10).await;
    assert!(allowed
        .iter()
        .chain(&kept)
        .chain(&watched)
        .all(|(status, _)| *status == 200));
    assert!(refused.iter().all(|(status, _)| *status == 403));

    // Nothing that was to be kept was lost, and /healthz says so by reason.
    let health = gw.api_json("/healthz", None).await;
    for reason in ["queue_full", "writer_stopped", "write_failed"] {
        assert_eq!(health["decision_log"]["dropped"][reason], 0, "{health}");
    }

    // Stopping writes every queued record and every count.
    let (_dir, store, _) = gw.stop_and_keep().await;
    for (_, id) in &allowed {
        assert!(
            store.decision(id).await.unwrap().is_none(),
            "allowed {id} was sampled out"
        );
    }
    for (_, id) in refused.iter().chain(&kept).chain(&watched) {
        assert!(store.decision(id).await.unwrap().is_some(), "{id} kept");
    }
    let watched_record = store.decision(&watched[0].1).await.unwrap().unwrap();
    assert!(watched_record
        .trace
        .iter()
        .any(|t| t.mark == pinpoint_core::Mark::WouldDeny && t.reason == Some(Reason::WafSqli)));

    let mut counts: HashMap<(Option<String>, Option<Reason>, u16, Mode), u64> = HashMap::new();
    for row in rollups::read(&store, 0, i64::MAX).await.unwrap() {
        *counts
            .entry((row.key.route, row.key.reason, row.key.status, row.key.mode))
            .or_default() += row.count;
    }
    let route = |id: &str| Some(id.to_owned());
    assert_eq!(counts.remove(&(route("orders"), None, 200, Mode::Enforce)), Some(1000));
    assert_eq!(
        counts.remove(&(route("admin"), Some(Reason::PolicyExplicitDeny), 403, Mode::Enforce)),
        Some(40)
    );
    assert_eq!(counts.remove(&(route("kept"), None, 200, Mode::Enforce)), Some(20));
    assert_eq!(counts.remove(&(route("watched"), None, 200, Mode::Enforce)), Some(10));
    assert_eq!(
        counts.remove(&(route("watched"), Some(Reason::WafSqli), 200, Mode::Report)),
        Some(10)
    );
    assert!(counts.is_empty(), "nothing else counted: {counts:?}");
}

/// The analytics of `query` as `caller` sees them: (total, each group's key and total).
async fn analytics(gw: &crate::TestGateway, caller: &str, query: &str) -> (u64, Vec<(serde_json::Value, u64)>) {
    let resp = gw
        .api_get(&format!("/api/v2/analytics/decisions?{query}"), Some(caller))
        .await;
    assert_eq!(resp.status(), 200, "{query}");
    let body: serde_json::Value = resp.json().await.unwrap();
    let attributes = &body["data"]["attributes"];
    let groups = attributes["groups"].as_array().unwrap();
    for group in groups {
        let points: u64 = group["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_u64().unwrap())
            .sum();
        assert_eq!(
            points,
            group["total"].as_u64().unwrap(),
            "a group's series adds up to its total"
        );
    }
    (
        attributes["total"].as_u64().unwrap(),
        groups
            .iter()
            .map(|g| (g["key"].clone(), g["total"].as_u64().unwrap()))
            .collect(),
    )
}

#[tokio::test]
async fn analytics_count_a_known_mix_exactly_and_each_tenant_sees_only_its_own() {
    // Default sampling (1% of allowed requests): the analytics still count every request.
    let w = crate::access::world("[decision_log]\nsample_allowed = 0.01\n").await;
    let gw = &w.gw;
    let get = |key: Option<String>, method: reqwest::Method| {
        let mut req = gw.http.request(method, gw.url("/orders/1"));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for _ in 0..7 {
        assert_eq!(get(Some(w.alice_key.clone()), reqwest::Method::GET).await, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(Some(w.bob_key.clone()), reqwest::Method::POST).await, 403);
    }
    for _ in 0..4 {
        assert_eq!(get(Some(w.globex_key.clone()), reqwest::Method::GET).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(None, reqwest::Method::GET).await, 401);
    }
    // Counts reach the store within a second.
    crate::poll_until("the rollups hold all 16 requests", || async {
        analytics(gw, &gw.admin_key, "route=orders").await.0 == 16
    })
    .await;

    let (total, by_reason) = analytics(gw, &gw.admin_key, "route=orders&group_by=reason").await;
    assert_eq!(total, 16);
    assert_eq!(
        by_reason,
        vec![
            (serde_json::json!({"reason": null}), 11),
            (serde_json::json!({"reason": "authz.permission_missing"}), 3),
            (serde_json::json!({"reason": "authn.credentials_missing"}), 2),
        ]
    );
    let (_, by_layer_and_status) = analytics(gw, &gw.admin_key, "route=orders&layer=authz&group_by=layer,status").await;
    assert_eq!(
        by_layer_and_status,
        vec![(serde_json::json!({"layer": "authz", "status": 403}), 3)]
    );
    let (_, by_org) = analytics(gw, &gw.admin_key, "route=orders&group_by=org&top=2").await;
    assert_eq!(
        by_org,
        vec![
            (serde_json::json!({"org": w.acme.id}), 10),
            (serde_json::json!({"org": w.globex.id}), 4),
        ],
        "the top two of three groups (the anonymous requests are the third)"
    );
    let (allowed, _) = analytics(gw, &gw.admin_key, "route=orders&reason=-&interval=5m").await;
    assert_eq!(allowed, 11);
    // By caller and by the permission the authorization layer granted: alice's seven GETs
    // used orders:read; bob's refused POSTs name bob and no permission.
    let (_, by_principal) = analytics(
        gw,
        &gw.admin_key,
        &format!("route=orders&org={}&group_by=principal,permission", w.acme.id),
    )
    .await;
    assert_eq!(
        by_principal,
        vec![
            (
                serde_json::json!({"principal": w.alice_id, "permission": "orders:read"}),
                7
            ),
            (serde_json::json!({"principal": w.bob_id, "permission": null}), 3),
        ]
    );
    let (bobs, _) = analytics(
        gw,
        &gw.admin_key,
        &format!("principal={}&reason=authz.permission_missing", w.bob_id),
    )
    .await;
    assert_eq!(bobs, 3);

    // globex's service account reads decisions: only globex's requests count for it, and
    // asking for acme's is the same as asking for an organization that does not exist.
    let (mine, groups) = analytics(gw, &w.globex_key, "group_by=org,route").await;
    assert!(groups.iter().all(|(key, _)| key["org"] == w.globex.id), "{groups:?}");
    assert!(mine >= 4);
    assert_eq!(analytics(gw, &w.globex_key, &format!("org={}", w.acme.id)).await.0, 0);
    assert_eq!(analytics(gw, &w.globex_key, "org=no-such-org").await.0, 0);

    // Prometheus has the same counts by outcome (the recorder is the test process's, shared
    // with other tests, so at least these).
    let metrics = gw.metrics().await;
    let count_of = |labels: &[&str]| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("pinpoint_decisions_total{") && labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let refused = [
        "outcome=\"refused\"",
        "layer=\"authz\"",
        "reason=\"authz.permission_missing\"",
        "route=\"orders\"",
    ];
    assert!(count_of(&refused) >= 3, "{metrics}");
    assert!(count_of(&["outcome=\"allowed\"", "route=\"orders\"", "mode=\"enforce\""]) >= 11);

    // The stored decisions, listed and filtered: the refusals are all there; globex sees
    // none of acme's.
    let list = |key: String, query: &'static str| async move {
        let body = gw.api_json(&format!("/api/v2/decisions?{query}"), Some(&key)).await;
        body["data"].as_array().unwrap().clone()
    };
    let refusals = list(gw.admin_key.clone(), "route=orders&layer=authz").await;
    assert_eq!(refusals.len(), 3);
    assert!(refusals
        .iter()
        .all(|d| d["attributes"]["reason"] == "authz.permission_missing"));
    assert_eq!(
        list(gw.admin_key.clone(), "route=orders&status=401&limit=1")
            .await
            .len(),
        1
    );
    assert!(list(w.globex_key.clone(), "route=orders&layer=authz").await.is_empty());

    // The CLI: `decisions list` and one frame of `top`.
    let api = format!("http://{}", gw.api);
    let run = |args: &'static [&'static str]| crate::cli(args, &api, &gw.admin_key);
    let listed = run(&["decisions", "list", "--layer", "authz", "--route", "orders"]).await;
    assert_eq!(
        listed
            .lines()
            .filter(|l| l.contains("authz.permission_missing"))
            .count(),
        3,
        "{listed}"
    );
    let top = run(&["top", "--once", "--minutes", "60"]).await;
    assert!(top.contains("refused, by reason"), "{top}");
    let reasons = top.split("refused, by route").next().unwrap();
    assert!(reasons.contains("       3  authz.permission_missing"), "{top}");
    let callers = top.split("refused, by caller").nth(1).unwrap_or_default();
    assert!(callers.contains(&format!("       3  {}", w.bob_id)), "{top}");
    assert!(reasons.contains("       2  authn.credentials_missing"), "{top}");

    // An allowed request left out of the sample is said to be so at once, not "pending".
    let mut answers = Vec::new();
    for _ in 0..5 {
        let resp = gw
            .http
            .get(gw.url("/orders/1"))
            .bearer_auth(&w.alice_key)
            .send()
            .await
            .unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let started = std::time::Instant::now();
        let answer = gw
            .api_get(&format!("/api/v2/decisions/{id}"), Some(&gw.admin_key))
            .await;
        answers.push((
            answer.status().as_u16(),
            answer.text().await.unwrap(),
            started.elapsed(),
        ));
    }
    let left_out: Vec<_> = answers.iter().filter(|(status, _, _)| *status == 404).collect();
    assert!(!left_out.is_empty(), "at 1%, one of five is left out: {answers:?}");
    for (_, body, took) in left_out {
        assert!(body.contains("not in the sample"), "{body}");
        assert!(*took < std::time::Duration::from_secs(2), "{took:?}");
    }

    // Mistakes are named; callers without decisions:read are refused.
    for bad in [
        "interval=90s",
        "group_by=caller",
        "from=10&to=5",
        "from=-9223372036854775808&to=0",
        "mode=shadow",
        "colour=red",
    ] {
        let resp = gw
            .api_get(&format!("/api/v2/analytics/decisions?{bad}"), Some(&gw.admin_key))
            .await;
        crate::problem(resp, 400, "api.bad_request").await;
    }
    let resp = gw.api_get("/api/v2/analytics/decisions", Some(&w.alice_key)).await;
    crate::problem(resp, 403, "authz.permission_missing").await;
}
