//! Cloud-based authentication against real peers: moto_server as STS (verifying SigV4),
//! botocore as an independent signer, and Datadog's own Python client.

use std::process::{Child, Command, Stdio};

use pinpoint_core::identity::PrincipalKind;

use crate::access::world;
use crate::*;

const ACCOUNT: &str = "123456789012";
const PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/py");

/// A moto_server child, killed by pid when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn moto() -> (Moto, String) {
    let port = dead_addr().await.port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        // Setup calls pass unauthenticated; moto_setup.py then turns verification on.
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "1000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server is installed (pip install 'moto[server]')");
    let moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    poll_until("moto_server ready", || async {
        http.get(format!("{}/moto-api/", moto.url)).send().await.is_ok()
    })
    .await;
    let out = python(&["moto_setup.py", &moto.url]).await;
    (moto, out)
}

async fn python(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        let mut argv = args.clone();
        argv[0] = format!("{PY}/{}", args[0]);
        Command::new("python3")
            .args(&argv)
            .env("NO_PROXY", "*")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Signs a proof. SigV4 signatures are deterministic per second, so two proofs for the same
/// identity signed within one second are the same proof (and the second is a replay): this
/// re-signs until the proof differs from every one this process signed before.
async fn proof(creds: &str, who: &str, org: &str, region: &str, header: &str) -> String {
    static SIGNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let fresh = python(&["sign_proof.py", creds, who, org, region, header]).await;
        let mut signed = SIGNED.lock().unwrap();
        if !signed.contains(&fresh) {
            signed.push(fresh.clone());
            return fresh;
        }
        assert!(tokio::time::Instant::now() < deadline, "could not sign a fresh proof");
    }
}

/// moto credentials (`user` or `role`) as the Rust client takes them.
fn credentials_of(creds: &str, who: &str) -> pinpoint_client::Credentials {
    let parsed: serde_json::Value = serde_json::from_str(creds).unwrap();
    let c = &parsed[who];
    pinpoint_client::Credentials::new(
        c["key"].as_str().unwrap(),
        c["secret"].as_str().unwrap(),
        c["token"].as_str().map(str::to_owned),
        None,
        "test",
    )
}

/// Registers the test account for acme and maps moto's `dd-role` sessions to bob.
async fn role_logs_in_as_bob(w: &crate::access::World) {
    w.gw.store.register_aws_account(&w.acme.id, ACCOUNT).await.unwrap();
    w.gw.store
        .create_mapping(
            &w.acme.id,
            "persona",
            "arn:aws:sts::123456789012:assumed-role/dd-role/*",
            Some(&w.bob_id),
        )
        .await
        .unwrap();
}

