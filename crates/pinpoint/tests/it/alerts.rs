//! Spike alerts end to end: a rule on the live proxy's rollups fires after a config reload,
//! names the revision, the callers and the routes, links the decisions query, and resolves;
//! deliveries reach a real webhook receiver (Python, independent of Pinpoint's code) that
//! verifies each signature and fails the first attempt, so the retry is seen too.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::access::world;

const PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/py");

/// The receiver process, killed by pid when dropped.
struct Receiver {
    child: Child,
    port: u16,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    /// Starts it and waits for the port it prints once listening.
    async fn start(secret: std::path::PathBuf, out: std::path::PathBuf) -> Receiver {
        tokio::task::spawn_blocking(move || {
            let mut child = Command::new("python3")
                .arg(format!("{PY}/webhook_receiver.py"))
                .arg(&secret)
                .arg(&out)
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 runs");
            let mut line = String::new();
            let stdout = child.stdout.take().unwrap();
            std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
            let port = line.trim().strip_prefix("port ").unwrap().parse().unwrap();
            Receiver { child, port }
        })
        .await
        .unwrap()
    }
}

/// What the receiver wrote down so far.
fn deliveries(out: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Polls until `check` holds, up to `limit`.
async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_spike_after_a_reload_fires_names_the_revision_and_resolves_with_signed_retried_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("webhook.secret");
    std::fs::write(&secret, "s3cret-for-the-test\n").unwrap();
    let out = dir.path().join("deliveries.jsonl");
    let receiver = Receiver::start(secret.clone(), out.clone()).await;
    let port = receiver.port;
    let w = world(&format!(
        r#"
[alerting]
evaluate_every_ms = 200

[[alerting.webhooks]]
id = "ops"
url = "http://127.0.0.1:{port}/hook"
secret_file = "{secret}"

[[alerting.webhooks]]
id = "chat"
url = "http://127.0.0.1:{port}/slack"
format = "slack"

[[alerts]]
id = "orders-permission-spike"
reason = "authz.permission_missing"
route = "orders"
window_minutes = 1
min_count = 5
ratio = 3.0
cooldown_minutes = 0
notify = ["ops", "chat"]
"#,
        secret = secret.display()
    ))
    .await;
    let gw = &w.gw;

    // A reload, then a wave of refusals: bob may read orders, not write them. Not in a
    // minute's last seconds, so the one-minute window still holds the wave when evaluated.
    let before = gw.revision().await;
    let text = std::fs::read_to_string(&gw.config_path).unwrap() + "\n# a change\n";
    std::fs::write(&gw.config_path, text).unwrap();
    crate::poll_until("the reload", || async { gw.revision().await != before }).await;
    let after = gw.revision().await;
    let into_minute = pinpoint_store::now_ms().rem_euclid(60_000);
    if into_minute > 50_000 {
        tokio::time::sleep(Duration::from_millis((60_500 - into_minute) as u64)).await;
    }
    for _ in 0..8 {
        let resp = gw
            .http
            .post(gw.url("/orders/1"))
            .bearer_auth(&w.bob_key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
    }

    // Fired: first attempt refused (503), retried, each signed and verified.
    wait_for("the firing alert, retried", Duration::from_secs(15), || {
        deliveries(&out)
            .iter()
            .any(|d| d["path"] == "/hook" && d["status"] == 204)
    })
    .await;
    let hook: Vec<_> = deliveries(&out).into_iter().filter(|d| d["path"] == "/hook").collect();
    assert_eq!(hook.len(), 2, "one failed attempt, one retry: {hook:?}");
    assert_eq!(
        (hook[0]["status"].as_u64(), hook[1]["status"].as_u64()),
        (Some(503), Some(204))
    );
    assert_eq!(
        hook[0]["delivery"], hook[1]["delivery"],
        "a retry keeps its delivery id"
    );
    assert_eq!(
        hook[1]["delivery"], hook[1]["body"]["id"],
        "the id is in the signed body too"
    );
    assert!(hook.iter().all(|d| d["verified"] == true), "{hook:?}");
    let alert = &hook[1]["body"];
    assert_eq!(alert["state"], "firing");
    assert_eq!(alert["alert"], "orders-permission-spike");
    assert_eq!(alert["count"], 8);
    assert_eq!(alert["status"], 403);
    assert_eq!(
        alert["top"]["routes"][0],
        serde_json::json!({"route": "orders", "count": 8})
    );
    assert_eq!(
        alert["top"]["callers"][0],
        serde_json::json!({"caller": w.bob_id, "count": 8})
    );
    assert_eq!(alert["config"]["revision"], after);
    assert_eq!(alert["config"]["loaded_before"]["revision"], after);
    assert_eq!(alert["config"]["loaded_before"]["previous"], before);
    let summary = alert["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("403 authz.permission_missing on orders rose from none to 8")
            && (summary.contains(&format!("within a minute of loading revision {after}"))
                || summary.contains(&format!("after revision {after} was loaded"))),
        "{summary}"
    );
    // The link lists exactly the refusals behind it.
    let link = alert["links"]["decisions"].as_str().unwrap();
    let path = link.strip_prefix(&format!("http://{}", gw.api)).expect(link);
    let listed = gw.api_json(path, Some(&gw.admin_key)).await;
    let listed = listed["data"].as_array().unwrap();
    assert_eq!(listed.len(), 8, "{link}");

    // The Slack webhook got the same alert as a Slack message, unsigned (no secret).
    let slack: Vec<_> = deliveries(&out).into_iter().filter(|d| d["path"] == "/slack").collect();
    assert_eq!(slack.len(), 1, "{slack:?}");
    assert_eq!(slack[0]["signed"], false);
    let text = slack[0]["body"]["text"].as_str().unwrap();
    assert!(
        text.starts_with("[FIRING] orders-permission-spike: 403 authz.permission_missing"),
        "{text}"
    );
    assert!(slack[0]["body"]["blocks"][0]["text"]["text"]
        .as_str()
        .unwrap()
        .contains(&w.bob_id));

    // Deduplicated while the wave lasts; resolved once a whole window (a minute) has passed
    // without a breach, after the minute that holds the wave.
    wait_for("the resolved alert", Duration::from_secs(150), || {
        deliveries(&out)
            .iter()
            .any(|d| d["path"] == "/hook" && d["body"]["state"] == "resolved" && d["status"] == 204)
    })
    .await;
    let states: Vec<_> = deliveries(&out)
        .into_iter()
        .filter(|d| d["path"] == "/slack")
        .map(|d| {
            d["body"]["text"]
                .as_str()
                .unwrap()
                .split(']')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(states, ["[FIRING", "[RESOLVED"]);
    let resolved = deliveries(&out)
        .into_iter()
        .rfind(|d| d["path"] == "/hook" && d["status"] == 204)
        .unwrap();
    assert!(resolved["verified"] == true);
    let summary = resolved["body"]["summary"].as_str().unwrap();
    assert!(summary.contains("is back to normal"), "{summary}");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("pinpoint_alert_deliveries_total{webhook=\"ops\",result=\"retried\"}"),
        "{metrics}"
    );
    drop(receiver);
}

#[tokio::test]
async fn alert_config_mistakes_are_named_and_an_unreadable_secret_refuses_the_config() {
    let source = |extra: &str| {
        format!(
            "[upstreams.echo]\ntargets = [\"builtin:echo\"]\n[[routes]]\nid = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"echo\"\n{extra}"
        )
    };
    let errors = pinpoint_core::config::Config::parse(
        &source(
            "[[alerting.webhooks]]\nid = \"ops\"\nurl = \"ftp://x\"\n\
             [[alerts]]\nid = \"a\"\nreason = \"authz.nope\"\nroute = \"nowhere\"\nratio = 0.5\nwindow_minutes = 0\nnotify = [\"pager\"]\n",
        ),
        "test.toml",
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "url must be an http:// or https:// URL",
        "needs secret_file",
        "`authz.nope` is not a reason code",
        "names route `nowhere`",
        "ratio must be a number of at least 1.0",
        "window_minutes must be 1 to 60",
        "notifies webhook `pager`",
    ] {
        assert!(errors.contains(expected), "{expected}: {errors}");
    }
    // A secret file that cannot be read refuses the whole config, naming the webhook.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pinpoint.toml");
    std::fs::write(
        &path,
        source(
            "[[alerting.webhooks]]\nid = \"ops\"\nurl = \"http://127.0.0.1:9/\"\nsecret_file = \"missing.secret\"\n",
        ),
    )
    .unwrap();
    let error = pinpoint_gateway::runtime::load_file(&path).unwrap_err().to_string();
    assert!(
        error.contains("webhook `ops`: secret_file") && error.contains("missing.secret"),
        "{error}"
    );
}
