//! TLS termination and HTTP/2 on the proxy listener, with a real client (reqwest over
//! rustls): SNI picks between two certificates, a certificate replaced on disk serves the
//! next connection while open ones go on, a broken file keeps the old one serving, and
//! HTTP/2 (ALPN and h2c) is refused and allowed with the same reasons as HTTP/1.1.

use std::path::PathBuf;

use crate::*;

/// A test CA and the leaf certificates it signs, written as PEM files.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Pinpoint test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        Pki {
            ca,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Issues a certificate for `names` into `<file>.pem` / `<file>.key`; returns its DER.
    fn issue(&self, file: &str, names: &[&str]) -> Vec<u8> {
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.path(&format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{file}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A client builder that trusts only this CA, resolving `names` to `addr`.
    fn builder(&self, names: &[&str], addr: std::net::SocketAddr) -> reqwest::ClientBuilder {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem().as_bytes()).unwrap())
            .tls_info(true);
        for name in names {
            builder = builder.resolve(name, addr);
        }
        builder
    }

    /// A client that trusts only this CA, resolving `names` to `addr`.
    fn client(&self, names: &[&str], addr: std::net::SocketAddr) -> reqwest::Client {
        self.builder(names, addr).build().unwrap()
    }

    /// The same, offering HTTP/1.1 only.
    fn client_http1(&self, names: &[&str], addr: std::net::SocketAddr) -> reqwest::Client {
        self.builder(names, addr).http1_only().build().unwrap()
    }
}

fn tls_section(pki: &Pki, files: &[&str]) -> String {
    let certificates: Vec<String> = files
        .iter()
        .map(|f| {
            format!(
                "{{ cert = {:?}, key = {:?} }}",
                pki.path(&format!("{f}.pem")).display().to_string(),
                pki.path(&format!("{f}.key")).display().to_string()
            )
        })
        .collect();
    format!("certificates = [{}]", certificates.join(", "))
}

/// The echo config with TLS on the proxy listener (its `[server]` section extended).
fn tls_config(pki: &Pki, files: &[&str], server_extra: &str) -> String {
    let config = config_with("\"builtin:echo\"", "", "");
    let tls = tls_section(pki, files);
    config.replace(
        "drain_timeout_ms = 5000\n",
        &format!("drain_timeout_ms = 5000\n{server_extra}\nproxy_tls = {{ {tls} }}\n"),
    )
}

fn served_certificate(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("a TLS response names its certificate")
        .to_vec()
}

