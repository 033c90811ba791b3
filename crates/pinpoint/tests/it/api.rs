//! The api listener: admin authentication codes, the decisions endpoint, `pinpoint explain`.

use pinpoint_core::identity::{KeyKind, PrincipalKind};
use pinpoint_store::NewKey;

use crate::*;

#[tokio::test]
async fn decisions_need_a_valid_admin_key() {
    let gw = start(&echo_config()).await;
    let url = gw.api_url("/api/v2/decisions/anything");

    let resp = gw.http.get(&url).send().await.unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"pinpoint\"");
    problem(resp, 401, "authn.credentials_missing").await;

    let resp = gw.http.get(&url).bearer_auth("not-a-key").send().await.unwrap();
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    let body = problem(resp, 401, "authn.key_malformed").await;
    assert!(
        !body.to_string().contains("not-a-key"),
        "the credential is never echoed"
    );

    // Right shape and id, wrong secret.
    let mut forged = gw.admin_key.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    let resp = gw.http.get(&url).header("x-api-key", &forged).send().await.unwrap();
    let body = problem(resp, 401, "authn.key_unknown").await;
    assert!(
        !body.to_string().contains(&forged[20..]),
        "the credential is never echoed"
    );

    let resp = gw.http.get(&url).bearer_auth(&gw.admin_key).send().await.unwrap();
    problem(resp, 404, "api.not_found").await;
}

#[tokio::test]
async fn decisions_endpoint_returns_the_trace() {
    let gw = start(&echo_config()).await;
    gw.http
        .post(gw.url("/admin/users"))
        .header("x-request-id", "api-403")
        .send()
        .await
        .unwrap();
    gw.decision("api-403").await;
    let resp = gw
        .http
        .get(gw.api_url("/api/v2/decisions/api-403"))
        .bearer_auth(&gw.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["type"], "decision");
    let attrs = &body["data"]["attributes"];
    assert_eq!(attrs["client_request_id"], "api-403");
    assert_eq!(body["data"]["id"], attrs["request_id"]);
    assert_eq!(attrs["status"], 403);
    assert_eq!(attrs["reason"], "policy.explicit_deny");
    let policy = attrs["trace"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["layer"] == "policy")
        .unwrap();
    assert_eq!(policy["rule_id"], "admin-read-only");
    assert_eq!(policy["mark"], "deny");
    assert!(attrs["config_revision"].as_str().unwrap().starts_with('r'));
}

#[tokio::test]
async fn unknown_api_path_is_404_and_a_closed_store_is_503() {
    let gw = start(&echo_config()).await;
    problem(
        gw.http.get(gw.api_url("/api/v2/nothing")).send().await.unwrap(),
        404,
        "api.not_found",
    )
    .await;
    gw.store.close().await;
    let resp = gw
        .http
        .get(gw.api_url("/api/v2/decisions/x"))
        .bearer_auth(&gw.admin_key)
        .send()
        .await
        .unwrap();
    let body = problem(resp, 503, "store.unavailable").await;
    assert!(!body.to_string().contains("pinpoint.db"), "no internal detail: {body}");
}

#[tokio::test]
async fn explain_prints_the_chain_and_json() {
    let gw = start(&echo_config()).await;
    gw.http
        .post(gw.url("/admin/users"))
        .header("x-request-id", "explain-me")
        .send()
        .await
        .unwrap();
    let d = gw.decision("explain-me").await;
    let bin = env!("CARGO_BIN_EXE_pinpoint");
    let api = format!("http://{}", gw.api);
    let (api_for_blocking, key) = (api.clone(), gw.admin_key.clone());
    let out = tokio::task::spawn_blocking({
        let run = move |extra: &'static [&'static str]| {
            std::process::Command::new(bin)
                .args(["explain", "explain-me", "--api", &api_for_blocking, "--key", &key])
                .args(extra)
                .env("NO_PROXY", "*")
                .output()
                .expect("run pinpoint explain")
        };
        move || (run(&[]), run(&["--json"]))
    })
    .await
    .unwrap();
    let (text, json) = out;
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("POST /admin/users -> 403 policy.explicit_deny"), "{text}");
    assert!(text.contains("[pass]       route"), "{text}");
    assert!(text.contains("[DENY]       policy"), "{text}");
    assert!(text.contains("rule `admin-read-only`"), "{text}");
    assert!(text.contains(&d.config_revision), "{text}");
    assert!(
        text.contains(&format!(
            "hint: {}",
            pinpoint_core::Reason::PolicyExplicitDeny.info().hint
        )),
        "{text}"
    );

    assert!(json.status.success());
    let parsed: pinpoint_core::Decision = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed, d);

    // A wrong key is a clear error, not a panic.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["explain", "explain-me", "--api", &api, "--key", "pp_wrong"])
            .env("NO_PROXY", "*")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("authn.key_malformed"), "{err}");
}

