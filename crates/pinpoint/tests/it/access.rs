//! The access layers over real sockets: every authn, authz, net, cors, rate and quota code
//! is provoked, with status, headers, body and stored trace checked, and shadow mode for
//! each layer.

use std::time::Duration;

use pinpoint_core::identity::{KeyKind, Organization, PrincipalKind};
use pinpoint_core::{Mark, Mode, Reason};
use pinpoint_store::NewKey;

use crate::*;

/// Two tenants with users, roles and keys, seeded through the store before start.
pub struct World {
    pub gw: TestGateway,
    pub acme: Organization,
    pub globex: Organization,
    pub alice_id: String,
    pub bob_id: String,
    /// alice: orders-writer (orders:read, orders:write), acme.
    pub alice_key: String,
    /// alice, scoped to orders:read.
    pub alice_read_only_key: String,
    /// bob: orders-reader, acme.
    pub bob_key: String,
    /// carol: orders-writer + contractor, acme.
    pub carol_key: String,
    /// a globex service account with orders-writer.
    pub globex_key: String,
    /// acme's organization key (DD-API-KEY).
    pub acme_org_key: String,
    pub globex_org_key: String,
}

pub async fn world(extra: &str) -> World {
    let (dir, store, admin_key) = fresh_store().await;
    let acme = store.create_org("acme").await.unwrap();
    let globex = store.create_org("globex").await.unwrap();
    let role = |org: String, name: &'static str, perms: &'static [&'static str]| {
        let store = store.clone();
        async move {
            let perms: Vec<String> = perms.iter().map(|p| p.to_string()).collect();
            store.create_role(&org, name, &perms).await.unwrap()
        }
    };
    let reader = role(acme.id.clone(), "orders-reader", &["orders:read"]).await;
    let writer = role(acme.id.clone(), "orders-writer", &["orders:read", "orders:write"]).await;
    let contractor = role(acme.id.clone(), "contractor", &[]).await;
    let globex_writer = role(
        globex.id.clone(),
        "orders-writer",
        &["orders:*", "tokens:create", "decisions:read"],
    )
    .await;
    let principal = |org: String, kind: PrincipalKind, name: &'static str, roles: Vec<String>| {
        let store = store.clone();
        async move {
            let p = store.create_principal(&org, kind, name, None).await.unwrap();
            for r in roles {
                store.assign_role(&p.id, &r).await.unwrap();
            }
            p
        }
    };
    let alice = principal(acme.id.clone(), PrincipalKind::User, "alice", vec![writer.id.clone()]).await;
    let bob = principal(acme.id.clone(), PrincipalKind::User, "bob", vec![reader.id.clone()]).await;
    let carol = principal(
        acme.id.clone(),
        PrincipalKind::User,
        "carol",
        vec![writer.id.clone(), contractor.id.clone()],
    )
    .await;
    let svc = principal(
        globex.id.clone(),
        PrincipalKind::ServiceAccount,
        "billing",
        vec![globex_writer.id.clone()],
    )
    .await;
    let key = |org: &str, principal: Option<&str>, kind: KeyKind, scopes: Option<Vec<String>>| {
        let new = NewKey {
            name: "test".into(),
            kind,
            org_id: org.to_owned(),
            principal_id: principal.map(str::to_owned),
            scopes,
            expires_at_ms: None,
        };
        let store = store.clone();
        async move { store.create_key(new).await.unwrap().key }
    };
    let alice_key = key(&acme.id, Some(&alice.id), KeyKind::Application, None).await;
    let alice_read_only_key = key(
        &acme.id,
        Some(&alice.id),
        KeyKind::Application,
        Some(vec!["orders:read".into()]),
    )
    .await;
    let bob_key = key(&acme.id, Some(&bob.id), KeyKind::Application, None).await;
    let carol_key = key(&acme.id, Some(&carol.id), KeyKind::Application, None).await;
    let globex_key = key(&globex.id, Some(&svc.id), KeyKind::Application, None).await;
    let acme_org_key = key(&acme.id, None, KeyKind::Api, Some(vec!["intake:write".into()])).await;
    let globex_org_key = key(&globex.id, None, KeyKind::Api, None).await;

    let config = format!(
        r#"
[server]
data_dir = "DATA_DIR"
reload_poll_ms = 50

[net]
trusted_proxies = ["127.0.0.1/32", "::1/128"]
deny = ["192.0.2.0/24"]

[cors]
allowed_origins = ["https://app.example.com"]

[keys]
rotation_overlap_seconds = 2

[jwt]
leeway_seconds = 0

[upstreams.main]
targets = ["builtin:echo"]

[[routes]]
id = "orders"
path_prefix = "/orders"
upstream = "main"
permissions = {{ GET = "orders:read", POST = "orders:write" }}

[[routes]]
id = "acme-only"
path_prefix = "/acme"
upstream = "main"
org = "{acme}"
permissions = {{ "*" = "orders:read" }}

[[routes]]
id = "profiles"
path_prefix = "/profiles"
upstream = "main"
owner_segment = 1
permissions = {{ "*" = "orders:read" }}

[[routes]]
id = "internal"
path_prefix = "/internal"
upstream = "main"
ip_allow = ["10.0.0.0/8"]

[[routes]]
id = "partners"
path_prefix = "/partners"
upstream = "main"
ip_deny = ["203.0.113.0/24"]

[[routes]]
id = "limited"
path_prefix = "/limited"
upstream = "main"
auth = "required"

[[routes]]
id = "metered"
path_prefix = "/metered"
upstream = "main"
auth = "required"

[[routes]]
id = "public"
path_prefix = "/public"
upstream = "main"
auth = "optional"

[[authz.deny]]
id = "contractors-no-bulk"
roles = ["contractor"]
path_prefix = "/orders/bulk"
description = "contractors may not bulk-edit"

[[rate.limits]]
id = "per-key"
by = "key"
requests = 2
per_seconds = 3600
routes = ["limited"]

[[rate.quotas]]
id = "daily"
period = "day"
requests = 2
routes = ["metered"]
{extra}
"#,
        acme = acme.id
    );
    let gw = start_in(dir, store, admin_key, &config).await;
    World {
        gw,
        acme,
        globex,
        alice_id: alice.id,
        bob_id: bob.id,
        alice_key,
        alice_read_only_key,
        bob_key,
        carol_key,
        globex_key,
        acme_org_key,
        globex_org_key,
    }
}