#[tokio::test]
async fn sni_picks_the_certificate_and_http2_is_negotiated() {
    let pki = Pki::new();
    let alpha = pki.issue("alpha", &["alpha.test"]);
    let beta = pki.issue("beta", &["beta.test", "*.beta.test"]);
    let gw = start(&tls_config(&pki, &["alpha", "beta"], "")).await;
    let port = gw.proxy.port();
    let client = pki.client(&["alpha.test", "beta.test", "api.beta.test"], gw.proxy);

    for (name, expected) in [("alpha.test", &alpha), ("beta.test", &beta), ("api.beta.test", &beta)] {
        let resp = client
            .get(format!("https://{name}:{port}/orders/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{name}");
        assert_eq!(
            &served_certificate(&resp),
            expected,
            "{name} is served its own certificate"
        );
        assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN offers h2");
        let echoed: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "{echoed}");
        assert_eq!(echoed["headers"]["host"], format!("{name}:{port}"), "{echoed}");
    }

    // HTTP/1.1 over TLS too, when that is all the client offers.
    let h1 = pki.client_http1(&["alpha.test"], gw.proxy);
    let resp = h1
        .get(format!("https://alpha.test:{port}/orders/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, reqwest::Version::HTTP_11)
    );

    // Plain HTTP on a TLS listener is not served.
    assert!(gw.http.get(gw.url("/orders/1")).send().await.is_err());
}

#[tokio::test]
async fn http2_refusals_carry_the_same_reasons_and_records_as_http1() {
    let pki = Pki::new();
    pki.issue("alpha", &["alpha.test"]);
    let gw = start(&tls_config(&pki, &["alpha"], "")).await;
    let port = gw.proxy.port();
    let h2 = pki.client(&["alpha.test"], gw.proxy);
    let h1 = pki.client_http1(&["alpha.test"], gw.proxy);
    let url = |path: &str| format!("https://alpha.test:{port}{path}");
    for (method, path, status, reason) in [
        ("GET", "/nowhere", 404, "route.not_found"),
        ("POST", "/admin/users", 403, "policy.explicit_deny"),
        ("DELETE", "/orders/1", 405, "route.method_not_allowed"),
        ("GET", "/orders/../admin/x", 200, ""),
    ] {
        let mut seen = Vec::new();
        for (client, version) in [(&h1, reqwest::Version::HTTP_11), (&h2, reqwest::Version::HTTP_2)] {
            let resp = client.request(method.parse().unwrap(), url(path)).send().await.unwrap();
            assert_eq!(resp.version(), version);
            assert_eq!(resp.status(), status, "{method} {path} over {version:?}");
            let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            if !reason.is_empty() {
                assert_eq!(body["reason"], reason, "{method} {path} over {version:?}: {body}");
            }
            let d = gw.decision(&request_id).await;
            seen.push((d.status, d.reason, d.path.clone(), d.route.clone(), d.host.clone()));
        }
        assert_eq!(seen[0], seen[1], "{method} {path}: the same decision either way");
    }
}

#[tokio::test]
async fn h2c_only_where_enabled() {
    let gw = start(&config_with("\"builtin:echo\"", "", "")).await;
    let prior_knowledge = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    assert!(
        prior_knowledge.get(gw.url("/orders/1")).send().await.is_err(),
        "h2c is off by default"
    );
    // Also when the preface comes slowly: the listener waits for it rather than let it by.
    let mut slow = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    slow.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = slow.write_all(b"RI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    assert!(answer.is_empty(), "no HTTP/2 frames: {answer:?}");
    assert_eq!(gw.http.get(gw.url("/orders/1")).send().await.unwrap().status(), 200);

    let text = config_with("\"builtin:echo\"", "", "")
        .replace("drain_timeout_ms = 5000\n", "drain_timeout_ms = 5000\nh2c = true\n");
    let gw = start(&text).await;
    let resp = prior_knowledge.get(gw.url("/orders/1")).send().await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, reqwest::Version::HTTP_2)
    );
    let resp = prior_knowledge.get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "route.not_found");
    // Cookies split over several HTTP/2 fields reach the upstream as one, joined.
    let resp = prior_knowledge
        .get(gw.url("/orders/1"))
        .header("cookie", "a=1")
        .header("cookie", "c=3")
        .send()
        .await
        .unwrap();
    let echoed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echoed["headers"]["cookie"], "a=1; c=3", "{echoed}");
    // HTTP/1.1 still works on the same listener.
    assert_eq!(gw.http.get(gw.url("/orders/1")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_serves_the_next_connection() {
    let pki = Pki::new();
    let first = pki.issue("alpha", &["alpha.test"]);
    let gw = start(&tls_config(&pki, &["alpha"], "")).await;
    let port = gw.proxy.port();
    let url = format!("https://alpha.test:{port}/orders/1");
    // One client keeps its connection open across the rotation.
    let kept = pki.client(&["alpha.test"], gw.proxy);
    assert_eq!(served_certificate(&kept.get(&url).send().await.unwrap()), first);

    let second = pki.issue("alpha", &["alpha.test"]);
    assert_ne!(first, second);
    poll_until("the new certificate is served", || async {
        let fresh = pki.client(&["alpha.test"], gw.proxy);
        fresh
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| served_certificate(&r) == second)
    })
    .await;
    // The connection opened before still works, on the certificate it began with.
    let resp = kept.get(&url).send().await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), served_certificate(&resp)),
        (200, first.clone())
    );

    // A broken file is refused; the certificate serving keeps serving.
    std::fs::write(pki.path("alpha.pem"), "not a certificate").unwrap();
    poll_until("the broken certificate is rejected", || async {
        gw.metrics().await.lines().any(|l| {
            l.starts_with("pinpoint_tls_reloads_total") && l.contains("result=\"rejected\"") && l.contains("proxy")
        })
    })
    .await;
    let fresh = pki.client(&["alpha.test"], gw.proxy);
    let resp = fresh.get(&url).send().await.unwrap();
    assert_eq!((resp.status().as_u16(), served_certificate(&resp)), (200, second));
}

