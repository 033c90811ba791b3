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
    let health: serde_json::Value = gw
        .http
        .get(gw.api_url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