impl World {
    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.gw
            .http
            .get(self.gw.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, key: &str) -> reqwest::Response {
        self.gw
            .http
            .post(self.gw.url(path))
            .bearer_auth(key)
            .body("{}")
            .send()
            .await
            .unwrap()
    }

    /// Checks the problem and the stored trace, and that the body leaks nothing.
    pub async fn refused(
        &self,
        resp: reqwest::Response,
        status: u16,
        reason: &str,
    ) -> (serde_json::Value, pinpoint_core::Decision) {
        let body = problem(resp, status, reason).await;
        let text = body.to_string();
        for secret in [
            &self.alice_key,
            &self.bob_key,
            &self.carol_key,
            &self.globex_key,
            &self.acme_org_key,
            &self.gw.admin_key,
        ] {
            assert!(!text.contains(secret.as_str()), "a key leaked into {text}");
            let key_secret = pinpoint_core::keys::parse(secret).unwrap().secret;
            assert!(!text.contains(key_secret), "a key secret leaked into {text}");
        }
        for other in ["globex", &self.globex.id, "acme", &self.acme.id] {
            assert!(!text.contains(other), "a tenant name or id leaked into {text}");
        }
        let d = self.gw.decision(body["request_id"].as_str().unwrap()).await;
        assert_eq!(d.status, status);
        assert_eq!(d.reason.map(|r| r.code()), Some(reason));
        let deciding = d.deciding_layer().expect("a deciding layer");
        assert_eq!(deciding.reason.map(|r| r.code()), Some(reason));
        assert_eq!(
            deciding.layer,
            reason.split('.').next().unwrap(),
            "the trace names the caller's layer"
        );
        (body, d)
    }
}

#[tokio::test]
async fn authn_codes_for_api_keys() {
    let w = world("").await;
    let resp = w.gw.http.get(w.gw.url("/orders")).send().await.unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"pinpoint\"");
    w.refused(resp, 401, "authn.credentials_missing").await;

    let resp = w.get("/orders", "pp_short").await;
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    w.refused(resp, 401, "authn.key_malformed").await;

    let mut forged = w.alice_key.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    w.refused(w.get("/orders", &forged).await, 401, "authn.key_unknown")
        .await;

    // X-API-Key works like a bearer key.
    let ok =
        w.gw.http
            .get(w.gw.url("/orders"))
            .header("x-api-key", &w.bob_key)
            .send()
            .await
            .unwrap();
    assert_eq!(ok.status(), 200);
    let echoed: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(
        echoed["headers"]["x-pinpoint-principal"],
        w.bob_id.as_str(),
        "upstreams learn the principal"
    );
    assert!(
        echoed["headers"].get("x-api-key").is_none(),
        "Pinpoint's credential is not forwarded"
    );

    // Expired: a key whose expiry passed.
    let expired =
        w.gw.store
            .create_key(NewKey {
                name: "old".into(),
                kind: KeyKind::Application,
                org_id: w.acme.id.clone(),
                principal_id: Some(w.bob_id.clone()),
                scopes: None,
                expires_at_ms: Some(pinpoint_store::now_ms() - 1),
            })
            .await
            .unwrap();
    // Keys created behind the API's back reach the directory on restart; use the API path
    // for the rest, and check this one through a fresh directory load below.
    let revoke_target = w.bob_key.clone();
    let id = pinpoint_core::keys::parse(&revoke_target).unwrap().id.to_owned();
    w.gw.revoke_key(&revoke_target).await;
    let (_, d) = w
        .refused(w.get("/orders", &revoke_target).await, 401, "authn.key_revoked")
        .await;
    assert_eq!(
        d.deciding_layer().unwrap().rule_id.as_deref(),
        Some(format!("key {id}").as_str())
    );
    // The key's secret matched, so its owner is known: the decision is bob's, in acme, and
    // acme's administrators can read why bob's sign-in failed.
    assert_eq!(d.org_id(), Some(w.acme.id.as_str()));
    assert_eq!(
        d.caller.as_ref().and_then(|c| c.principal_id.as_deref()),
        Some(w.bob_id.as_str())
    );
    // A forged secret names nobody.
    let (_, d) = w
        .refused(w.get("/orders", &forged).await, 401, "authn.key_unknown")
        .await;
    assert_eq!((d.org_id(), d.principal.as_deref()), (None, None));

    let directory = pinpoint_gateway::directory::Directory::load(&w.gw.store).await.unwrap();
    assert_eq!(
        directory.verify_key(&expired.key, pinpoint_store::now_ms()).err(),
        Some(pinpoint_policy::identity::KeyRefusal::Expired)
    );
}

