//! `GET /api/v2/audits` and `pinpoint audit` on a seeded directory and config: every kind
//! of finding, tenant-scoped.

use pinpoint_core::identity::{KeyKind, PrincipalKind};
use pinpoint_store::prelude::*;
use pinpoint_store::NewKey;

use crate::access::world;

fn kinds_of(findings: &serde_json::Value, kind: &str) -> Vec<String> {
    findings
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == kind)
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_finding_on_a_seeded_directory_and_each_tenant_sees_its_own() {
    let w = world("[policy]\nmode = \"report\"\n").await;
    let store = &w.gw.store;
    // Seed: a role granting `*`, a key scoped to `*`, a suspended principal with a live key,
    // and globex's service account allowed to read its audit.
    let everything = store
        .create_role(&w.acme.id, "everything", &["*".into()])
        .await
        .unwrap();
    let wide = store
        .create_key(NewKey {
            name: "wide".into(),
            kind: KeyKind::Application,
            org_id: w.acme.id.clone(),
            principal_id: Some(w.alice_id.clone()),
            scopes: Some(vec!["*".into()]),
            expires_at_ms: Some(pinpoint_store::now_ms() + 86_400_000),
        })
        .await
        .unwrap();
    store.set_principal_suspended(&w.bob_id, true).await.unwrap();
    // A mapping for an AWS account acme never registered (the API would refuse it).
    let stray = store
        .create_mapping(
            &w.acme.id,
            "persona",
            "arn:aws:iam::999999999999:user/ghost",
            Some(&w.alice_id),
        )
        .await
        .unwrap();
    let auditor = store
        .create_role(&w.globex.id, "auditor", &["audits:read".into()])
        .await
        .unwrap();
    let globex_svc = store
        .principals(Some(&w.globex.id), PrincipalKind::ServiceAccount)
        .await
        .unwrap()
        .remove(0);
    store.assign_role(&globex_svc.id, &auditor.id).await.unwrap();
    w.gw.services_refresh_principal(&globex_svc.id).await;

    let audit = |key: String, query: &'static str| {
        let gw = &w.gw;
        async move { gw.api_json(&format!("/api/v2/audits?{query}"), Some(&key)).await }
    };
    let all = audit(w.gw.admin_key.clone(), "unused_days=0").await;
    let findings = &all["data"]["attributes"]["findings"];
    let bob_key_id = pinpoint_core::keys::parse(&w.bob_key).unwrap().id.to_owned();
    let alice_key_id = pinpoint_core::keys::parse(&w.alice_key).unwrap().id.to_owned();
    assert!(kinds_of(findings, "key_unused").contains(&bob_key_id), "{findings}");
    assert!(kinds_of(findings, "key_without_expiry").contains(&alice_key_id));
    assert!(
        !kinds_of(findings, "key_without_expiry").contains(&wide.info.id),
        "it expires"
    );
    assert_eq!(kinds_of(findings, "key_holds_everything"), vec![wide.info.id.clone()]);
    assert!(kinds_of(findings, "role_holds_everything").contains(&everything.id));
    assert_eq!(
        kinds_of(findings, "suspended_principal_with_live_keys"),
        vec![w.bob_id.clone()]
    );
    let anonymous_writes = kinds_of(findings, "unauthenticated_write_route");
    assert!(anonymous_writes.contains(&"public".to_owned()), "{anonymous_writes:?}");
    assert!(
        !anonymous_writes.contains(&"orders".to_owned()),
        "orders needs permissions"
    );
    assert_eq!(kinds_of(findings, "layer_in_report_mode"), vec!["policy".to_owned()]);
    assert_eq!(
        kinds_of(findings, "mapping_for_unregistered_account"),
        vec![stray.id.clone()]
    );
    // Nobody is old enough for `permission_unused` yet, and the rollups cover no day.
    assert!(kinds_of(findings, "permission_unused").is_empty(), "{findings}");
    // Keys created just now are not unused for a day.
    let recent = audit(w.gw.admin_key.clone(), "unused_days=1").await;
    assert!(kinds_of(&recent["data"]["attributes"]["findings"], "key_unused").is_empty());

    // globex sees its own findings only: none of acme's, none of the config's.
    let theirs = audit(w.globex_key.clone(), "unused_days=0").await;
    let theirs = theirs["data"]["attributes"]["findings"].as_array().unwrap().clone();
    assert!(!theirs.is_empty());
    assert!(theirs.iter().all(|f| f["org_id"] == w.globex.id), "{theirs:?}");
    // acme's alice has no audits:read.
    let resp = w.gw.api_get("/api/v2/audits", Some(&w.alice_key)).await;
    crate::problem(resp, 403, "authz.permission_missing").await;
    let resp =
        w.gw.api_get("/api/v2/audits?unused_days=-1", Some(&w.gw.admin_key))
            .await;
    crate::problem(resp, 400, "api.bad_request").await;

    // The CLI prints the same findings.
    let api = format!("http://{}", w.gw.api);
    let text = crate::cli(&["audit", "--unused-days", "0"], &api, &w.gw.admin_key).await;
    assert!(
        text.contains("suspended_principal_with_live_keys") && text.contains("layer_in_report_mode"),
        "{text}"
    );
}