async fn exchange(gw: &TestGateway, proof: &str) -> reqwest::Response {
    gw.http
        .post(gw.api_url("/api/v2/delegated-token"))
        .header("authorization", proof)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn exchange_against_moto_with_botocore_proofs() {
    let (moto, creds) = moto().await;
    let w = world(&format!("\n[cloudauth]\nsts_endpoint = \"{}\"\n", moto.url)).await;
    role_logs_in_as_bob(&w).await;

    // A role session logs in as bob, and the token works like bob's key.
    let good = proof(&creds, "role", &w.acme.id, "", "x-ddog-org-id").await;
    let resp = exchange(&w.gw, &good).await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let token = body["data"]["attributes"]["access_token"].as_str().unwrap().to_owned();
    let expires = body["data"]["attributes"]["expires"].as_i64().unwrap();
    let now = pinpoint_store::now_ms() / 1000;
    assert!(expires > now && expires <= now + 900, "short-lived: {expires}");
    let me = w.gw.api_json("/api/v2/current_user", Some(&token)).await;
    assert_eq!(me["data"]["id"], w.bob_id.as_str());
    assert_eq!(w.get("/orders", &token).await.status(), 200);

    // The same proof works once.
    let body = problem(exchange(&w.gw, &good).await, 401, "cloudauth.proof_replayed").await;
    assert!(!body.to_string().contains(&good[10..40]), "the proof is never echoed");

    // A tampered proof is refused by STS itself.
    let fresh = proof(&creds, "role", &w.acme.id, "", "x-ddog-org-id").await;
    let tampered = tamper_signature(&fresh);
    let body = problem(exchange(&w.gw, &tampered).await, 401, "cloudauth.signature_rejected").await;
    let d = w.gw.decision(body["request_id"].as_str().unwrap()).await;
    assert!(d
        .deciding_layer()
        .unwrap()
        .note
        .as_deref()
        .unwrap()
        .contains("STS error"));

    // Pinpoint's own org header name, and a regional endpoint, work too.
    let regional = proof(&creds, "role", &w.acme.id, "eu-west-1", "x-pinpoint-org-id").await;
    assert_eq!(exchange(&w.gw, &regional).await.status(), 200);

    // No mapping for the IAM user: the caller learns its ARN and the pattern that would match.
    let user = proof(&creds, "user", &w.acme.id, "", "x-ddog-org-id").await;
    let body = problem(exchange(&w.gw, &user).await, 403, "cloudauth.no_mapping").await;
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("arn:aws:iam::123456789012:user/alice"), "{detail}");

    // An organization without the account registered.
    let other = proof(&creds, "role", &w.globex.id, "", "x-ddog-org-id").await;
    problem(exchange(&w.gw, &other).await, 403, "cloudauth.account_not_registered").await;
    // An org id that names no organization.
    let nobody = proof(
        &creds,
        "role",
        "00000000-0000-4000-8000-000000000000",
        "",
        "x-ddog-org-id",
    )
    .await;
    problem(exchange(&w.gw, &nobody).await, 403, "cloudauth.org_mismatch").await;
    // A host outside the rules.
    let evil = proof(&creds, "role", &w.acme.id, "evil", "x-ddog-org-id").await;
    problem(exchange(&w.gw, &evil).await, 403, "cloudauth.sts_host_not_allowed").await;
    problem(
        exchange(&w.gw, "Delegated nonsense").await,
        400,
        "cloudauth.proof_malformed",
    )
    .await;

    // The mapped principal's state is re-checked on every exchange.
    w.gw.store.set_principal_suspended(&w.bob_id, true).await.unwrap();
    w.gw.services_refresh_principal(&w.bob_id).await;
    let again = proof(&creds, "role", &w.acme.id, "", "x-ddog-org-id").await;
    problem(exchange(&w.gw, &again).await, 403, "cloudauth.principal_suspended").await;
}

fn tamper_signature(proof: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let rest = proof.strip_prefix("Delegated ").unwrap();
    let mut parts: Vec<String> = rest.split('|').map(str::to_owned).collect();
    let headers = String::from_utf8(b64.decode(&parts[1]).unwrap()).unwrap();
    let at = headers.find("Signature=").unwrap() + "Signature=".len();
    let mut bytes = headers.into_bytes();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    parts[1] = b64.encode(bytes);
    format!("Delegated {}", parts.join("|"))
}

#[tokio::test]
async fn sts_trouble_is_429_or_503_never_403() {
    let (_moto, creds) = moto().await;
    let throttling = raw_upstream(
        b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        std::time::Duration::ZERO,
    )
    .await;
    let w = world(&format!(
        "\n[cloudauth]\nsts_endpoint = \"http://{throttling}\"\nsts_retries = 1\n"
    ))
    .await;
    w.gw.store.register_aws_account(&w.acme.id, ACCOUNT).await.unwrap();
    let p = proof(&creds, "role", &w.acme.id, "", "x-ddog-org-id").await;
    let resp = exchange(&w.gw, &p).await;
    assert!(resp.headers().contains_key("retry-after"));
    problem(resp, 429, "cloudauth.sts_throttled").await;

    let dead = dead_addr().await;
    let text = std::fs::read_to_string(&w.gw.config_path)
        .unwrap()
        .replace(&throttling.to_string(), &dead.to_string());
    let before = w.gw.revision().await;
    std::fs::write(&w.gw.config_path, text).unwrap();
    poll_until("reload", || async { w.gw.revision().await != before }).await;
    let p = proof(&creds, "role", &w.acme.id, "", "x-ddog-org-id").await;
    problem(exchange(&w.gw, &p).await, 503, "cloudauth.sts_unavailable").await;
}