#[tokio::test]
async fn expired_key_is_401_key_expired_and_rotation_never_401s() {
    let w = world("").await;
    let id = pinpoint_core::keys::parse(&w.alice_key).unwrap().id.to_owned();
    let resp =
        w.gw.http
            .post(w.gw.api_url(&format!("/api/v2/api_keys/{id}/rotate")))
            .bearer_auth(&w.gw.admin_key)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().await.unwrap();
    let new_key = body["data"]["attributes"]["key"].as_str().unwrap().to_owned();
    assert_eq!(body["data"]["attributes"]["replaces"], id.as_str());
    // During the overlap both keys work.
    assert_eq!(w.get("/orders", &w.alice_key).await.status(), 200);
    assert_eq!(w.get("/orders", &new_key).await.status(), 200);
    // After it (2 s in this config) the old one is expired, the new one still works.
    poll_until("old key expires", || async {
        w.get("/orders", &w.alice_key).await.status() == 401
    })
    .await;
    // It says it was rotated, not merely expired, and the trace names its successor.
    let (_, d) = w
        .refused(w.get("/orders", &w.alice_key).await, 401, "authn.key_rotated")
        .await;
    let successor = pinpoint_core::keys::parse(&new_key).unwrap().id.to_owned();
    assert!(
        d.deciding_layer()
            .unwrap()
            .note
            .as_deref()
            .unwrap()
            .contains(&successor),
        "{d:?}"
    );
    assert_eq!(w.get("/orders", &new_key).await.status(), 200);
}

async fn token_for(w: &World, key: &str, ttl: Option<u64>) -> String {
    let body = match ttl {
        Some(t) => serde_json::json!({"data": {"type": "tokens", "attributes": {"ttl_seconds": t}}}).to_string(),
        None => String::new(),
    };
    let resp =
        w.gw.http
            .post(w.gw.api_url("/api/v2/tokens"))
            .bearer_auth(key)
            .body(body)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 201);
    let v: serde_json::Value = resp.json().await.unwrap();
    v["data"]["attributes"]["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn jwt_codes_and_an_independent_verifier() {
    let w = world("").await;
    // Tokens need `tokens:create`; give alice's role... the admin has it.
    let admin_token = token_for(&w, &w.gw.admin_key, None).await;
    // The admin's org is the operators' org; the orders route has no org, so the token works.
    assert_eq!(w.get("/orders", &admin_token).await.status(), 200);

    // Tampered signature.
    let mut parts: Vec<String> = admin_token.split('.').map(str::to_owned).collect();
    parts[2] = parts[2].chars().rev().collect();
    let (_, d) = w
        .refused(w.get("/orders", &parts.join(".")).await, 401, "authn.token_invalid")
        .await;
    assert!(d
        .deciding_layer()
        .unwrap()
        .note
        .as_deref()
        .unwrap()
        .contains("verification failed"));
    // alg confusion: a header claiming HS256 with the same kid.
    let header =
        base64_url(&serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": kid_of(&admin_token)}).to_string());
    let forged = format!("{header}.{}.{}", parts[1], parts[2]);
    w.refused(w.get("/orders", &forged).await, 401, "authn.token_invalid")
        .await;

    // Another organization's route: a token gets the same answer as a key of its owner.
    let globex_token = token_for(&w, &w.globex_key, None).await;
    let (_, by_token) = w
        .refused(w.get("/acme/x", &globex_token).await, 403, "authz.tenant_mismatch")
        .await;
    w.refused(w.get("/acme/x", &w.globex_key).await, 403, "authz.tenant_mismatch")
        .await;
    assert!(by_token
        .trace
        .iter()
        .any(|t| t.layer == "authn" && t.rule_id.as_deref().is_some_and(|r| r.starts_with("token "))));

    // Expiry: a 1-second token, no leeway in this config.
    let short = token_for(&w, &w.gw.admin_key, Some(1)).await;
    poll_until("token expires", || async {
        w.get("/orders", &short).await.status() == 401
    })
    .await;
    let (_, d) = w
        .refused(w.get("/orders", &short).await, 401, "authn.token_expired")
        .await;
    // The signature was verified first, so the trace names the token and its subject.
    let entry = d.deciding_layer().unwrap();
    assert!(entry.rule_id.as_deref().unwrap().starts_with("token "), "{entry:?}");
    assert!(entry.note.as_deref().unwrap().contains("expired at"), "{entry:?}");

    // PyJWT verifies Pinpoint's token with the published JWKS.
    let jwks =
        w.gw.http
            .get(w.gw.api_url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    let script = r#"
import json, sys, jwt
token, jwks, aud = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
header = jwt.get_unverified_header(token)
key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=[key["alg"]], audience=aud, issuer="pinpoint")
print(json.dumps(claims))
"#;
    let me = w.gw.api_json("/api/v2/current_user", Some(&admin_token)).await;
    let org = me["data"]["attributes"]["org_id"].as_str().unwrap().to_owned();
    let out = std::process::Command::new("python3")
        .args(["-c", script, &admin_token, &jwks, &org])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "PyJWT refused Pinpoint's token (pip install pyjwt cryptography): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["sub"], me["data"]["id"]);
    for claim in ["exp", "iat", "jti", "iss", "aud"] {
        assert!(claims.get(claim).is_some(), "missing {claim}");
    }

    // Rotation: new tokens get a new kid, old tokens keep verifying.
    let resp =
        w.gw.http
            .post(w.gw.api_url("/api/v2/signing_keys/rotate"))
            .bearer_auth(&w.gw.admin_key)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 201);
    let fresh = token_for(&w, &w.gw.admin_key, None).await;
    assert_ne!(kid_of(&fresh), kid_of(&admin_token));
    assert_eq!(w.get("/orders", &admin_token).await.status(), 200);
    assert_eq!(w.get("/orders", &fresh).await.status(), 200);
    let jwks = w.gw.api_json("/.well-known/jwks.json", None).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&header).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn suspension_of_principal_and_organization_is_403() {
    let w = world("").await;
    let patch_to = |path: String, suspended: bool| {
        let w = &w;
        async move {
            let resp =
                w.gw.http
                    .patch(w.gw.api_url(&path))
                    .bearer_auth(&w.gw.admin_key)
                    .json(&serde_json::json!({"data": {"type": "x", "attributes": {"suspended": suspended}}}))
                    .send()
                    .await
                    .unwrap();
            assert_eq!(resp.status(), 200, "{path}");
        }
    };
    let patch = |path: String| patch_to(path, true);
    assert_eq!(w.get("/orders", &w.bob_key).await.status(), 200);
    patch(format!("/api/v2/users/{}", w.bob_id)).await;
    let (_, d) = w
        .refused(w.get("/orders", &w.bob_key).await, 403, "authn.principal_suspended")
        .await;
    assert_eq!(d.org_id(), Some(w.acme.id.as_str()), "acme's admins can read it");
    assert_eq!(
        d.caller.as_ref().and_then(|c| c.principal_id.as_deref()),
        Some(w.bob_id.as_str())
    );

    assert_eq!(w.get("/orders", &w.globex_key).await.status(), 200);
    patch(format!("/api/v2/orgs/{}", w.globex.id)).await;
    w.refused(
        w.get("/orders", &w.globex_key).await,
        403,
        "authn.organization_suspended",
    )
    .await;
    patch_to(format!("/api/v2/orgs/{}", w.globex.id), false).await;
    assert_eq!(
        w.get("/orders", &w.globex_key).await.status(),
        200,
        "lifting the suspension takes effect at once"
    );
}