#[tokio::test]
async fn a_config_with_an_unreadable_certificate_is_an_error_naming_the_file() {
    let pki = Pki::new();
    pki.issue("alpha", &["alpha.test"]);
    std::fs::write(
        pki.path("alpha.key"),
        "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let config_path = pki.path("pinpoint.toml");
    let text = tls_config(&pki, &["alpha"], "").replace("DATA_DIR", &pki.path("data").display().to_string());
    std::fs::write(&config_path, text).unwrap();
    let error = pinpoint_gateway::runtime::load_file(&config_path)
        .expect_err("refused")
        .to_string();
    assert!(error.contains(&pki.path("alpha.key").display().to_string()), "{error}");

    // And a missing file, relative to the config's directory.
    let text = String::from(
        "[server]\ndata_dir = \"data\"\nproxy_tls = { certificates = [{ cert = \"missing.pem\", key = \"alpha.key\" }] }\n\n\
         [upstreams.main]\ntargets = [\"builtin:echo\"]\n\n[[routes]]\nid = \"all\"\npath_prefix = \"/\"\nupstream = \"main\"\n"
    );
    std::fs::write(&config_path, text).unwrap();
    let error = pinpoint_gateway::runtime::load_file(&config_path)
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains(&pki.path("missing.pem").display().to_string()),
        "{error}"
    );
}

impl Pki {
    /// A client certificate for `cn` with `uri` as subjectAltName; returns PEM (chain, key).
    fn client_identity(&self, cn: &str, uri: &str) -> reqwest::Identity {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        reqwest::Identity::from_pem(format!("{}{}", cert.pem(), key.serialize_pem()).as_bytes()).unwrap()
    }

    fn client_with(&self, identity: Option<reqwest::Identity>, addr: std::net::SocketAddr) -> reqwest::Client {
        let builder = self.builder(&["alpha.test"], addr);
        match identity {
            Some(identity) => builder.identity(identity),
            None => builder,
        }
        .build()
        .unwrap()
    }
}

fn mtls_config(pki: &Pki, required_at_handshake: bool) -> String {
    let tls = tls_section(pki, &["alpha"]);
    let ca = pki.path("ca.pem").display().to_string();
    config_with(
        "\"builtin:echo\"",
        "",
        r#"
[[routes]]
id = "secure"
path_prefix = "/secure"
upstream = "main"
client_cert_required = true

[[routes]]
id = "billing"
path_prefix = "/billing"
upstream = "main"
client_cert_allow = ["spiffe://acme/billing"]

[[routes]]
id = "by-subject"
path_prefix = "/by-subject"
upstream = "main"
client_cert_allow = ["CN=billing"]
"#,
    )
    .replace(
        "drain_timeout_ms = 5000\n",
        &format!(
            "drain_timeout_ms = 5000\nproxy_tls = {{ {tls}, client_ca = {ca:?}, client_cert_required = {required_at_handshake} }}\n"
        ),
    )
}