#[tokio::test]
async fn datadogs_python_client_works_unchanged() {
    let (moto, creds) = moto().await;
    let w = world(&format!("\n[cloudauth]\nsts_endpoint = \"{}\"\n", moto.url)).await;
    let store = &w.gw.store;
    store.register_aws_account(&w.acme.id, ACCOUNT).await.unwrap();
    let ops = store
        .create_principal(
            &w.acme.id,
            PrincipalKind::ServiceAccount,
            "ops",
            Some("ops@acme.example"),
        )
        .await
        .unwrap();
    let role = store
        .create_role(
            &w.acme.id,
            "cloud-admin",
            &["cloud_auth_config_read".into(), "cloud_auth_config_write".into()],
        )
        .await
        .unwrap();
    store.assign_role(&ops.id, &role.id).await.unwrap();
    store
        .create_mapping(
            &w.acme.id,
            "persona",
            "arn:aws:sts::123456789012:assumed-role/dd-role/*",
            Some(&ops.id),
        )
        .await
        .unwrap();
    w.gw.services_refresh_principal(&ops.id).await;

    let out = python(&[
        "datadog_client.py",
        &format!("http://{}", w.gw.api),
        &w.acme.id,
        &creds,
        "ops@acme.example",
        "arn:aws:iam::123456789012:user/alice",
    ])
    .await;
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["me"], ops.id.as_str());
    assert!(summary["listed"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "arn:aws:iam::123456789012:user/alice"));
    assert_eq!(summary["fetched"], "arn:aws:iam::123456789012:user/alice");
    assert!(!summary["after"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "arn:aws:iam::123456789012:user/alice"));
}