#[tokio::test]
async fn authz_codes() {
    let w = world("").await;
    assert_eq!(w.post("/orders", &w.alice_key).await.status(), 200);

    let (body, d) = w
        .refused(w.post("/orders", &w.bob_key).await, 403, "authz.permission_missing")
        .await;
    assert!(
        body["detail"].as_str().unwrap().contains("orders:write"),
        "the hint names the missing permission"
    );
    assert!(
        !body.to_string().contains("orders-reader"),
        "never the caller's role list"
    );
    assert_eq!(d.deciding_layer().unwrap().rule_id.as_deref(), Some("orders:write"));
    // The record names bob by id; the API names him for people, from the directory.
    assert_eq!(
        d.caller.as_ref().and_then(|c| c.principal_id.as_deref()),
        Some(w.bob_id.as_str())
    );
    assert_eq!(d.principal, None, "labels are not stored");
    let read =
        w.gw.api_json(&format!("/api/v2/decisions/{}", d.request_id), Some(&w.gw.admin_key))
            .await;
    let label = read["data"]["attributes"]["principal"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(label, format!("user:bob ({})", w.bob_id), "{read}");

    let (body, d) = w
        .refused(w.post("/orders/bulk", &w.carol_key).await, 403, "authz.explicit_deny")
        .await;
    assert!(
        !body.to_string().contains("contractors-no-bulk"),
        "the rule id is for the operator"
    );
    assert_eq!(
        d.deciding_layer().unwrap().rule_id.as_deref(),
        Some("contractors-no-bulk")
    );

    let (body, _) = w
        .refused(
            w.post("/orders", &w.alice_read_only_key).await,
            403,
            "authz.scope_missing",
        )
        .await;
    assert!(body["detail"].as_str().unwrap().contains("orders:write"));
    assert_eq!(w.get("/orders", &w.alice_read_only_key).await.status(), 200);

    let (_, d) = w
        .refused(w.get("/acme/report", &w.globex_key).await, 403, "authz.tenant_mismatch")
        .await;
    // globex can read this decision, and what it reads holds nothing of acme; a platform
    // admin also reads whose route it was.
    assert_eq!(d.org_id(), Some(w.globex.id.as_str()));
    let platform_note = d.deciding_layer().unwrap().platform_note.clone().unwrap_or_default();
    assert!(platform_note.contains(&w.acme.id), "{d:?}");
    let as_platform =
        w.gw.api_json(&format!("/api/v2/decisions/{}", d.request_id), Some(&w.gw.admin_key))
            .await;
    assert!(as_platform.to_string().contains(&w.acme.id), "{as_platform}");
    let as_globex =
        w.gw.api_json(&format!("/api/v2/decisions/{}", d.request_id), Some(&w.globex_key))
            .await;
    assert_eq!(as_globex["data"]["id"], d.request_id.as_str(), "{as_globex}");
    assert!(!as_globex.to_string().contains(&w.acme.id), "{as_globex}");
    assert_eq!(w.get("/acme/report", &w.bob_key).await.status(), 200);

    w.refused(
        w.get(&format!("/profiles/{}", w.bob_id), &w.alice_key).await,
        403,
        "authz.not_owner",
    )
    .await;
    assert_eq!(
        w.get(&format!("/profiles/{}/settings", w.alice_id), &w.alice_key)
            .await
            .status(),
        200
    );

    // An organization key acts with its scopes only: what it lacks is a scope, never a role.
    let resp =
        w.gw.http
            .get(w.gw.url("/orders"))
            .header("dd-api-key", &w.acme_org_key)
            .send()
            .await
            .unwrap();
    let (body, _) = w.refused(resp, 403, "authz.scope_missing").await;
    assert!(body["detail"].as_str().unwrap().contains("orders:read"), "{body}");
    assert!(!body["hint"].as_str().unwrap().contains("role"), "{body}");
}

#[tokio::test]
async fn datadog_key_pair() {
    let w = world("").await;
    let pair = |api: &str, app: &str| {
        w.gw.http
            .get(w.gw.url("/orders"))
            .header("dd-api-key", api)
            .header("dd-application-key", app)
            .send()
    };
    let ok = pair(&w.acme_org_key, &w.alice_key).await.unwrap();
    assert_eq!(ok.status(), 200);
    // An application key of another organization than the API key's.
    w.refused(
        pair(&w.globex_org_key, &w.alice_key).await.unwrap(),
        401,
        "authn.key_unknown",
    )
    .await;
    // An application key in the API-key slot.
    w.refused(
        pair(&w.alice_key, &w.alice_key).await.unwrap(),
        401,
        "authn.key_unknown",
    )
    .await;
    let app_only =
        w.gw.http
            .get(w.gw.url("/orders"))
            .header("dd-application-key", &w.alice_key)
            .send()
            .await
            .unwrap();
    w.refused(app_only, 401, "authn.credentials_missing").await;
}

#[tokio::test]
async fn ip_lists_with_trusted_proxies() {
    let w = world("").await;
    let from = |path: &str, ip: &str| w.gw.http.get(w.gw.url(path)).header("x-forwarded-for", ip).send();
    let (body, _) = w
        .refused(from("/public", "192.0.2.7").await.unwrap(), 403, "net.ip_denied")
        .await;
    assert!(
        body["detail"].as_str().unwrap().contains("192.0.2.7"),
        "the caller is told the address seen"
    );
    let (body, _) = w
        .refused(from("/partners/x", "203.0.113.9").await.unwrap(), 403, "net.ip_denied")
        .await;
    assert!(body["detail"].as_str().unwrap().contains("203.0.113.9"));
    let (body, d) = w
        .refused(
            from("/internal", "198.51.100.4").await.unwrap(),
            403,
            "net.ip_not_allowed",
        )
        .await;
    assert!(body["detail"].as_str().unwrap().contains("198.51.100.4"));
    assert!(d.client_addr.contains("198.51.100.4"));
    assert_eq!(from("/internal", "10.1.2.3").await.unwrap().status(), 200);
    // IPv6 and the Forwarded header.
    let resp =
        w.gw.http
            .get(w.gw.url("/internal"))
            .header("forwarded", "for=\"[2001:db8::5]:4711\"")
            .send()
            .await
            .unwrap();
    let (body, _) = w.refused(resp, 403, "net.ip_not_allowed").await;
    assert!(body["detail"].as_str().unwrap().contains("2001:db8::5"));
}

#[tokio::test]
async fn rate_limits_and_quotas_with_headers_surviving_reload() {
    let w = world("").await;
    let first = w.get("/limited", &w.alice_key).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["ratelimit-policy"], "\"per-key\";q=2;w=3600");
    assert_eq!(first.headers()["x-ratelimit-limit"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
    assert!(first.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"per-key\";r=1;t="));
    assert_eq!(
        w.get("/limited", &w.alice_key).await.headers()["x-ratelimit-remaining"],
        "0"
    );
    let resp = w.get("/limited", &w.alice_key).await;
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 1800, "{retry}");
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
    let (_, d) = w.refused(resp, 429, "rate.limited").await;
    assert_eq!(d.deciding_layer().unwrap().rule_id.as_deref(), Some("per-key"));
    // Another key has its own budget.
    assert_eq!(w.get("/limited", &w.bob_key).await.status(), 200);

    // A reload (new revision) keeps the counters.
    let before = w.gw.revision().await;
    let text = std::fs::read_to_string(&w.gw.config_path).unwrap() + "\n# touched\n";
    std::fs::write(&w.gw.config_path, text).unwrap();
    poll_until("reload", || async { w.gw.revision().await != before }).await;
    w.refused(w.get("/limited", &w.alice_key).await, 429, "rate.limited")
        .await;

    // Quotas count per organization: alice and bob share acme's.
    assert_eq!(w.get("/metered", &w.alice_key).await.status(), 200);
    assert_eq!(w.get("/metered", &w.bob_key).await.status(), 200);
    let resp = w.get("/metered", &w.alice_key).await;
    assert!(resp.headers().contains_key("retry-after"));
    let (_, d) = w.refused(resp, 429, "quota.exhausted").await;
    assert_eq!(d.deciding_layer().unwrap().rule_id.as_deref(), Some("daily"));
    assert_eq!(
        w.get("/metered", &w.globex_key).await.status(),
        200,
        "another organization's quota is separate"
    );
}