#[tokio::test]
async fn a_decision_is_found_right_after_its_request_or_said_to_be_pending() {
    let gw = start(&echo_config()).await;
    let resp = gw.http.post(gw.url("/admin/x")).send().await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    // Asked at once, before the decision log's next batch: the API waits for it.
    let found = gw
        .api_json(&format!("/api/v2/decisions/{id}"), Some(&gw.admin_key))
        .await;
    assert_eq!(found["data"]["attributes"]["status"], 403, "{found}");
    // A recent Pinpoint id with nothing written (yet): pending, with a time to retry.
    let recent = pinpoint_core::request_id::format(pinpoint_store::now_ms() as u64, 42);
    let resp = gw
        .http
        .get(gw.api_url(&format!("/api/v2/decisions/{recent}")))
        .bearer_auth(&gw.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    problem(resp, 503, "api.decision_pending").await;
    // An old one, or a client's id, that names nothing: not found.
    let old = pinpoint_core::request_id::format((pinpoint_store::now_ms() - 120_000) as u64, 42);
    for id in [old.as_str(), "never-sent"] {
        let resp = gw
            .http
            .get(gw.api_url(&format!("/api/v2/decisions/{id}")))
            .bearer_auth(&gw.admin_key)
            .send()
            .await
            .unwrap();
        problem(resp, 404, "api.not_found").await;
    }
    // The API denies by default: a method no table declares for a path is 405.
    let resp = gw
        .http
        .put(gw.api_url("/api/v2/users"))
        .bearer_auth(&gw.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "POST, GET");
    problem(resp, 405, "route.method_not_allowed").await;
}

#[tokio::test]
async fn metrics_can_require_a_platform_key_or_move_to_their_own_listener() {
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let text = echo_config().replace(
        "drain_timeout_ms = 5000\n",
        &format!("drain_timeout_ms = 5000\nmetrics = \"key\"\nmetrics_listen = \"{free}\"\n"),
    );
    // An organization's administrator (`*` would be a platform administrator).
    let (dir, store, admin_key) = fresh_store().await;
    let org = store.create_org("tenant").await.unwrap();
    let permissions = ["users:*", "service_accounts:*", "roles:*", "keys:*", "decisions:read"].map(String::from);
    let role = store.create_role(&org.id, "admin", &permissions).await.unwrap();
    let admin = store
        .create_principal(&org.id, PrincipalKind::User, "tenant-admin", None)
        .await
        .unwrap();
    store.assign_role(&admin.id, &role.id).await.unwrap();
    let org_admin_key = store
        .create_key(NewKey {
            name: "test".into(),
            kind: KeyKind::Application,
            org_id: org.id.clone(),
            principal_id: Some(admin.id.clone()),
            scopes: None,
            expires_at_ms: None,
        })
        .await
        .unwrap()
        .key;
    let gw = start_in(dir, store, admin_key, &text).await;
    let url = gw.api_url("/metrics");
    problem(
        gw.http.get(&url).send().await.unwrap(),
        401,
        "authn.credentials_missing",
    )
    .await;
    let resp = gw.http.get(&url).bearer_auth(&gw.admin_key).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // /healthz tells everyone whether it serves; its details are for the same admins.
    let public = gw.api_json("/healthz", None).await;
    assert_eq!(public.as_object().unwrap().len(), 2, "{public}");
    assert!(public.get("upstreams").is_none());
    let detailed = gw.api_json("/healthz", Some(&gw.admin_key)).await;
    assert!(detailed.get("upstreams").is_some(), "{detailed}");
    assert!(resp.text().await.unwrap().contains("pinpoint_"));
    // The organization administrator is refused: metrics span every organization.
    let resp = gw.http.get(&url).bearer_auth(&org_admin_key).send().await.unwrap();
    problem(resp, 403, "authz.permission_missing").await;

    // The listener of its own serves them to anyone who reaches it, and nothing else.
    let resp = gw.http.get(format!("http://{free}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("pinpoint_"));
    assert_eq!(
        gw.http
            .get(format!("http://{free}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let gw = start(&echo_config().replace(
        "drain_timeout_ms = 5000\n",
        "drain_timeout_ms = 5000\nmetrics = \"off\"\n",
    ))
    .await;
    problem(
        gw.http.get(gw.api_url("/metrics")).send().await.unwrap(),
        404,
        "api.not_found",
    )
    .await;
}