#[tokio::test]
async fn managed_intake_keys_and_mapping_rules() {
    let (moto, creds) = moto().await;
    let extra = format!(
        "\n[cloudauth]\nsts_endpoint = \"{}\"\n\n[[routes]]\nid = \"intake\"\npath_prefix = \"/intake\"\nupstream = \"main\"\npermissions = {{ \"*\" = \"intake:write\" }}\n",
        moto.url
    );
    let w = world(&extra).await;
    let store = &w.gw.store;
    store.register_aws_account(&w.acme.id, ACCOUNT).await.unwrap();
    let ops = store
        .create_principal(&w.acme.id, PrincipalKind::ServiceAccount, "ops", None)
        .await
        .unwrap();
    let role = store
        .create_role(
            &w.acme.id,
            "cloud-admin",
            &["cloud_auth_config_read".into(), "cloud_auth_config_write".into()],
        )
        .await
        .unwrap();
    store.assign_role(&ops.id, &role.id).await.unwrap();
    w.gw.services_refresh_principal(&ops.id).await;
    let resp = w
        .gw
        .http
        .post(w.gw.api_url("/api/v2/api_keys"))
        .bearer_auth(&w.gw.admin_key)
        .json(&serde_json::json!({"data": {"type": "api_keys", "attributes": {"name": "ops", "principal_id": ops.id}}}))
        .send()
        .await
        .unwrap();
    let ops_key = resp.json::<serde_json::Value>().await.unwrap()["data"]["attributes"]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let create = |pattern: &str| {
        w.gw.http
            .post(w.gw.api_url("/api/v2/cloud_auth/aws/intake_mapping"))
            .bearer_auth(&ops_key)
            .json(&serde_json::json!({"data": {"type": "aws_cloud_auth_intake_mapping", "attributes": {"arn_pattern": pattern}}}))
            .send()
    };
    // Privilege escalation through an intake mapping: it hands out intake:write keys, so
    // ops, holding cloud_auth_config_write but not intake:write, cannot create one.
    let body = problem(
        create("arn:aws:sts::123456789012:assumed-role/dd-role/*")
            .await
            .unwrap(),
        403,
        "authz.permission_missing",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("intake:write"), "{body}");
    assert!(store.mappings(&w.acme.id, "intake").await.unwrap().is_empty());
    let intake_writer = store
        .create_role(&w.acme.id, "intake-writer", &["intake:write".into()])
        .await
        .unwrap();
    store.assign_role(&ops.id, &intake_writer.id).await.unwrap();
    w.gw.services_refresh_principal(&ops.id).await;
    let body = problem(
        create("arn:aws:iam::123456789012:role/dd-role").await.unwrap(),
        400,
        "api.bad_request",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("arn:aws:sts::123456789012:assumed-role/dd-role/*"),
        "{body}"
    );
    problem(
        create("arn:aws:sts::123456789012:assumed-role/dd*/x").await.unwrap(),
        400,
        "api.bad_request",
    )
    .await;
    problem(
        create("arn:aws:sts::999999999999:assumed-role/dd-role/*")
            .await
            .unwrap(),
        400,
        "api.bad_request",
    )
    .await;
    let resp = create("arn:aws:sts::123456789012:assumed-role/dd-role/*")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mapping_id = resp.json::<serde_json::Value>().await.unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    problem(
        create("arn:aws:sts::123456789012:assumed-role/dd-role/sess1")
            .await
            .unwrap(),
        409,
        "api.conflict",
    )
    .await;
    // Mapping an identity to a principal is acting as it: ops may not map to bob, who holds
    // orders:read, which ops does not.
    let resp =
        w.gw.http
            .post(w.gw.api_url("/api/v2/cloud_auth/aws/persona_mapping"))
            .bearer_auth(&ops_key)
            .json(
                &serde_json::json!({"data": {"type": "aws_cloud_auth_config", "attributes": {
            "account_identifier": w.bob_id, "arn_pattern": "arn:aws:iam::123456789012:user/alice"}}}),
            )
            .send()
            .await
            .unwrap();
    let body = problem(resp, 403, "authz.permission_missing").await;
    assert!(body["detail"].as_str().unwrap().contains("orders:read"));

    let intake = |proof: String| {
        w.gw.http
            .post(w.gw.api_url("/api/v2/intake-key"))
            .header("authorization", proof)
            .send()
    };
    let first = intake(proof(&creds, "role", &w.acme.id, "", "x-ddog-org-id").await)
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let first: serde_json::Value = first.json().await.unwrap();
    let api_key = first["data"]["attributes"]["api_key"].as_str().unwrap().to_owned();
    let second: serde_json::Value = intake(proof(&creds, "role", &w.acme.id, "", "x-ddog-org-id").await)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        second["data"]["attributes"]["api_key"],
        api_key.as_str(),
        "the current key, again"
    );
    let send = |key: &str| {
        w.gw.http
            .post(w.gw.url("/intake/logs"))
            .header("dd-api-key", key)
            .body("{}")
            .send()
    };
    assert_eq!(send(&api_key).await.unwrap().status(), 200);

    // Revoking the mapping revokes its keys.
    let resp =
        w.gw.http
            .delete(w.gw.api_url(&format!("/api/v2/cloud_auth/aws/intake_mapping/{mapping_id}")))
            .bearer_auth(&ops_key)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 204);
    problem(send(&api_key).await.unwrap(), 401, "authn.key_revoked").await;

    // Removing the AWS account removes its mappings and revokes the keys issued through them.
    let resp = create("arn:aws:sts::123456789012:assumed-role/dd-role/*")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let again: serde_json::Value = intake(proof(&creds, "role", &w.acme.id, "", "x-ddog-org-id").await)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_key = again["data"]["attributes"]["api_key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, api_key, "a new mapping derives a new key");
    assert_eq!(send(&new_key).await.unwrap().status(), 200);

    // An administrator revokes that key: the exchange will not hand it out again, and says
    // so (not "no mapping": the mapping is there).
    w.gw.revoke_key(&new_key).await;
    let refused = intake(proof(&creds, "role", &w.acme.id, "", "x-ddog-org-id").await)
        .await
        .unwrap();
    let body = problem(refused, 403, "cloudauth.intake_key_revoked").await;
    assert!(!body.to_string().contains(&new_key), "{body}");
    assert_eq!(send(&new_key).await.unwrap().status(), 401);
    let resp =
        w.gw.http
            .delete(w.gw.api_url(&format!("/api/v2/cloud_auth/aws/accounts/{ACCOUNT}")))
            .bearer_auth(&ops_key)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 204);
    problem(send(&new_key).await.unwrap(), 401, "authn.key_revoked").await;
    let left =
        w.gw.api_json("/api/v2/cloud_auth/aws/intake_mapping", Some(&ops_key))
            .await;
    assert_eq!(left["data"].as_array().map(Vec::len), Some(0), "{left}");
}

