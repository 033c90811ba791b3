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
    let body = problem(resp, 403, "authz.tenant_mismatch").await;
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
