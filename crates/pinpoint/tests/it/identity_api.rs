//! Pinpoint's own API: organizations, users, service accounts, roles, assignments and keys
//! end to end, its access checked by the same pipeline, and the CLI on top of it.

use crate::access::world;
use crate::*;

async fn call(
    gw: &TestGateway,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> reqwest::Response {
    let mut req = gw.http.request(method, gw.api_url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

fn data(kind: &str, attributes: serde_json::Value) -> Option<serde_json::Value> {
    Some(serde_json::json!({"data": {"type": kind, "attributes": attributes}}))
}

#[tokio::test]
async fn an_administrator_builds_a_tenant_and_its_user_uses_it() {
    let gw = start(&config_with(
        "\"builtin:echo\"",
        "",
        "\n[[routes]]\nid = \"shop\"\npath_prefix = \"/shop\"\nupstream = \"main\"\npermissions = { POST = \"orders:write\" }\n",
    ))
    .await;
    let admin = gw.admin_key.clone();
    use reqwest::Method as M;

    let resp = call(
        &gw,
        M::POST,
        "/api/v2/orgs",
        &admin,
        data("orgs", serde_json::json!({"name": "initech"})),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let org: serde_json::Value = resp.json().await.unwrap();
    let org_id = org["data"]["id"].as_str().unwrap().to_owned();
    assert!(pinpoint_core::config::is_uuid(&org_id));
    let dup = call(
        &gw,
        M::POST,
        "/api/v2/orgs",
        &admin,
        data("orgs", serde_json::json!({"name": "initech"})),
    )
    .await;
    problem(dup, 409, "api.conflict").await;
    let bad = call(
        &gw,
        M::POST,
        "/api/v2/orgs",
        &admin,
        data("orgs", serde_json::json!({"nom": "x"})),
    )
    .await;
    problem(bad, 400, "api.bad_request").await;

    let resp = call(
        &gw,
        M::POST,
        "/api/v2/users",
        &admin,
        data(
            "users",
            serde_json::json!({"name": "peter", "email": "peter@initech.example", "org_id": org_id}),
        ),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let peter: serde_json::Value = resp.json().await.unwrap();
    let peter_id = peter["data"]["id"].as_str().unwrap().to_owned();

    let resp = call(
        &gw,
        M::POST,
        "/api/v2/roles",
        &admin,
        data(
            "roles",
            serde_json::json!({"name": "shopper", "permissions": ["orders:write"], "org_id": org_id}),
        ),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let role: serde_json::Value = resp.json().await.unwrap();
    let role_id = role["data"]["id"].as_str().unwrap().to_owned();

    let resp = call(
        &gw,
        M::POST,
        "/api/v2/api_keys",
        &admin,
        data(
            "api_keys",
            serde_json::json!({"name": "peter-laptop", "principal_id": peter_id}),
        ),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let created: serde_json::Value = resp.json().await.unwrap();
    let key = created["data"]["attributes"]["key"].as_str().unwrap().to_owned();
    let key_id = created["data"]["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("pp_{key_id}_")));

    // Without the role, peter's POST is refused for the missing permission ...
    let post = || gw.http.post(gw.url("/shop/cart")).bearer_auth(&key).body("{}").send();
    let body = problem(post().await.unwrap(), 403, "authz.permission_missing").await;
    assert!(body["detail"].as_str().unwrap().contains("orders:write"));
    // ... and passes once the role is assigned (the directory is refreshed at once).
    let resp = call(
        &gw,
        M::POST,
        &format!("/api/v2/roles/{role_id}/principals"),
        &admin,
        Some(serde_json::json!({"data": {"type": "principals", "id": peter_id}})),
    )
    .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(post().await.unwrap().status(), 200);

    let me: serde_json::Value = call(&gw, M::GET, "/api/v2/current_user", &key, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["data"]["id"], peter_id.as_str());
    assert_eq!(me["data"]["attributes"]["org_name"], "initech");
    assert_eq!(
        me["data"]["attributes"]["permissions"],
        serde_json::json!(["orders:write"])
    );

    // Listing shows the prefix and metadata, never the secret.
    let list = call(&gw, M::GET, "/api/v2/api_keys", &admin, None)
        .await
        .text()
        .await
        .unwrap();
    assert!(list.contains(&format!("pp_{key_id}_")));
    assert!(!list.contains(&key), "list never shows a secret");
    assert!(list.contains("last_used_at"));

    // Peter (no keys:write) cannot create keys: the API's pinpointed 403 ...
    let resp = call(
        &gw,
        M::POST,
        "/api/v2/api_keys",
        &key,
        data("api_keys", serde_json::json!({"name": "x"})),
    )
    .await;
    let body = problem(resp, 403, "authz.permission_missing").await;
    assert!(body["detail"].as_str().unwrap().contains("keys:write"));
    // ... with a trace that explain can show.
    let d = gw.decision(body["request_id"].as_str().unwrap()).await;
    assert_eq!(d.route.as_deref(), Some("api"));
    assert_eq!(d.deciding_layer().unwrap().layer, "authz");
    assert_eq!(d.deciding_layer().unwrap().rule_id.as_deref(), Some("keys:write"));

    // Revoke, then the key is refused.
    assert_eq!(
        call(&gw, M::DELETE, &format!("/api/v2/api_keys/{key_id}"), &admin, None)
            .await
            .status(),
        204
    );
    problem(post().await.unwrap(), 401, "authn.key_revoked").await;

    // An organization with members cannot be deleted; an empty one can.
    let resp = call(&gw, M::DELETE, &format!("/api/v2/orgs/{org_id}"), &admin, None).await;
    problem(resp, 409, "api.conflict").await;
    let resp = call(
        &gw,
        M::POST,
        "/api/v2/orgs",
        &admin,
        data("orgs", serde_json::json!({"name": "empty"})),
    )
    .await;
    let empty: serde_json::Value = resp.json().await.unwrap();
    let empty_id = empty["data"]["id"].as_str().unwrap();
    assert_eq!(
        call(&gw, M::DELETE, &format!("/api/v2/orgs/{empty_id}"), &admin, None)
            .await
            .status(),
        204
    );
    problem(
        call(&gw, M::GET, &format!("/api/v2/orgs/{empty_id}"), &admin, None).await,
        404,
        "api.not_found",
    )
    .await;

    let openapi = gw.api_json("/api/v2/openapi.json", None).await;
    assert_eq!(openapi["openapi"], "3.1.0");
    for (method, path, _) in pinpoint_gateway::api::ENDPOINTS {
        assert!(
            openapi["paths"][path][method.to_ascii_lowercase()].is_object(),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn tenants_cannot_see_or_touch_each_other() {
    let w = world("").await;
    use reqwest::Method as M;
    // Give bob key administration within acme.
    let role =
        w.gw.store
            .create_role(
                &w.acme.id,
                "key-admin",
                &["keys:read".into(), "keys:write".into(), "users:read".into()],
            )
            .await
            .unwrap();
    let resp = call(
        &w.gw,
        M::POST,
        &format!("/api/v2/roles/{}/principals", role.id),
        &w.gw.admin_key,
        Some(serde_json::json!({"data": {"type": "principals", "id": w.bob_id}})),
    )
    .await;
    assert_eq!(resp.status(), 204);

    let keys = call(&w.gw, M::GET, "/api/v2/api_keys", &w.bob_key, None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        keys.contains(&w.acme.id) && !keys.contains(&w.globex.id),
        "listings are scoped to the caller's org"
    );
    let globex_key_id = pinpoint_core::keys::parse(&w.globex_key).unwrap().id;
    let resp = call(
        &w.gw,
        M::DELETE,
        &format!("/api/v2/api_keys/{globex_key_id}"),
        &w.bob_key,
        None,
    )
    .await;
    let body = problem(resp, 404, "api.not_found").await;
    assert!(!body.to_string().contains(&w.globex.id) && !body.to_string().contains("globex"));
    let resp = call(
        &w.gw,
        M::POST,
        "/api/v2/users",
        &w.bob_key,
        data("users", serde_json::json!({"name": "mallory", "org_id": w.globex.id})),
    )
    .await;
    problem(resp, 403, "authz.permission_missing").await;
    // Granting what you do not hold is refused.
    let resp = call(
        &w.gw,
        M::POST,
        "/api/v2/api_keys",
        &w.bob_key,
        data(
            "api_keys",
            serde_json::json!({"name": "x", "kind": "api", "scopes": ["orders:write"]}),
        ),
    )
    .await;
    problem(resp, 403, "authz.permission_missing").await;
}

#[tokio::test]
async fn cli_manages_keys_users_and_roles() {
    let gw = start(&echo_config()).await;
    let api = format!("http://{}", gw.api);
    let key = gw.admin_key.clone();
    let run = move |args: Vec<String>| {
        let (api, key) = (api.clone(), key.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_pinpoint"))
                    .args(&args)
                    .args(["--api", &api, "--key", &key])
                    .env("NO_PROXY", "*")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let ok = |out: &std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let me = gw.api_json("/api/v2/current_user", Some(&gw.admin_key)).await;
    let admin_id = me["data"]["id"].as_str().unwrap().to_owned();

    let out = ok(&run(vec![
        "users".into(),
        "create".into(),
        "dora".into(),
        "--email".into(),
        "dora@example.com".into(),
    ])
    .await);
    assert!(out.contains("dora"), "{out}");
    let out = ok(&run(vec!["users".into(), "list".into()]).await);
    assert!(out.contains("dora"), "{out}");
    let out = ok(&run(vec![
        "roles".into(),
        "create".into(),
        "readers".into(),
        "--permission".into(),
        "orders:read".into(),
    ])
    .await);
    assert!(out.contains("readers"), "{out}");
    let out = ok(&run(vec![
        "keys".into(),
        "create".into(),
        "ci".into(),
        "--owner".into(),
        admin_id,
        "--scope".into(),
        "orders:read".into(),
    ])
    .await);
    let new_key = out
        .lines()
        .find_map(|l| l.strip_prefix("key (shown only now): "))
        .expect("the new key is printed once")
        .to_owned();
    let id = pinpoint_core::keys::parse(&new_key).unwrap().id.to_owned();
    let out = ok(&run(vec!["keys".into(), "list".into()]).await);
    assert!(out.contains(&format!("pp_{id}_")) && !out.contains(&new_key), "{out}");
    let out = ok(&run(vec!["keys".into(), "rotate".into(), id.clone()]).await);
    assert!(out.contains("pp_"), "{out}");
    ok(&run(vec!["keys".into(), "revoke".into(), id]).await);
    // Cloud auth: register an account, then map a role's sessions to a principal.
    ok(&run(vec!["cloud-auth".into(), "add-account".into(), "123456789012".into()]).await);
    let out = run(vec![
        "cloud-auth".into(),
        "add-persona".into(),
        "arn:aws:iam::123456789012:role/ops/Deployer".into(),
        "dora@example.com".into(),
    ])
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("arn:aws:sts::123456789012:assumed-role/Deployer/*"),
        "a console role ARN gets the session form as hint: {err}"
    );
    ok(&run(vec![
        "cloud-auth".into(),
        "add-persona".into(),
        "arn:aws:sts::123456789012:assumed-role/Deployer/*".into(),
        "dora@example.com".into(),
    ])
    .await);
    let out = ok(&run(vec!["cloud-auth".into(), "mappings".into()]).await);
    assert!(
        out.contains("assumed-role/Deployer/*") && out.contains("dora@example.com"),
        "{out}"
    );

    // A bad call is a clear error.
    let out = run(vec!["keys".into(), "revoke".into(), "0000000000000000".into()]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("api.not_found"));
}

/// What a caller learns from an answer: status, reason and detail.
/// What a caller can learn from an answer: its status, reason and detail, and the
/// decision's trace as the same caller reads it back (timings aside).
async fn answer(
    gw: &TestGateway,
    reader: &str,
    resp: reqwest::Response,
) -> (u16, serde_json::Value, serde_json::Value, serde_json::Value) {
    let status = resp.status().as_u16();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let decision = gw.api_json(&format!("/api/v2/decisions/{id}"), Some(reader)).await;
    let mut trace = decision["data"]["attributes"]["trace"].clone();
    for entry in trace.as_array_mut().into_iter().flatten() {
        entry.as_object_mut().map(|e| e.remove("micros"));
    }
    assert!(trace.is_array(), "the caller reads its own decision: {decision}");
    (status, body["reason"].clone(), body["detail"].clone(), trace)
}

#[tokio::test]
async fn every_endpoint_answers_a_foreign_id_exactly_like_a_missing_one() {
    use reqwest::Method as M;
    let w = world("").await;
    let store = &w.gw.store;
    // An acme administrator holding every tenant permission.
    let perms: Vec<String> = [
        "orgs:read",
        "users:read",
        "users:write",
        "service_accounts:read",
        "service_accounts:write",
        "roles:read",
        "roles:write",
        "keys:read",
        "keys:write",
        "decisions:read",
        "cloud_auth_config_read",
        "cloud_auth_config_write",
        "orders:read",
        "orders:write",
        "intake:write",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    let admin_role = store.create_role(&w.acme.id, "tenant-admin", &perms).await.unwrap();
    store.assign_role(&w.alice_id, &admin_role.id).await.unwrap();
    w.gw.services_refresh_principal(&w.alice_id).await;
    let own_role = store.create_role(&w.acme.id, "own", &[]).await.unwrap();
    // globex's resources.
    let g_user = store
        .create_principal(&w.globex.id, pinpoint_core::identity::PrincipalKind::User, "gina", None)
        .await
        .unwrap();
    let g_svc = store
        .create_principal(
            &w.globex.id,
            pinpoint_core::identity::PrincipalKind::ServiceAccount,
            "gsvc",
            None,
        )
        .await
        .unwrap();
    let g_role = store.create_role(&w.globex.id, "g-role", &[]).await.unwrap();
    let g_key = pinpoint_core::keys::parse(&w.globex_key).unwrap().id.to_owned();
    store.register_aws_account(&w.globex.id, "210987654321").await.unwrap();
    let g_persona = store
        .create_mapping(
            &w.globex.id,
            "persona",
            "arn:aws:sts::210987654321:assumed-role/G/*",
            Some(&g_user.id),
        )
        .await
        .unwrap();
    let g_intake = store
        .create_mapping(
            &w.globex.id,
            "intake",
            "arn:aws:sts::210987654321:assumed-role/I/*",
            None,
        )
        .await
        .unwrap();
    let resp =
        w.gw.http
            .get(w.gw.url("/orders/1"))
            .bearer_auth(&w.globex_key)
            .send()
            .await
            .unwrap();
    let g_decision = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    w.gw.decision(&g_decision).await;
    let missing_uuid = "00000000-0000-4000-8000-000000000000";
    let missing_key = "0123456789abcdef";
    // (method, path with `{}` for the id, body, foreign id, missing id)
    let patch = |kind: &str| data(kind, serde_json::json!({"suspended": true}));
    let assign = |id: &str| Some(serde_json::json!({"data": {"type": "principals", "id": id}}));
    let cases: Vec<(M, String, Option<serde_json::Value>, String, String)> = vec![
        (
            M::GET,
            "/api/v2/orgs/{}".into(),
            None,
            w.globex.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::PATCH,
            "/api/v2/orgs/{}".into(),
            patch("orgs"),
            w.globex.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::DELETE,
            "/api/v2/orgs/{}".into(),
            None,
            w.globex.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::GET,
            "/api/v2/users/{}".into(),
            None,
            g_user.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::PATCH,
            "/api/v2/users/{}".into(),
            patch("users"),
            g_user.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::DELETE,
            "/api/v2/users/{}".into(),
            None,
            g_user.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::GET,
            "/api/v2/service_accounts/{}".into(),
            None,
            g_svc.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::PATCH,
            "/api/v2/service_accounts/{}".into(),
            patch("service_accounts"),
            g_svc.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::DELETE,
            "/api/v2/service_accounts/{}".into(),
            None,
            g_svc.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::GET,
            "/api/v2/roles/{}".into(),
            None,
            g_role.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::PATCH,
            "/api/v2/roles/{}".into(),
            data("roles", serde_json::json!({"permissions": []})),
            g_role.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::DELETE,
            "/api/v2/roles/{}".into(),
            None,
            g_role.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::POST,
            "/api/v2/roles/{}/principals".into(),
            assign(&w.bob_id),
            g_role.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::DELETE,
            format!("/api/v2/roles/{{}}/principals/{}", w.bob_id),
            None,
            g_role.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::DELETE,
            format!("/api/v2/roles/{}/principals/{{}}", own_role.id),
            None,
            g_user.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::GET,
            "/api/v2/api_keys/{}".into(),
            None,
            g_key.clone(),
            missing_key.into(),
        ),
        (
            M::DELETE,
            "/api/v2/api_keys/{}".into(),
            None,
            g_key.clone(),
            missing_key.into(),
        ),
        (
            M::POST,
            "/api/v2/api_keys/{}/rotate".into(),
            None,
            g_key.clone(),
            missing_key.into(),
        ),
        (
            M::GET,
            "/api/v2/decisions/{}".into(),
            None,
            g_decision.clone(),
            pinpoint_core::request_id::format(pinpoint_store::now_ms() as u64, 7),
        ),
        (
            M::GET,
            "/api/v2/cloud_auth/aws/persona_mapping/{}".into(),
            None,
            g_persona.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::DELETE,
            "/api/v2/cloud_auth/aws/persona_mapping/{}".into(),
            None,
            g_persona.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::DELETE,
            "/api/v2/cloud_auth/aws/intake_mapping/{}".into(),
            None,
            g_intake.id.clone(),
            missing_uuid.into(),
        ),
        (
            M::DELETE,
            "/api/v2/cloud_auth/aws/accounts/{}".into(),
            None,
            "210987654321".into(),
            "111111111111".into(),
        ),
    ];
    // Every endpoint that takes an id is walked (a new one must be added here).
    let with_ids = pinpoint_gateway::api::ENDPOINTS
        .iter()
        .filter(|(_, p, _)| p.contains('{'))
        .count();
    assert_eq!(
        with_ids,
        cases.len() - 1,
        "every id-taking endpoint has a case (one has two ids)"
    );
    for (method, path, body, foreign, missing) in cases {
        let foreign_answer = answer(
            &w.gw,
            &w.alice_key,
            call(
                &w.gw,
                method.clone(),
                &path.replace("{}", &foreign),
                &w.alice_key,
                body.clone(),
            )
            .await,
        )
        .await;
        let missing_answer = answer(
            &w.gw,
            &w.alice_key,
            call(&w.gw, method.clone(), &path.replace("{}", &missing), &w.alice_key, body).await,
        )
        .await;
        assert_eq!(foreign_answer, missing_answer, "{method} {path}");
        // Refused, or (removing an assignment that does not exist) an idempotent 204.
        assert!(
            foreign_answer.0 >= 400 || foreign_answer.0 == 204,
            "{method} {path}: {foreign_answer:?}"
        );
    }
    // Ids in bodies too: a key for a foreign principal, a role given to one, a user in another org.
    let body_cases: Vec<(M, String, serde_json::Value, serde_json::Value)> = vec![
        (
            M::POST,
            "/api/v2/api_keys".into(),
            serde_json::json!({"data": {"type": "api_keys", "attributes": {"name": "x", "principal_id": g_user.id}}}),
            serde_json::json!({"data": {"type": "api_keys", "attributes": {"name": "x", "principal_id": missing_uuid}}}),
        ),
        (
            M::POST,
            format!("/api/v2/roles/{}/principals", own_role.id),
            serde_json::json!({"data": {"type": "principals", "id": g_user.id}}),
            serde_json::json!({"data": {"type": "principals", "id": missing_uuid}}),
        ),
        (
            M::POST,
            "/api/v2/users".into(),
            serde_json::json!({"data": {"type": "users", "attributes": {"name": "m", "org_id": w.globex.id}}}),
            serde_json::json!({"data": {"type": "users", "attributes": {"name": "m", "org_id": missing_uuid}}}),
        ),
    ];
    for (method, path, foreign, missing) in body_cases {
        let foreign_answer = answer(
            &w.gw,
            &w.alice_key,
            call(&w.gw, method.clone(), &path, &w.alice_key, Some(foreign)).await,
        )
        .await;
        let missing_answer = answer(
            &w.gw,
            &w.alice_key,
            call(&w.gw, method.clone(), &path, &w.alice_key, Some(missing)).await,
        )
        .await;
        assert_eq!(foreign_answer, missing_answer, "{method} {path}");
        assert!(foreign_answer.0 >= 400, "{method} {path}: {foreign_answer:?}");
    }
    // globex's resources are untouched.
    assert!(store.principal(&g_user.id).await.unwrap().is_some_and(|p| !p.suspended));
    assert!(store.role(&g_role.id).await.unwrap().is_some());
}

#[tokio::test]
async fn the_bootstrap_key_is_rotated_in_its_file_kept_from_lockout_and_recoverable() {
    use reqwest::Method as M;
    let gw = start(&echo_config()).await;
    let key_file = gw.config_path.parent().unwrap().join("data/bootstrap-admin.key");
    let id = pinpoint_core::keys::parse(&gw.admin_key).unwrap().id.to_owned();
    // The only platform administrator key: not revoked without force.
    let resp = call(&gw, M::DELETE, &format!("/api/v2/api_keys/{id}"), &gw.admin_key, None).await;
    let body = problem(resp, 409, "api.conflict").await;
    assert!(body["detail"].as_str().unwrap().contains("force"), "{body}");
    // Rotation moves the key file on to the successor.
    let resp = call(
        &gw,
        M::POST,
        &format!("/api/v2/api_keys/{id}/rotate"),
        &gw.admin_key,
        None,
    )
    .await;
    assert_eq!(resp.status(), 201);
    let created: serde_json::Value = resp.json().await.unwrap();
    let successor = created["data"]["attributes"]["key"].as_str().unwrap().to_owned();
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), successor);
    // With two admin keys, the old one may go; the last one only with force.
    let resp = call(&gw, M::DELETE, &format!("/api/v2/api_keys/{id}"), &successor, None).await;
    assert_eq!(resp.status(), 204);
    let successor_id = pinpoint_core::keys::parse(&successor).unwrap().id.to_owned();
    let resp = call(
        &gw,
        M::DELETE,
        &format!("/api/v2/api_keys/{successor_id}?force=true"),
        &successor,
        None,
    )
    .await;
    assert_eq!(resp.status(), 204);
    // Locked out: the host recovers a key from the data directory.
    let config_path = gw.config_path.clone();
    let (dir, store, _) = gw.stop_and_keep().await;
    store.close().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pinpoint"))
        .args(["admin", "recover", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recovered = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), recovered);
    let config = std::fs::read_to_string(&config_path).unwrap();
    // The store the config names (the embedded one, or PostgreSQL in that run of the suite).
    let parsed = pinpoint_core::config::Config::parse(&config, "test").unwrap();
    let store = pinpoint_store::Store::open_configured(&parsed.store, &dir.path().join("data"))
        .await
        .unwrap();
    let gw = start_in(dir, store, recovered.clone(), &config).await;
    let me = gw.api_json("/api/v2/current_user", Some(&recovered)).await;
    assert!(
        me["data"]["attributes"]["name"]
            .as_str()
            .unwrap()
            .contains("bootstrap-admin"),
        "{me}"
    );
}

/// POSTs a key with `attributes`, authenticated with `key`.
async fn post_key(gw: &TestGateway, key: &str, attributes: serde_json::Value) -> reqwest::Response {
    call(
        gw,
        reqwest::Method::POST,
        "/api/v2/api_keys",
        key,
        data("api_keys", attributes),
    )
    .await
}

/// The decision recorded for `request_id`, as the platform administrator reads it, once
/// it has been written.
async fn recorded_decision(gw: &TestGateway, request_id: &str) -> String {
    let url = format!("/api/v2/decisions/{request_id}");
    poll_until("the decision recorded", || async {
        call(gw, reqwest::Method::GET, &url, &gw.admin_key, None).await.status() == 200
    })
    .await;
    call(gw, reqwest::Method::GET, &url, &gw.admin_key, None)
        .await
        .text()
        .await
        .unwrap()
}

/// The secret of a key just issued (201).
async fn issued_secret(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 201);
    resp.json::<serde_json::Value>().await.unwrap()["data"]["attributes"]["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// One rule for every way to issue a credential (a key for oneself or another principal,
/// a rotated key's successor, a token) and for taking away a role an explicit deny names:
/// nobody ends up with a credential or an unblocked principal beyond what they hold.
#[tokio::test]
async fn no_credential_acts_beyond_its_issuer_and_denies_are_lifted_only_by_who_could_grant_it_all() {
    use pinpoint_core::identity::{KeyKind, PrincipalKind};
    use pinpoint_store::NewKey;
    use reqwest::Method as M;
    let (dir, store, admin_key) = fresh_store().await;
    let org = store.create_org("acme").await.unwrap();
    let role = |name: &'static str, permissions: &[&str]| {
        let (store, org) = (store.clone(), org.id.clone());
        let permissions: Vec<String> = permissions.iter().map(|p| p.to_string()).collect();
        async move { store.create_role(&org, name, &permissions).await.unwrap() }
    };
    let principal = |name: &'static str, roles: Vec<String>| {
        let (store, org) = (store.clone(), org.id.clone());
        async move {
            let p = store
                .create_principal(&org, PrincipalKind::ServiceAccount, name, None)
                .await
                .unwrap();
            for role in roles {
                store.assign_role(&p.id, &role).await.unwrap();
            }
            let key = store
                .create_key(NewKey {
                    name: "test".into(),
                    kind: KeyKind::Application,
                    org_id: org,
                    principal_id: Some(p.id.clone()),
                    scopes: None,
                    expires_at_ms: None,
                })
                .await
                .unwrap();
            (p.id, key.info.id, key.key)
        }
    };
    let boss_role = role(
        "boss",
        &["users:read", "keys:read", "keys:write", "tokens:create", "shop:write"],
    )
    .await;
    let keys_role = role("key-clerk", &["keys:read", "keys:write"]).await;
    let roles_role = role("role-clerk", &["roles:read", "roles:write"]).await;
    let shoppers = role("shoppers", &["shop:read", "shop:write"]).await;
    let frozen = role("frozen", &[]).await;
    let (boss, boss_key_id, boss_key) = principal("boss", vec![boss_role.id.clone()]).await;
    let (_, _, clerk_key) = principal("key-clerk", vec![keys_role.id.clone()]).await;
    let (_, _, role_clerk_key) = principal("role-clerk", vec![roles_role.id.clone()]).await;
    let (fred, _, fred_key) = principal("fred", vec![shoppers.id.clone(), frozen.id.clone()]).await;
    let config = "[server]\ndata_dir = \"DATA_DIR\"\n[upstreams.echo]\ntargets = [\"builtin:echo\"]\n\
        [[routes]]\nid = \"shop\"\npath_prefix = \"/shop\"\nupstream = \"echo\"\npermissions = { GET = \"shop:read\", POST = \"shop:write\" }\n\
        [[authz.deny]]\nid = \"frozen\"\nroles = [\"frozen\"]\nroutes = [\"shop\"]\n";
    let gw = start_in(dir, store, admin_key, config).await;

    // A key clerk cannot mint or rotate a key that acts as someone who holds more.
    let resp = post_key(
        &gw,
        &clerk_key,
        serde_json::json!({"name": "mine-now", "principal_id": boss}),
    )
    .await;
    let body = problem(resp, 403, "authz.permission_missing").await;
    assert!(!body.to_string().contains("pp_"), "{body}");
    let resp = call(
        &gw,
        M::POST,
        &format!("/api/v2/api_keys/{boss_key_id}/rotate"),
        &clerk_key,
        None,
    )
    .await;
    problem(resp, 403, "authz.permission_missing").await;
    // Not even scoped to what the clerk holds: a key speaks as its owner.
    let resp = post_key(
        &gw,
        &clerk_key,
        serde_json::json!({"name": "read-only", "principal_id": boss, "scopes": ["keys:read"]}),
    )
    .await;
    problem(resp, 403, "authz.permission_missing").await;
    // Its owner rotates its own key as before.
    let resp = call(
        &gw,
        M::POST,
        &format!("/api/v2/api_keys/{boss_key_id}/rotate"),
        &boss_key,
        None,
    )
    .await;
    let boss_key = issued_secret(resp).await;

    // A scoped key cannot issue a wider key or a token (tokens carry no scopes).
    for scopes in [serde_json::json!(["keys:write"]), serde_json::json!(["tokens:create"])] {
        let resp = post_key(&gw, &boss_key, serde_json::json!({"name": "narrow", "scopes": scopes})).await;
        let narrow = issued_secret(resp).await;
        let resp = post_key(&gw, &narrow, serde_json::json!({"name": "wide"})).await;
        assert_eq!(resp.status(), 403, "{scopes}");
        let resp = call(&gw, M::POST, "/api/v2/tokens", &narrow, None).await;
        assert_eq!(resp.status(), 403, "{scopes}");
    }
    // A credential sent where a name belongs (a key, or a token) is refused without being
    // repeated, to the caller or in the decision the operator reads.
    let key_id = pinpoint_core::keys::parse(&gw.admin_key).unwrap().id;
    let secret = &gw.admin_key["pp_".len() + key_id.len() + 1..];
    let resp = call(&gw, M::POST, "/api/v2/tokens", &gw.admin_key, None).await;
    let token = resp.json::<serde_json::Value>().await.unwrap()["data"]["attributes"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for (path, body) in [
        (
            "/api/v2/roles",
            data(
                "roles",
                serde_json::json!({"name": "echo", "permissions": [&gw.admin_key]}),
            ),
        ),
        (
            "/api/v2/api_keys",
            data(
                "api_keys",
                serde_json::json!({"name": "echo", "scopes": [&gw.admin_key]}),
            ),
        ),
        (
            "/api/v2/roles",
            data("roles", serde_json::json!({"name": "echo", "permissions": [&token]})),
        ),
    ] {
        let resp = call(&gw, M::POST, path, &gw.admin_key, body).await;
        let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let text = resp.text().await.unwrap();
        assert!(text.contains("api.credential_in_body"), "{path}: {text}");
        assert!(
            !text.contains(key_id) && !text.contains(&token),
            "{path} echoed it: {text}"
        );
        let decision = recorded_decision(&gw, &request_id).await;
        assert!(decision.contains("api.credential_in_body"), "{decision}");
        // (The decision names the key the admin authenticated with by its id, as always;
        // the secret part appears nowhere.)
        assert!(
            !decision.contains(secret) && !decision.contains(&token),
            "{path} recorded it: {decision}"
        );
    }
    // Nor when JSON escapes spell it: the check reads the strings the handler reads.
    let escaped = gw.admin_key.replace('_', "\\u005f");
    let resp = gw
        .http
        .post(gw.api_url("/api/v2/roles"))
        .bearer_auth(&gw.admin_key)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"data": {{"type": "roles", "attributes": {{"name": "{escaped}"}}}}}}"#
        ))
        .send()
        .await
        .unwrap();
    problem(resp, 400, "api.credential_in_body").await;
    // Nor hex-encoded.
    let hex = pinpoint_core::hex::lower(gw.admin_key.as_bytes());
    let resp = call(
        &gw,
        M::POST,
        "/api/v2/roles",
        &gw.admin_key,
        data("roles", serde_json::json!({"name": hex})),
    )
    .await;
    problem(resp, 400, "api.credential_in_body").await;
    // A field named twice is refused, not read one way (serde keeps the last; others the first).
    let resp = gw
        .http
        .post(gw.api_url("/api/v2/roles"))
        .bearer_auth(&gw.admin_key)
        .header("content-type", "application/json")
        .body(r#"{"data": {"type": "roles", "attributes": {"name": "a", "name": "b"}}}"#)
        .send()
        .await
        .unwrap();
    let body = problem(resp, 400, "api.bad_request").await;
    assert!(body["detail"].as_str().unwrap().contains("twice"), "{body}");
    for query in ["top=-5", "status=99999", "status=-1"] {
        let resp = call(
            &gw,
            M::GET,
            &format!("/api/v2/analytics/decisions?{query}"),
            &gw.admin_key,
            None,
        )
        .await;
        problem(resp, 400, "api.bad_request").await;
    }
    // A PATCH whose body names another resource changes nothing.
    let roles = call(&gw, M::GET, "/api/v2/roles", &gw.admin_key, None).await;
    let roles: serde_json::Value = roles.json().await.unwrap();
    let role_id = roles["data"][0]["id"].as_str().unwrap().to_owned();
    let body = serde_json::json!({"data": {"type": "roles", "id": "other", "attributes": {"permissions": []}}});
    let resp = call(
        &gw,
        M::PATCH,
        &format!("/api/v2/roles/{role_id}"),
        &gw.admin_key,
        Some(body),
    )
    .await;
    problem(resp, 409, "api.conflict").await;
    // Nor when it is sent where a number belongs.
    let resp = call(
        &gw,
        M::GET,
        &format!("/api/v2/decisions?limit={}", gw.admin_key),
        &gw.admin_key,
        None,
    )
    .await;
    assert_eq!(resp.status(), 400);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let text = resp.text().await.unwrap();
    assert!(!text.contains(key_id), "the query echoed the key: {text}");
    let decision = recorded_decision(&gw, &request_id).await;
    assert!(!decision.contains(secret), "the query's key recorded: {decision}");
    // Nor in the path, where an id belongs: refused first (a route that exists or not,
    // any method), and the path is recorded as withheld.
    for (method, path) in [
        (M::GET, format!("/api/v2/users/{}", gw.admin_key)),
        (M::DELETE, format!("/api/v2/roles/x/principals/{}", gw.admin_key)),
        (M::GET, format!("/api/v2/nothing/{}", gw.admin_key.replace('_', "%5F"))),
    ] {
        let resp = call(&gw, method, &path, &gw.admin_key, None).await;
        let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(resp.status(), 400, "{path}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("request.credential_in_url"), "{path}: {text}");
        assert!(!text.contains(secret), "{path} echoed it: {text}");
        let decision = recorded_decision(&gw, &request_id).await;
        assert!(
            !decision.contains(secret) && decision.contains("withheld"),
            "{path} recorded it: {decision}"
        );
    }
    // A client request id holding a credential is ignored: not echoed, not recorded.
    let resp = gw
        .http
        .get(gw.api_url("/api/v2/current_user"))
        .bearer_auth(&gw.admin_key)
        .header("x-request-id", &gw.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-client-request-id").is_none());
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let decision = recorded_decision(&gw, &request_id).await;
    assert!(!decision.contains(secret), "the request id's key recorded: {decision}");
    // A credential issues none that outlives it.
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 3600;
    let resp = post_key(&gw, &boss_key, serde_json::json!({"name": "short", "expires_at": soon})).await;
    let short = issued_secret(resp).await;
    let resp = post_key(&gw, &short, serde_json::json!({"name": "inherits"})).await;
    assert_eq!(resp.status(), 201);
    let inherited = resp.json::<serde_json::Value>().await.unwrap();
    assert_eq!(inherited["data"]["attributes"]["expires_at"], soon, "{inherited}");
    let resp = post_key(
        &gw,
        &short,
        serde_json::json!({"name": "longer", "expires_at": soon + 3600}),
    )
    .await;
    problem(resp, 400, "api.bad_request").await;
    // Nor through a rotation: the successor keeps the key's (lack of) expiry.
    let resp = call(
        &gw,
        M::POST,
        &format!(
            "/api/v2/api_keys/{}/rotate",
            pinpoint_core::keys::parse(&boss_key).unwrap().id
        ),
        &short,
        None,
    )
    .await;
    problem(resp, 400, "api.bad_request").await;
    // Unscoped, the boss gets a token as before.
    let resp = call(&gw, M::POST, "/api/v2/tokens", &boss_key, None).await;
    assert_eq!(resp.status(), 201);
    // A token's lifetime is cut to its issuer's, whatever it asks for, and a token
    // issued with that token is cut again: none outlives the key at the start.
    let minute = soon - 3600 + 60;
    let resp = post_key(
        &gw,
        &boss_key,
        serde_json::json!({"name": "minute", "expires_at": minute}),
    )
    .await;
    let mut issuer = issued_secret(resp).await;
    for hop in 0..2 {
        let resp = call(
            &gw,
            M::POST,
            "/api/v2/tokens",
            &issuer,
            data("tokens", serde_json::json!({"ttl_seconds": 86_400})),
        )
        .await;
        assert_eq!(resp.status(), 201, "hop {hop}");
        let token = resp.json::<serde_json::Value>().await.unwrap();
        let expires = token["data"]["attributes"]["expires"].as_i64().unwrap();
        assert!(expires <= minute, "hop {hop}: {expires} outlives {minute}");
        issuer = token["data"]["attributes"]["access_token"].as_str().unwrap().to_owned();
    }

    // A role clerk cannot lift the deny on fred by taking `frozen` away, nor by deleting it.
    let shop = |key: String| {
        let gw = &gw;
        async move { gw.http.post(gw.url("/shop/x")).bearer_auth(key).send().await.unwrap() }
    };
    problem(shop(fred_key.clone()).await, 403, "authz.explicit_deny").await;
    let resp = call(
        &gw,
        M::DELETE,
        &format!("/api/v2/roles/{}/principals/{fred}", frozen.id),
        &role_clerk_key,
        None,
    )
    .await;
    problem(resp, 403, "authz.permission_missing").await;
    let resp = call(
        &gw,
        M::DELETE,
        &format!("/api/v2/roles/{}", frozen.id),
        &role_clerk_key,
        None,
    )
    .await;
    problem(resp, 403, "authz.permission_missing").await;
    problem(shop(fred_key.clone()).await, 403, "authz.explicit_deny").await;
    // Nor can fred, whom the deny names: not by an organization key (no principal, no
    // roles), not by a key for someone else, not by taking the role from himself.
    let resp = call(
        &gw,
        M::POST,
        "/api/v2/roles",
        &gw.admin_key,
        data(
            "roles",
            serde_json::json!({"name": "fred-admin", "permissions": ["keys:write", "keys:read", "roles:write", "roles:read"], "org_id": org.id}),
        ),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let fred_admin = resp.json::<serde_json::Value>().await.unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = call(
        &gw,
        M::POST,
        &format!("/api/v2/roles/{fred_admin}/principals"),
        &gw.admin_key,
        Some(serde_json::json!({"data": {"type": "principals", "id": fred}})),
    )
    .await;
    assert_eq!(resp.status(), 204);
    let resp = post_key(
        &gw,
        &fred_key,
        serde_json::json!({"name": "side", "kind": "api", "scopes": ["shop:write"]}),
    )
    .await;
    problem(resp, 403, "authz.permission_missing").await;
    let resp = call(
        &gw,
        M::DELETE,
        &format!("/api/v2/roles/{}/principals/{fred}", frozen.id),
        &fred_key,
        None,
    )
    .await;
    problem(resp, 403, "authz.permission_missing").await;
    // Nor hand what he holds to someone the deny does not name.
    let resp = call(
        &gw,
        M::POST,
        "/api/v2/roles",
        &fred_key,
        data(
            "roles",
            serde_json::json!({"name": "accomplice", "permissions": ["keys:read"]}),
        ),
    )
    .await;
    problem(resp, 403, "authz.permission_missing").await;
    let resp = call(
        &gw,
        M::POST,
        &format!("/api/v2/roles/{}/principals", keys_role.id),
        &fred_key,
        Some(serde_json::json!({"data": {"type": "principals", "id": boss}})),
    )
    .await;
    problem(resp, 403, "authz.permission_missing").await;
    problem(shop(fred_key.clone()).await, 403, "authz.explicit_deny").await;
    // Nor can the role clerk lower the boss (who holds more) to what it holds, to act for
    // him after: not by stripping his role, unassigning it or deleting it.
    let boss_role_path = format!("/api/v2/roles/{}", boss_role.id);
    let strip = data("roles", serde_json::json!({"permissions": ["roles:read"]}));
    let resp = call(&gw, M::PATCH, &boss_role_path, &role_clerk_key, strip).await;
    problem(resp, 403, "authz.permission_missing").await;
    for path in [format!("{boss_role_path}/principals/{boss}"), boss_role_path.clone()] {
        let resp = call(&gw, M::DELETE, &path, &role_clerk_key, None).await;
        problem(resp, 403, "authz.permission_missing").await;
    }
    let resp = call(&gw, M::GET, &boss_role_path, &gw.admin_key, None).await;
    let role: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        role["data"]["attributes"]["permissions"].as_array().unwrap().len(),
        5,
        "{role}"
    );
    // Nor lock him out: the key clerk cannot revoke his key.
    let boss_key_now = pinpoint_core::keys::parse(&boss_key).unwrap().id.to_owned();
    let resp = call(
        &gw,
        M::DELETE,
        &format!("/api/v2/api_keys/{boss_key_now}"),
        &clerk_key,
        None,
    )
    .await;
    problem(resp, 403, "authz.permission_missing").await;
    // Who holds it all takes it away as before.
    let resp = call(
        &gw,
        M::DELETE,
        &format!("/api/v2/roles/{}/principals/{boss}", boss_role.id),
        &gw.admin_key,
        None,
    )
    .await;
    assert_eq!(resp.status(), 204);
    // The platform administrator, who holds everything, may lift it.
    let resp = call(
        &gw,
        M::DELETE,
        &format!("/api/v2/roles/{}/principals/{fred}", frozen.id),
        &gw.admin_key,
        None,
    )
    .await;
    assert_eq!(resp.status(), 204);
    poll_until("fred's deny is lifted", || {
        let key = fred_key.clone();
        let shop = &shop;
        async move { shop(key).await.status() == 200 }
    })
    .await;

    // The API decides on the path it serves: another spelling of a path is refused.
    let role_path = format!("/api/v2/roles/{}", frozen.id);
    let encoded = format!("/api/v2/roles/%{:02X}{}", frozen.id.as_bytes()[0], &frozen.id[1..]);
    // (The client library resolves `./` itself; the proxy's tests send those raw.)
    for path in [encoded, format!("/api/v2//roles/{}", frozen.id)] {
        let resp = call(&gw, M::GET, &path, &gw.admin_key, None).await;
        problem(resp, 400, "api.path_not_canonical").await;
    }
    let resp = call(&gw, M::GET, &role_path, &gw.admin_key, None).await;
    assert_eq!(resp.status(), 200);
}

/// A deny that names an organization alone covers every credential issued in it, so a
/// platform administrator it names hands out nothing in another organization (where the
/// deny would not follow), and stays free to issue in its own.
#[tokio::test]
async fn a_deny_on_an_administrators_organization_follows_what_it_hands_out() {
    use reqwest::Method as M;
    let (dir, store, admin_key) = fresh_store().await;
    let admin_key_id = pinpoint_core::keys::parse(&admin_key).unwrap().id.to_owned();
    let home = store.stored_key(&admin_key_id).await.unwrap().unwrap().info.org_id;
    let other = store.create_org("elsewhere").await.unwrap();
    let config = format!(
        "[server]\ndata_dir = \"DATA_DIR\"\n[upstreams.echo]\ntargets = [\"builtin:echo\"]\n\
         [[routes]]\nid = \"shop\"\npath_prefix = \"/shop\"\nupstream = \"echo\"\npermissions = {{ GET = \"shop:read\" }}\n\
         [[authz.deny]]\nid = \"home-frozen\"\norgs = [\"{home}\"]\nroutes = [\"shop\"]\n"
    );
    let gw = start_in(dir, store, admin_key, &config).await;
    let admin = gw.admin_key.clone();
    let resp = gw.http.get(gw.url("/shop/x")).bearer_auth(&admin).send().await.unwrap();
    problem(resp, 403, "authz.explicit_deny").await;
    async fn refused_elsewhere(resp: reqwest::Response, elsewhere: bool) {
        match elsewhere {
            true => drop(problem(resp, 403, "authz.permission_missing").await),
            false => assert_eq!(resp.status(), 201),
        }
    }
    for (org, elsewhere) in [(&other.id, true), (&home, false)] {
        let resp = post_key(
            &gw,
            &admin,
            serde_json::json!({"name": "org", "kind": "api", "org_id": org}),
        )
        .await;
        refused_elsewhere(resp, elsewhere).await;
        let role = data(
            "roles",
            serde_json::json!({"name": "shoppers", "permissions": ["shop:read"], "org_id": org}),
        );
        let resp = call(&gw, M::POST, "/api/v2/roles", &admin, role).await;
        refused_elsewhere(resp, elsewhere).await;
        let user = data(
            "users",
            serde_json::json!({"name": "u", "email": format!("u@{org}.example"), "org_id": org}),
        );
        let resp = call(&gw, M::POST, "/api/v2/users", &admin, user).await;
        assert_eq!(resp.status(), 201, "creating a user grants nothing");
        let user_id = resp.json::<serde_json::Value>().await.unwrap()["data"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let resp = post_key(
            &gw,
            &admin,
            serde_json::json!({"name": "theirs", "principal_id": user_id}),
        )
        .await;
        refused_elsewhere(resp, elsewhere).await;
    }
    // Suspending another organization takes power away: allowed. Lifting it hands it
    // back, outside the deny: refused.
    let org_path = format!("/api/v2/orgs/{}", other.id);
    let suspend = |on: bool| data("orgs", serde_json::json!({"suspended": on}));
    let resp = call(&gw, M::PATCH, &org_path, &admin, suspend(true)).await;
    assert_eq!(resp.status(), 200);
    let resp = call(&gw, M::PATCH, &org_path, &admin, suspend(false)).await;
    problem(resp, 403, "authz.permission_missing").await;
}

/// A token lives only as long as the key it was issued under: revoking the key ends the
/// token, and a token that token issued, on the API and on the proxy.
#[tokio::test]
async fn revoking_a_key_ends_the_tokens_issued_under_it() {
    use reqwest::Method as M;
    let private = "\n[[routes]]\nid = \"private\"\npath_prefix = \"/private\"\nupstream = \"main\"\npermissions = { GET = \"orders:read\" }\n";
    let gw = start(&config_with("\"builtin:echo\"", "", private)).await;
    let key = issued_secret(post_key(&gw, &gw.admin_key, serde_json::json!({"name": "issuer"})).await).await;
    let key_id = pinpoint_core::keys::parse(&key).unwrap().id.to_owned();
    let token_with = |credential: String| {
        let gw = &gw;
        async move {
            let resp = call(gw, M::POST, "/api/v2/tokens", &credential, None).await;
            assert_eq!(resp.status(), 201);
            resp.json::<serde_json::Value>().await.unwrap()["data"]["attributes"]["access_token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let token = token_with(key.clone()).await;
    let second = token_with(token.clone()).await;
    let by_admin = token_with(gw.admin_key.clone()).await;
    for t in [&token, &second, &by_admin] {
        assert_eq!(call(&gw, M::GET, "/api/v2/current_user", t, None).await.status(), 200);
    }
    let resp = call(
        &gw,
        M::DELETE,
        &format!("/api/v2/api_keys/{key_id}"),
        &gw.admin_key,
        None,
    )
    .await;
    assert_eq!(resp.status(), 204);
    for t in [&token, &second] {
        let resp = call(&gw, M::GET, "/api/v2/current_user", t, None).await;
        problem(resp, 401, "authn.token_invalid").await;
        let resp = gw.http.get(gw.url("/private/1")).bearer_auth(t).send().await.unwrap();
        problem(resp, 401, "authn.token_invalid").await;
    }
    // A token under another key is untouched.
    assert_eq!(
        call(&gw, M::GET, "/api/v2/current_user", &by_admin, None)
            .await
            .status(),
        200
    );
    // Revoking a rotated key's successor ends the predecessor still in its overlap too.
    let old = issued_secret(post_key(&gw, &gw.admin_key, serde_json::json!({"name": "rotating"})).await).await;
    let old_id = pinpoint_core::keys::parse(&old).unwrap().id.to_owned();
    let resp = call(
        &gw,
        M::POST,
        &format!("/api/v2/api_keys/{old_id}/rotate"),
        &gw.admin_key,
        None,
    )
    .await;
    let new = issued_secret(resp).await;
    let new_id = pinpoint_core::keys::parse(&new).unwrap().id.to_owned();
    assert_eq!(
        call(&gw, M::GET, "/api/v2/current_user", &old, None).await.status(),
        200
    );
    let resp = call(
        &gw,
        M::DELETE,
        &format!("/api/v2/api_keys/{new_id}"),
        &gw.admin_key,
        None,
    )
    .await;
    assert_eq!(resp.status(), 204);
    for key in [&old, &new] {
        let resp = call(&gw, M::GET, "/api/v2/current_user", key, None).await;
        problem(resp, 401, "authn.key_revoked").await;
    }
}