#[tokio::test]
async fn pinpoints_own_client_signs_with_aws_sigv4() {
    let (moto, creds) = moto().await;
    let extra = format!("\n[cloudauth]\nsts_endpoint = \"{}\"\n", moto.url);
    let w = world(&extra).await;
    let store = &w.gw.store;
    store.register_aws_account(&w.acme.id, ACCOUNT).await.unwrap();
    store
        .create_mapping(
            &w.acme.id,
            "persona",
            "arn:aws:iam::123456789012:user/alice",
            Some(&w.bob_id),
        )
        .await
        .unwrap();
    store
        .create_mapping(
            &w.acme.id,
            "intake",
            "arn:aws:sts::123456789012:assumed-role/dd-role/*",
            None,
        )
        .await
        .unwrap();
    let credentials = |who: &str| credentials_of(&creds, who);
    let api = format!("http://{}", w.gw.api);
    // Long-term IAM user keys (no session token), global endpoint.
    let exchanger = pinpoint_client::Exchanger::new(&api, &w.acme.id, None).unwrap();
    let token = exchanger.delegated_token(&credentials("user")).await.unwrap();
    assert_eq!(w.get("/orders", &token.access_token).await.status(), 200);
    // Role session credentials, regional endpoint, intake key.
    let regional = pinpoint_client::Exchanger::new(&api, &w.acme.id, Some("eu-west-1")).unwrap();
    let key = regional.intake_key(&credentials("role")).await.unwrap();
    assert!(key.api_key.starts_with("pp_") && key.rotates_at < key.expires);
    // A refusal comes back as a typed error with the reason code.
    let other = pinpoint_client::Exchanger::new(&api, &w.globex.id, None).unwrap();
    let err = other.delegated_token(&credentials("user")).await.unwrap_err();
    assert!(
        matches!(&err, pinpoint_client::ClientError::Refused { status: 403, reason, .. } if reason == "cloudauth.account_not_registered"),
        "{err}"
    );
}