#[tokio::test]
async fn permissions_unused_are_those_no_counted_request_was_granted() {
    let w = world("").await;
    let store = &w.gw.store;
    let now = pinpoint_store::now_ms();
    let day = 86_400_000;
    // alice (orders:read and orders:write) and bob (orders:read) joined ten days ago; the
    // rollups of three days ago count alice's reads, and those of twenty days ago (before
    // the window) bob's.
    sqlx::any::install_default_drivers();
    let url = store
        .postgres_url()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("sqlite://{}", store.data_dir().join("pinpoint.db").display()));
    let db = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE principals SET created_at_ms = $1 WHERE id IN ($2, $3)")
        .bind(now - 10 * day)
        .bind(&w.alice_id)
        .bind(&w.bob_id)
        .execute(&db)
        .await
        .unwrap();
    let count = |minute_ms: i64, principal: &str, permission: &str| pinpoint_store::rollups::RollupRow {
        key: pinpoint_store::rollups::RollupKey {
            minute_ms: minute_ms - minute_ms.rem_euclid(60_000),
            route: Some("orders".into()),
            reason: None,
            org_id: Some(w.acme.id.as_str().into()),
            principal_id: Some(principal.into()),
            permission: Some(permission.into()),
            status: 200,
            mode: pinpoint_core::Mode::Enforce,
        },
        count: 5,
    };
    let counts: std::collections::HashMap<_, _> = [
        count(now - 3 * day, &w.alice_id, "orders:read"),
        count(now - 20 * day, &w.bob_id, "orders:read"),
    ]
    .into_iter()
    .map(|row| (row.key, row.count))
    .collect();
    pinpoint_store::rollups::add(store, &counts).await.unwrap();

    let unused = |query: &'static str| {
        let gw = &w.gw;
        async move {
            let body = gw
                .api_json(&format!("/api/v2/audits?{query}"), Some(&gw.admin_key))
                .await;
            body["data"]["attributes"]["findings"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["kind"] == "permission_unused")
                .map(|f| {
                    (
                        f["id"].as_str().unwrap().to_owned(),
                        f["detail"].as_str().unwrap().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    // In the last 14 days the rollups reach back three (the twenty-day-old count is
    // outside): alice has not used orders:write, bob nothing.
    let found = unused("unused_days=14").await;
    let alice: Vec<_> = found.iter().filter(|(id, _)| *id == w.alice_id).collect();
    assert_eq!(alice.len(), 1, "{found:?}");
    assert!(
        alice[0].1.contains("`orders:write`") && alice[0].1.contains("3 days"),
        "{found:?}"
    );
    let bob: Vec<_> = found.iter().filter(|(id, _)| *id == w.bob_id).collect();
    assert_eq!(bob.len(), 1, "{found:?}");
    assert!(bob[0].1.contains("`orders:read`"), "{found:?}");
    // A window shorter than a day of counts says nothing.
    let window_with_no_day = unused("unused_days=0").await;
    assert!(window_with_no_day.is_empty(), "{window_with_no_day:?}");
    db.close().await;
}

#[tokio::test]
async fn who_can_answers_as_the_live_proxy_does_for_every_key() {
    let w = world("").await;
    let gw = &w.gw;
    let keys = [
        &w.alice_key,
        &w.alice_read_only_key,
        &w.bob_key,
        &w.carol_key,
        &w.globex_key,
        &w.acme_org_key,
        &w.globex_org_key,
    ];
    for (method, path) in [
        ("POST", "/orders/1"),
        ("GET", "/orders/1"),
        ("GET", "/acme/x"),
        ("POST", "/public/x"),
    ] {
        let answer = gw
            .api_json(
                &format!("/api/v2/who-can?method={method}&path={path}"),
                Some(&gw.admin_key),
            )
            .await;
        let attributes = &answer["data"]["attributes"];
        let listed = attributes["keys"].as_array().unwrap();
        for key in keys {
            let id = pinpoint_core::keys::parse(key).unwrap().id.to_owned();
            let said = listed
                .iter()
                .find(|k| k["key_id"] == id.as_str())
                .unwrap_or_else(|| panic!("{id} listed"));
            let live = gw
                .http
                .request(method.parse().unwrap(), gw.url(path))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let status = live.status();
            let reason = live
                .headers()
                .get("x-pinpoint-reason")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(
                said["allowed"],
                status.is_success(),
                "{method} {path} with {id}: live {status} {reason:?}, who-can {said}"
            );
            if let Some(reason) = reason {
                assert_eq!(said["reason"], reason.as_str(), "{method} {path} with {id}");
            }
        }
        let anonymous = gw
            .http
            .request(method.parse().unwrap(), gw.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            attributes["anonymous_allowed"],
            anonymous.status().is_success(),
            "{method} {path} anonymous"
        );
    }
    // A tenant asks about its own keys only.
    let auditor = gw
        .store
        .create_role(&w.globex.id, "auditor", &["audits:read".into()])
        .await
        .unwrap();
    let svc = gw
        .store
        .principals(Some(&w.globex.id), PrincipalKind::ServiceAccount)
        .await
        .unwrap()
        .remove(0);
    gw.store.assign_role(&svc.id, &auditor.id).await.unwrap();
    gw.services_refresh_principal(&svc.id).await;
    let theirs = gw
        .api_json("/api/v2/who-can?method=GET&path=/orders/1", Some(&w.globex_key))
        .await;
    let theirs = theirs["data"]["attributes"]["keys"].as_array().unwrap().clone();
    assert!(
        !theirs.is_empty() && theirs.iter().all(|k| k["org_id"] == w.globex.id),
        "{theirs:?}"
    );
}