#[tokio::test]
async fn cors_preflight_comes_before_authentication_and_denials_are_readable() {
    let w = world("").await;
    let preflight = |origin: &str| {
        w.gw.http
            .request(reqwest::Method::OPTIONS, w.gw.url("/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(ok.status(), 204, "answered without credentials");
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example.com");
    assert!(ok.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(ok.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let id = ok.headers()["x-request-id"].to_str().unwrap().to_owned();
    let d = w.gw.decision(&id).await;
    let authn = d.trace.iter().find(|t| t.layer == "authn").unwrap();
    assert_eq!(authn.mark, Mark::Skip, "authentication is not reached by a preflight");

    w.refused(
        preflight("https://evil.example").await.unwrap(),
        403,
        "cors.origin_not_allowed",
    )
    .await;

    // A denial carries CORS headers for an allowed origin, so the page can read the problem.
    let resp =
        w.gw.http
            .get(w.gw.url("/orders"))
            .header("origin", "https://app.example.com")
            .send()
            .await
            .unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.example.com");
    assert!(resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-request-id"));
    w.refused(resp, 401, "authn.credentials_missing").await;
}

#[tokio::test]
async fn every_access_layer_has_a_shadow_mode() {
    let modes = "\n[authn]\nmode = \"report\"\n[authz]\nmode = \"report\"\n[net]\nmode = \"report\"\ndeny = [\"192.0.2.0/24\"]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[rate]\nmode = \"report\"\n[[rate.limits]]\nid = \"tiny\"\nby = \"client_ip\"\nrequests = 1\nper_seconds = 3600\n[cors]\nmode = \"report\"\nallowed_origins = [\"https://app.example.com\"]\n";
    // The shadow world replaces the sections of the default world.
    let gw = start(&config_with(
        "\"builtin:echo\"",
        "",
        &format!("{modes}\n[[routes]]\nid = \"secure\"\npath_prefix = \"/secure\"\nupstream = \"main\"\npermissions = {{ GET = \"x:read\" }}\n"),
    ))
    .await;
    let send = |path: &str| gw.http.get(gw.url(path)).header("x-forwarded-for", "192.0.2.1").send();
    assert_eq!(
        send("/secure").await.unwrap().status(),
        200,
        "first request: the limiter has budget"
    );
    let resp = send("/secure").await.unwrap();
    assert_eq!(resp.status(), 200, "every would-deny lets the request pass");
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let d = gw.decision(&id).await;
    for (layer, reason) in [
        ("net", Reason::NetIpDenied),
        ("authn", Reason::AuthnCredentialsMissing),
        ("authz", Reason::AuthzPermissionMissing),
        ("rate", Reason::RateLimited),
    ] {
        let t = d.trace.iter().find(|t| t.layer == layer).unwrap();
        assert_eq!(
            (t.mark, t.mode, t.reason),
            (Mark::WouldDeny, Mode::Report, Some(reason)),
            "{layer}"
        );
    }
    assert_eq!(d.reason, None);
    let preflight = gw
        .http
        .request(reqwest::Method::OPTIONS, gw.url("/orders"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_ne!(preflight.status(), 403, "cors in report mode does not refuse");
    let d = gw.decision(preflight.headers()["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        d.trace.iter().find(|t| t.layer == "cors").unwrap().mark,
        Mark::WouldDeny
    );
    let metrics = gw.metrics().await;
    for reason in [
        "net.ip_denied",
        "authn.credentials_missing",
        "authz.permission_missing",
        "rate.limited",
        "cors.origin_not_allowed",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with("pinpoint_denials_total{")
                && l.contains(reason)
                && l.contains("mode=\"report\"")),
            "{reason} counted in report mode"
        );
    }
    let _ = Duration::ZERO;
}

#[tokio::test]
async fn quotas_survive_a_restart() {
    let w = world("").await;
    assert_eq!(w.get("/metered", &w.alice_key).await.status(), 200);
    assert_eq!(w.get("/metered", &w.alice_key).await.status(), 200);
    w.refused(w.get("/metered", &w.alice_key).await, 429, "quota.exhausted")
        .await;
    let config = std::fs::read_to_string(&w.gw.config_path).unwrap();
    let (alice_key, http) = (w.alice_key.clone(), w.gw.http.clone());
    let (dir, store, admin_key) = w.gw.stop_and_keep().await;
    let data_dir = dir.path().join("data").display().to_string();
    let gw = start_in(dir, store, admin_key, &config.replace(&data_dir, "DATA_DIR")).await;
    let resp = http
        .get(gw.url("/metered"))
        .bearer_auth(&alice_key)
        .send()
        .await
        .unwrap();
    problem(resp, 429, "quota.exhausted").await;
}

#[tokio::test]
async fn every_decision_names_its_caller_as_fields() {
    use pinpoint_core::CredentialKind;
    let w = world("").await;
    let gw = &w.gw;
    let decision_of = |resp: reqwest::Response| {
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        async move { gw.decision(&id).await }
    };
    let key_id = |key: &str| pinpoint_core::keys::parse(key).unwrap().id.to_owned();

    // An application key: its principal, organization and id.
    let d = decision_of(w.get("/orders", &w.alice_key).await).await;
    let caller = d.caller.expect("a key's caller");
    assert_eq!(caller.principal_id.as_deref(), Some(w.alice_id.as_str()));
    assert_eq!(&*caller.org_id, w.acme.id.as_str());
    assert_eq!(caller.credential, CredentialKind::ApiKey);
    assert_eq!(caller.key_id.as_deref(), Some(key_id(&w.alice_key).as_str()));
    assert_eq!(caller.token_id, None);

    // A token: its principal and its id, no key.
    let token = token_for(&w, &w.globex_key, None).await;
    let d = decision_of(w.get("/orders", &token).await).await;
    let caller = d.caller.expect("a token's caller");
    assert_eq!(caller.credential, CredentialKind::Token);
    assert!(caller.principal_id.is_some(), "{caller:?}");
    assert_eq!(&*caller.org_id, w.globex.id.as_str());
    assert!(caller.token_id.is_some() && caller.key_id.is_none(), "{caller:?}");

    // An organization key, refused for a scope it lacks: still named, without a principal.
    let resp =
        w.gw.http
            .get(w.gw.url("/orders"))
            .header("dd-api-key", &w.globex_org_key)
            .send()
            .await
            .unwrap();
    let d = decision_of(resp).await;
    assert!(d.reason.is_some());
    let caller = d.caller.expect("an organization key's caller");
    assert_eq!(caller.credential, CredentialKind::OrgKey);
    assert_eq!(caller.principal_id, None);
    assert_eq!(&*caller.org_id, w.globex.id.as_str());

    // Nobody: no caller.
    let resp = w.gw.http.get(w.gw.url("/public/x")).send().await.unwrap();
    assert_eq!(decision_of(resp).await.caller, None);
}

#[tokio::test]
async fn other_callers_reusing_a_client_request_id_cannot_hide_a_tenants_decision() {
    let w = world("").await;
    let send = |key: Option<&str>, path: &str| {
        let mut request = w.gw.http.get(w.gw.url(path)).header("x-request-id", "shared-id");
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    assert_eq!(send(Some(&w.globex_key), "/orders").await.unwrap().status(), 200);
    // More requests under the same id than a lookup lists, anonymous and from acme.
    for i in 0..30 {
        let key = (i % 2 == 0).then_some(w.alice_key.as_str());
        send(key, "/nope").await.unwrap();
    }
    let read = w.gw.api_json("/api/v2/decisions/shared-id", Some(&w.globex_key)).await;
    let found = match &read["data"] {
        serde_json::Value::Array(list) => list.clone(),
        one => vec![one.clone()],
    };
    assert_eq!(found.len(), 1, "globex reads its own decision, and only it: {read}");
    assert_eq!(found[0]["attributes"]["route"], "orders", "{read}");
}

const CSRF_ROUTES: &str = r#"
[upstreams.main]
targets = ["builtin:echo"]

[[routes]]
id = "app"
path_prefix = "/app"
upstream = "main"

[[routes]]
id = "strict"
path_prefix = "/strict"
upstream = "main"
csrf = "origin"

[[routes]]
id = "forms"
path_prefix = "/forms"
upstream = "main"
csrf = "token"

[[routes]]
id = "open"
path_prefix = "/open"
upstream = "main"
csrf = "off"

[[routes]]
id = "keyed"
path_prefix = "/keyed"
upstream = "main"
auth = "required"
"#;

/// A request with the given headers.
async fn send_with(
    gw: &TestGateway,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = gw.http.request(method, gw.url(path)).body("{}");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn csrf_refuses_cross_site_cookie_posts_and_says_what_it_compared() {
    use reqwest::Method as M;
    let config = format!(
        "[server]\ndata_dir = \"DATA_DIR\"\n[cors]\nallowed_origins = [\"https://partner.example\"]\n[csrf]\ntrusted_origins = [\"https://admin.example\"]\n{CSRF_ROUTES}"
    );
    let gw = start(&config).await;
    let own = format!("http://{}", gw.proxy);
    let own_upper = own.to_ascii_uppercase();
    let bearer = format!("Bearer {}", gw.admin_key);
    let cookie = ("cookie", "session=s1");

    // A browser on another site: refused, and the trace says what was compared.
    let resp = send_with(
        &gw,
        M::POST,
        "/app/x",
        &[
            cookie,
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://evil.example"),
        ],
    )
    .await;
    let body = problem(resp, 403, "csrf.cross_site").await;
    let d = gw.decision(body["request_id"].as_str().unwrap()).await;
    let note = d.deciding_layer().unwrap().note.clone().unwrap();
    assert!(
        note.contains("\"cross-site\"") && note.contains("\"https://evil.example\""),
        "{note}"
    );
    assert!(
        note.contains(&format!("compared with {own} (from this connection and its Host)")),
        "{note}"
    );
    assert!(
        !body.to_string().contains("evil.example"),
        "the caller is told no header values: {body}"
    );

    let resp = send_with(&gw, M::POST, "/app/x", &[cookie, ("origin", "https://evil.example")]).await;
    problem(resp, 403, "csrf.origin_mismatch").await;
    let resp = send_with(&gw, M::PUT, "/strict/x", &[("origin", "https://evil.example")]).await;
    problem(resp, 403, "csrf.origin_mismatch").await;

    // What passes: same origin, same-origin fetches, trusted origins (CSRF's and CORS's),
    // non-browsers, safe methods, header credentials on auto routes, unguarded routes.
    type Case<'a> = (M, &'a str, Vec<(&'a str, &'a str)>);
    let passing: Vec<Case> = vec![
        (M::POST, "/app/x", vec![cookie, ("origin", own.as_str())]),
        (M::POST, "/app/x", vec![cookie, ("origin", own_upper.as_str())]),
        (
            M::POST,
            "/app/x",
            vec![
                cookie,
                ("sec-fetch-site", "same-origin"),
                ("origin", "https://evil.example"),
            ],
        ),
        (M::DELETE, "/app/x", vec![cookie, ("sec-fetch-site", "none")]),
        (
            M::POST,
            "/app/x",
            vec![
                cookie,
                ("sec-fetch-site", "cross-site"),
                ("origin", "https://partner.example"),
            ],
        ),
        (M::POST, "/app/x", vec![cookie, ("origin", "https://admin.example:443")]),
        (M::POST, "/app/x", vec![cookie]),
        (
            M::GET,
            "/app/x",
            vec![
                cookie,
                ("sec-fetch-site", "cross-site"),
                ("origin", "https://evil.example"),
            ],
        ),
        (
            M::POST,
            "/keyed/x",
            vec![
                cookie,
                ("authorization", bearer.as_str()),
                ("origin", "https://evil.example"),
            ],
        ),
        (
            M::POST,
            "/open/x",
            vec![
                cookie,
                ("sec-fetch-site", "cross-site"),
                ("origin", "https://evil.example"),
            ],
        ),
        (
            M::POST,
            "/forms/x",
            vec![("cookie", "a=1; csrf_token=t0k3n"), ("x-csrf-token", "t0k3n")],
        ),
    ];
    for (method, path, headers) in passing {
        let resp = send_with(&gw, method.clone(), path, &headers).await;
        assert_eq!(resp.status(), 200, "{method} {path} {headers:?}");
    }
    // A credential header Pinpoint did not verify does not switch the check off, and what
    // a browser attaches on its own (Basic, Negotiate) counts like a cookie.
    for headers in [
        vec![
            cookie,
            ("authorization", "Bearer junk"),
            ("sec-fetch-site", "cross-site"),
        ],
        vec![
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("sec-fetch-site", "cross-site"),
        ],
        vec![cookie, ("x-api-key", ""), ("sec-fetch-site", "cross-site")],
    ] {
        let resp = send_with(&gw, M::POST, "/app/x", &headers).await;
        problem(resp, 403, "csrf.cross_site").await;
    }
    // Sec-Fetch-Site is read once: a second one is refused, not ignored.
    let resp = send_with(
        &gw,
        M::POST,
        "/app/x",
        &[
            cookie,
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-site", "cross-site"),
        ],
    )
    .await;
    problem(resp, 400, "request.header_repeated").await;
    // Cookies of any bytes beside the token do not hide it.
    let mut request = gw.http.post(gw.url("/forms/x")).header("x-csrf-token", "t0k3n");
    request = request.header(
        "cookie",
        reqwest::header::HeaderValue::from_bytes(b"theme=caf\xc3\xa9; csrf_token=t0k3n").unwrap(),
    );
    assert_eq!(request.send().await.unwrap().status(), 200);
    for headers in [
        vec![("cookie", "csrf_token=t0k3n"), ("x-csrf-token", "other")],
        vec![("cookie", "csrf_token=t0k3n")],
        vec![("x-csrf-token", "t0k3n")],
    ] {
        let resp = send_with(&gw, M::POST, "/forms/x", &headers).await;
        problem(resp, 403, "csrf.token_mismatch").await;
    }
    // Forwarded host and scheme count only from trusted proxies (none here).
    let resp = send_with(
        &gw,
        M::POST,
        "/app/x",
        &[
            cookie,
            ("origin", "https://shop.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example"),
        ],
    )
    .await;
    problem(resp, 403, "csrf.origin_mismatch").await;
}

#[tokio::test]
async fn csrf_behind_a_trusted_proxy_compares_the_forwarded_origin_and_has_a_report_mode() {
    use reqwest::Method as M;
    let config = format!(
        "[server]\ndata_dir = \"DATA_DIR\"\n[net]\ntrusted_proxies = [\"127.0.0.1/32\", \"::1/128\"]\n[csrf]\nmode = \"report\"\nrefuse_without_origin = true\n{CSRF_ROUTES}"
    );
    let gw = start(&config).await;
    let cookie = ("cookie", "session=s1");
    let forwarded = [("x-forwarded-proto", "https"), ("x-forwarded-host", "shop.example")];
    // The page's origin is what the client addressed, as the proxy reports it.
    let resp = send_with(
        &gw,
        M::POST,
        "/app/x",
        &[cookie, ("origin", "https://shop.example"), forwarded[0], forwarded[1]],
    )
    .await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(resp.status(), 200);
    let csrf = |d: &pinpoint_core::Decision| d.trace.iter().find(|t| t.layer == "csrf").cloned().unwrap();
    assert_eq!(csrf(&gw.decision(&id).await).mark, Mark::Pass);
    // Report mode: the proxy forgot the host; the request passes, the trace says it would not
    // have, and which origin was compared.
    let resp = send_with(&gw, M::POST, "/app/x", &[cookie, ("origin", "https://shop.example")]).await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(resp.status(), 200);
    let entry = csrf(&gw.decision(&id).await);
    assert_eq!(
        (entry.mark, entry.reason),
        (Mark::WouldDeny, Some(Reason::CsrfOriginMismatch))
    );
    assert!(entry
        .note
        .unwrap()
        .contains(&format!("compared with http://{}", gw.proxy)));
    // Neither header, with refuse_without_origin: would deny as origin_missing.
    let resp = send_with(&gw, M::POST, "/app/x", &[cookie]).await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let entry = csrf(&gw.decision(&id).await);
    assert_eq!(
        (entry.mark, entry.reason),
        (Mark::WouldDeny, Some(Reason::CsrfOriginMissing))
    );
}