#[tokio::test]
async fn login_aws_uses_the_standard_credential_chain() {
    let (moto, creds) = moto().await;
    let w = world(&format!("\n[cloudauth]\nsts_endpoint = \"{}\"\n", moto.url)).await;
    role_logs_in_as_bob(&w).await;
    let parsed: serde_json::Value = serde_json::from_str(&creds).unwrap();
    let role = parsed["role"].clone();
    let (server, org) = (format!("http://{}", w.gw.api), w.acme.id.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pinpoint"))
            .args(["login", "aws", "--org", &org, "--server", &server, "--json"])
            // The environment provider of the standard chain; nothing else is consulted.
            .env("AWS_ACCESS_KEY_ID", role["key"].as_str().unwrap())
            .env("AWS_SECRET_ACCESS_KEY", role["secret"].as_str().unwrap())
            .env("AWS_SESSION_TOKEN", role["token"].as_str().unwrap())
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("NO_PROXY", "*")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = v["access_token"].as_str().unwrap();
    assert!(v["expires"].as_i64().unwrap() > pinpoint_store::now_ms() / 1000);
    assert_eq!(w.get("/orders", token).await.status(), 200);
}

#[tokio::test]
async fn agents_sharing_one_role_all_get_keys_and_the_key_file_is_written_safely() {
    let (moto, creds) = moto().await;
    let extra = format!(
        "\n[cloudauth]\nsts_endpoint = \"{}\"\n\n[[routes]]\nid = \"intake\"\npath_prefix = \"/intake\"\nupstream = \"main\"\npermissions = {{ \"*\" = \"intake:write\" }}\n",
        moto.url
    );
    let w = world(&extra).await;
    w.gw.store.register_aws_account(&w.acme.id, ACCOUNT).await.unwrap();
    w.gw.store
        .create_mapping(
            &w.acme.id,
            "intake",
            "arn:aws:sts::123456789012:assumed-role/dd-role/*",
            None,
        )
        .await
        .unwrap();
    // Three agents on one instance profile exchange at the same moment: identical proofs
    // within a second collide, and each is signed again after a short random delay.
    let exchanger = pinpoint_client::Exchanger::new(&format!("http://{}", w.gw.api), &w.acme.id, None).unwrap();
    let role = credentials_of(&creds, "role");
    let (a, b, c) = tokio::join!(
        exchanger.intake_key(&role),
        exchanger.intake_key(&role),
        exchanger.intake_key(&role)
    );
    for key in [a, b, c] {
        assert!(key.unwrap().api_key.starts_with("pp_"));
    }
    // `agent-key --once --out` writes the file (mode 0600), replacing what was there.
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("api-key");
    std::fs::write(&out_path, "old").unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&creds).unwrap();
    let role = parsed["role"].clone();
    let (server, org, path) = (format!("http://{}", w.gw.api), w.acme.id.clone(), out_path.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pinpoint"))
            .args(["agent-key", "--org", &org, "--server", &server, "--once", "--out"])
            .arg(&path)
            .env("AWS_ACCESS_KEY_ID", role["key"].as_str().unwrap())
            .env("AWS_SECRET_ACCESS_KEY", role["secret"].as_str().unwrap())
            .env("AWS_SESSION_TOKEN", role["token"].as_str().unwrap())
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("NO_PROXY", "*")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("pp_"),
        "the key goes to the file, not stdout"
    );
    let key = std::fs::read_to_string(&out_path).unwrap();
    assert!(key.trim().starts_with("pp_"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temp file left behind"
    );
    assert_eq!(w.get("/intake/x", key.trim()).await.status(), 200);
}

#[tokio::test]
async fn a_recreated_role_does_not_inherit_the_mapping_and_exchanges_are_rate_limited() {
    let (moto, creds) = moto().await;
    let w = world(&format!(
        "\n[cloudauth]\nsts_endpoint = \"{}\"\nexchanges_per_minute_per_ip = 6\n",
        moto.url
    ))
    .await;
    role_logs_in_as_bob(&w).await;
    // First use binds the mapping to the role's unique id (AROA...).
    let first = proof(&creds, "role", &w.acme.id, "", "x-ddog-org-id").await;
    assert_eq!(exchange(&w.gw, &first).await.status(), 200);
    // The role is deleted and recreated under the same name: a new unique id.
    let recreated = python(&["moto_recreate_role.py", &moto.url]).await;
    let p = proof(&recreated, "role", &w.acme.id, "", "x-ddog-org-id").await;
    let body = problem(exchange(&w.gw, &p).await, 403, "cloudauth.no_mapping").await;
    let d = w.gw.decision(body["request_id"].as_str().unwrap()).await;
    assert!(
        d.deciding_layer()
            .unwrap()
            .note
            .as_deref()
            .unwrap()
            .contains("bound to unique id"),
        "{d:?}"
    );
    // Per-address limit: 6 a minute here, and two exchanges were made above.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(exchange(&w.gw, "Delegated nonsense").await.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 400).count(), 4, "{statuses:?}");
    let resp = exchange(&w.gw, "Delegated nonsense").await;
    assert!(resp.headers().contains_key("retry-after"));
    problem(resp, 429, "rate.limited").await;
}

#[tokio::test]
async fn reloads_apply_exchange_limits_and_a_proof_works_once_across_a_restart() {
    let (moto, creds) = moto().await;
    let w = world(&format!("\n[cloudauth]\nsts_endpoint = \"{}\"\n", moto.url)).await;
    role_logs_in_as_bob(&w).await;
    let used = proof(&creds, "role", &w.acme.id, "", "x-ddog-org-id").await;
    assert_eq!(exchange(&w.gw, &used).await.status(), 200);
    // Lower the per-address budget by editing the file: the running gateway applies it.
    let text = std::fs::read_to_string(&w.gw.config_path).unwrap();
    let lowered = text.replace("[cloudauth]\n", "[cloudauth]\nexchanges_per_minute_per_ip = 2\n");
    let before = w.gw.revision().await;
    std::fs::write(&w.gw.config_path, lowered).unwrap();
    poll_until("reloaded", || async { w.gw.revision().await != before }).await;
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(exchange(&w.gw, "Delegated nonsense").await.status().as_u16());
        }
        out
    };
    assert_eq!(statuses, [400, 400, 429], "the reloaded budget applies");
    // A restart empties the replay cache; a proof signed before it is still refused.
    std::fs::write(&w.gw.config_path, text).unwrap();
    let (dir, store, admin_key) = w.gw.stop_and_keep().await;
    let config = std::fs::read_to_string(dir.path().join("pinpoint.toml")).unwrap();
    let gw = start_in(dir, store, admin_key, &config).await;
    let body = problem(exchange(&gw, &used).await, 401, "cloudauth.proof_replayed").await;
    let d = gw.decision(body["request_id"].as_str().unwrap()).await;
    assert!(format!("{d:?}").contains("restart"), "{d:?}");
    let fresh = proof(&creds, "role", &w.acme.id, "", "x-ddog-org-id").await;
    assert_eq!(exchange(&gw, &fresh).await.status(), 200);
}