#[tokio::test]
async fn client_certificates_identify_callers_on_routes_that_ask_for_them() {
    let pki = Pki::new();
    pki.issue("alpha", &["alpha.test"]);
    std::fs::write(pki.path("ca.pem"), pki.ca_pem()).unwrap();
    let gw = start(&mtls_config(&pki, false)).await;
    let url = |path: &str| format!("https://alpha.test:{}{path}", gw.proxy.port());
    let anonymous = pki.client_with(None, gw.proxy);
    let billing = pki.client_with(Some(pki.client_identity("billing", "spiffe://acme/billing")), gw.proxy);
    let other = pki.client_with(Some(pki.client_identity("other", "spiffe://acme/other")), gw.proxy);

    // Routes that do not ask serve clients without a certificate.
    assert_eq!(anonymous.get(url("/orders/1")).send().await.unwrap().status(), 200);
    problem(
        anonymous.get(url("/secure/x")).send().await.unwrap(),
        401,
        "authn.client_cert_missing",
    )
    .await;

    let resp = billing
        .get(url("/secure/x"))
        .header("x-pinpoint-client-cert-subject", "CN=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let echoed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        echoed["headers"]["x-pinpoint-client-cert-subject"], "CN=billing",
        "{echoed}"
    );
    assert_eq!(
        echoed["headers"]["x-pinpoint-client-cert-sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    let d = gw.decision(&request_id).await;
    assert_eq!(d.client_cert.as_deref(), Some("CN=billing"));
    let authn = d.trace.iter().find(|t| t.layer == "authn").unwrap();
    assert_eq!(authn.rule_id.as_deref(), Some("client-cert CN=billing"), "{d:?}");

    // An allow list names certificates by subjectAltName.
    assert_eq!(billing.get(url("/billing/x")).send().await.unwrap().status(), 200);
    problem(
        other.get(url("/billing/x")).send().await.unwrap(),
        403,
        "authn.client_cert_not_allowed",
    )
    .await;
    // A name of one kind never passes for another: a URI that reads like a subject, a
    // subject whose value holds a comma.
    let posing = pki.client_with(Some(pki.client_identity("mallory", "CN=billing")), gw.proxy);
    problem(
        posing.get(url("/by-subject/x")).send().await.unwrap(),
        403,
        "authn.client_cert_not_allowed",
    )
    .await;
    let comma = pki.client_with(Some(pki.client_identity("billing,O=acme", "spiffe://acme/x")), gw.proxy);
    let resp = comma.get(url("/secure/x")).send().await.unwrap();
    let echoed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        echoed["headers"]["x-pinpoint-client-cert-subject"],
        "CN=billing\\,O=acme"
    );
    assert_eq!(billing.get(url("/by-subject/x")).send().await.unwrap().status(), 200);
    // A forged header without a certificate is no certificate.
    problem(
        anonymous
            .get(url("/secure/x"))
            .header("x-pinpoint-client-cert-subject", "CN=billing")
            .send()
            .await
            .unwrap(),
        401,
        "authn.client_cert_missing",
    )
    .await;

    // Required at the handshake: no certificate, no connection.
    let gw = start(&mtls_config(&pki, true)).await;
    let anonymous = pki.client_with(None, gw.proxy);
    let url = |path: &str| format!("https://alpha.test:{}{path}", gw.proxy.port());
    assert!(anonymous.get(url("/orders/1")).send().await.is_err());
    let billing = pki.client_with(Some(pki.client_identity("billing", "spiffe://acme/billing")), gw.proxy);
    assert_eq!(billing.get(url("/orders/1")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_mapped_client_certificate_authenticates_as_its_principal() {
    use pinpoint_core::identity::PrincipalKind;
    let pki = Pki::new();
    pki.issue("alpha", &["alpha.test"]);
    std::fs::write(pki.path("ca.pem"), pki.ca_pem()).unwrap();
    let (dir, store, admin_key) = fresh_store().await;
    let org = store.create_org("acme").await.unwrap();
    let reader = store
        .create_role(&org.id, "reader", &[String::from("orders:read")])
        .await
        .unwrap();
    let billing = store
        .create_principal(&org.id, PrincipalKind::ServiceAccount, "billing", None)
        .await
        .unwrap();
    store.assign_role(&billing.id, &reader.id).await.unwrap();
    let text = mtls_config(&pki, false).replace(
        "[[policy.rules]]",
        &format!(
            "[[routes]]\nid = \"private\"\npath_prefix = \"/private\"\nupstream = \"main\"\nauth = \"required\"\n\
             permissions = {{ GET = \"orders:read\", POST = \"orders:write\" }}\nmethods = [\"GET\", \"POST\"]\n\n\
             [[authn.client_certs]]\ncertificate = \"spiffe://acme/billing\"\nprincipal = \"{}\"\n\n[[policy.rules]]",
            billing.id
        ),
    );
    let gw = start_in(dir, store, admin_key, &text).await;
    let url = |path: &str| format!("https://alpha.test:{}{path}", gw.proxy.port());
    let as_billing = pki.client_with(Some(pki.client_identity("billing", "spiffe://acme/billing")), gw.proxy);
    let unmapped = pki.client_with(Some(pki.client_identity("other", "spiffe://acme/other")), gw.proxy);

    // The certificate is the credential: billing's roles apply, in billing's organization.
    let resp = as_billing.get(url("/private/1")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let echoed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        echoed["headers"]["x-pinpoint-principal"],
        billing.id.as_str(),
        "{echoed}"
    );
    let d = gw.decision(&request_id).await;
    let caller = d.caller.clone().expect("a caller");
    assert_eq!(caller.principal_id.as_deref(), Some(billing.id.as_str()));
    assert_eq!(caller.credential, pinpoint_core::CredentialKind::ClientCert);
    problem(
        as_billing.post(url("/private/1")).send().await.unwrap(),
        403,
        "authz.permission_missing",
    )
    .await;
    // A certificate no mapping names is no credential.
    problem(
        unmapped.get(url("/private/1")).send().await.unwrap(),
        401,
        "authn.credentials_missing",
    )
    .await;
}