#[tokio::test]
async fn intake_keys_rotate_with_an_overlap_window() {
    let (moto, creds) = moto().await;
    let extra = format!(
        "\n[cloudauth]\nsts_endpoint = \"{}\"\nintake_key_rotation_seconds = 2\nintake_key_overlap_seconds = 2\nexchanges_per_minute_per_ip = 100000\nexchanges_per_minute_per_org = 100000\n\n[[routes]]\nid = \"intake\"\npath_prefix = \"/intake\"\nupstream = \"main\"\npermissions = {{ \"*\" = \"intake:write\" }}\n",
        moto.url
    );
    let w = world(&extra).await;
    w.gw.store.register_aws_account(&w.acme.id, ACCOUNT).await.unwrap();
    w.gw.store
        .create_mapping(
            &w.acme.id,
            "intake",
            "arn:aws:sts::123456789012:assumed-role/dd-role/*",
            None,
        )
        .await
        .unwrap();
    let credentials = credentials_of(&creds, "role");
    let exchanger = pinpoint_client::Exchanger::new(&format!("http://{}", w.gw.api), &w.acme.id, None).unwrap();
    let send = |key: String| {
        w.gw.http
            .post(w.gw.url("/intake/x"))
            .header("dd-api-key", key)
            .body("{}")
            .send()
    };
    let first = exchanger.intake_key(&credentials).await.unwrap();
    assert_eq!(send(first.api_key.clone()).await.unwrap().status(), 200);
    // After rotation the exchange hands out the next key; the previous one still works.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let next = loop {
        // Proofs signed within one second are the same proof: a replay is refused, and tried again.
        match exchanger.intake_key(&credentials).await {
            Ok(k) if k.api_key != first.api_key => break k,
            Ok(_) => {}
            Err(pinpoint_client::ClientError::Refused { reason, .. }) if reason == "cloudauth.proof_replayed" => {}
            Err(e) => panic!("{e}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "the key never rotated");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // polling interval
    };
    assert_eq!(send(next.api_key.clone()).await.unwrap().status(), 200);
    if pinpoint_store::now_ms() / 1000 < first.expires {
        assert_eq!(
            send(first.api_key.clone()).await.unwrap().status(),
            200,
            "overlap: both keys work"
        );
    }
    // Once its overlap has passed, the previous key is expired.
    poll_until("previous key expires", || async {
        send(first.api_key.clone()).await.unwrap().status() == 401
    })
    .await;
    problem(send(first.api_key.clone()).await.unwrap(), 401, "authn.key_expired").await;
}

/// Re-encodes a proof's parts with `edit(body, headers json, url)`.
fn edit_proof(proof: &str, edit: impl FnOnce(&mut String, &mut String, &mut String)) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let parts: Vec<&str> = proof.strip_prefix("Delegated ").unwrap().split('|').collect();
    let dec = |s: &str| String::from_utf8(b64.decode(s).unwrap()).unwrap();
    let (mut body, mut headers, mut url) = (dec(parts[0]), dec(parts[1]), dec(parts[3]));
    edit(&mut body, &mut headers, &mut url);
    format!(
        "Delegated {}|{}|{}|{}",
        b64.encode(body),
        b64.encode(headers),
        parts[2],
        b64.encode(url)
    )
}

#[tokio::test]
async fn local_checks_refuse_before_anything_reaches_sts() {
    let (moto, creds) = moto().await;
    let w = world(&format!("\n[cloudauth]\nsts_endpoint = \"{}\"\n", moto.url)).await;
    w.gw.store.register_aws_account(&w.acme.id, ACCOUNT).await.unwrap();
    let p = proof(&creds, "role", &w.acme.id, "", "x-ddog-org-id").await;
    let with_query = edit_proof(&p, |_, _, url| url.push_str("/?Action=AssumeRole"));
    problem(exchange(&w.gw, &with_query).await, 403, "cloudauth.request_not_allowed").await;
    let other_body = edit_proof(&p, |body, _, _| {
        *body = String::from("Action=GetSessionToken&Version=2011-06-15")
    });
    problem(exchange(&w.gw, &other_body).await, 403, "cloudauth.request_not_allowed").await;
    // An old X-Amz-Date (and matching scope date) is refused by Pinpoint's own window check.
    let old = edit_proof(&p, |_, headers, _| {
        let v: serde_json::Value = serde_json::from_str(headers).unwrap();
        let date = v["X-Amz-Date"][0].as_str().unwrap().to_owned();
        *headers = headers
            .replace(&date, "20200101T000000Z")
            .replace(&format!("/{}/", &date[..8]), "/20200101/");
    });
    problem(exchange(&w.gw, &old).await, 401, "cloudauth.proof_expired").await;
    // An unsigned org header does not count.
    let unsigned_org = edit_proof(&p, |_, headers, _| *headers = headers.replace(";x-ddog-org-id", ""));
    problem(exchange(&w.gw, &unsigned_org).await, 403, "cloudauth.org_mismatch").await;
}

#[tokio::test]
async fn with_a_cluster_redis_a_proof_works_once_across_replicas_and_exchanges_share_budgets() {
    let (moto, creds) = moto().await;
    let prefix = crate::cluster::Prefix::new("proofs");
    let config = format!(
        "\n[cloudauth]\nsts_endpoint = \"{}\"\nexchanges_per_minute_per_ip = 3\n\n[cluster]\nredis = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{}\"\n",
        moto.url, prefix.0
    );
    let w = world(&config).await;
    role_logs_in_as_bob(&w).await;
    let used = proof(&creds, "role", &w.acme.id, "", "x-ddog-org-id").await;
    assert_eq!(exchange(&w.gw, &used).await.status(), 200);
    // Another replica (this one stopped, another started on the same store and Redis)
    // refuses the proof, remembered in Redis; and the per-address budget (3 a minute) is
    // the one the first replica already spent from.
    let (dir, store, admin_key) = w.gw.stop_and_keep().await;
    let text = std::fs::read_to_string(dir.path().join("pinpoint.toml")).unwrap();
    let gw = start_in(dir, store, admin_key, &text).await;
    let body = problem(exchange(&gw, &used).await, 401, "cloudauth.proof_replayed").await;
    let d = gw.decision(body["request_id"].as_str().unwrap()).await;
    assert!(format!("{d:?}").contains("Redis"), "{d:?}");
    assert_eq!(
        exchange(&gw, "Delegated nonsense").await.status(),
        400,
        "the third of three"
    );
    problem(exchange(&gw, "Delegated nonsense").await, 429, "rate.limited").await;
}
