//! Scale-out with `[cluster] redis`: three `pinpoint serve` processes on one store share
//! their rate limits, quotas and heartbeats through the Redis server on this machine (each
//! test under its own key prefix); a Redis the test starts itself, stopped and started
//! again, shows each `on_backend_error` answer and the recovery.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::lifecycle::{free_port, ServeProcess};
use crate::poll_until;

/// A unique key prefix, and a guard that deletes its keys from the shared Redis.
pub(crate) struct Prefix(pub String);

/// `test` made unique to this process and moment: `test_<pid>_<nanoseconds>`.
fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{test}_{}_{nanos}", std::process::id())
}

impl Prefix {
    pub(crate) fn new(test: &str) -> Prefix {
        Prefix(format!("pinpoint-test:{}:", unique(test)))
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let keys = Command::new("redis-cli")
            .args(["-p", "6379", "--scan", "--pattern", &format!("{}*", self.0)])
            .output();
        if let Ok(out) = keys {
            let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect();
            if !keys.is_empty() {
                let _ = Command::new("redis-cli")
                    .args(["-p", "6379", "DEL"])
                    .args(&keys)
                    .output();
            }
        }
    }
}

/// A PostgreSQL database of the test's own on the server on this machine, dropped (with
/// its connections) when the guard goes.
pub(crate) struct OwnDatabase(pub String);

impl OwnDatabase {
    pub(crate) fn create(test: &str) -> OwnDatabase {
        let db = OwnDatabase(format!("pinpoint_it_{}", unique(test)));
        psql("postgres", &format!("CREATE DATABASE {}", db.0));
        db
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.0)
    }

    /// Runs `sql` in this database; its output, one row a line.
    pub(crate) fn psql(&self, sql: &str) -> String {
        psql(&self.0, sql)
    }
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0))
            .output();
    }
}

fn psql(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Replicas of one config on one store: (process, proxy address, api address).
struct Replicas {
    list: Vec<(ServeProcess, String, String)>,
    http: reqwest::Client,
    admin: String,
    _dir: tempfile::TempDir,
}

/// `count` replicas of one config (so one config revision): on one SQLite store (one
/// data directory) or, given a database, on PostgreSQL, each replica with the config in a
/// directory of its own (so its data directory is its own) and given the one pepper file.
async fn replicas(count: usize, redis: &str, prefix: &str, extra: &str, postgres: Option<&OwnDatabase>) -> Replicas {
    let dir = tempfile::tempdir().unwrap();
    let store = match postgres {
        Some(db) => format!("\n[store]\nurl = \"{}\"\npepper_file = \"../pepper\"\n", db.url()),
        None => String::new(),
    };
    let workdir = |i: usize| match postgres {
        Some(_) => dir.path().join(format!("replica-{i}")),
        None => dir.path().to_owned(),
    };
    let text = format!(
        r#"[server]
data_dir = "data"
workers = 1

[cluster]
redis = "{redis}"
key_prefix = "{prefix}"
heartbeat_ms = 200

[upstreams.main]
targets = ["builtin:echo"]

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
id = "lenient"
path_prefix = "/lenient"
upstream = "main"
auth = "required"

[[rate.limits]]
id = "per-org"
by = "org"
requests = 20
per_seconds = 3600
routes = ["limited"]

[[rate.limits]]
id = "lenient"
by = "org"
requests = 1000
per_seconds = 1
routes = ["lenient"]
on_backend_error = "allow"

[[rate.quotas]]
id = "daily"
period = "day"
requests = 10
routes = ["metered"]
{extra}{store}"#
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut list = Vec::new();
    // One at a time: the first creates the store and its bootstrap key.
    for i in 0..count {
        std::fs::create_dir_all(workdir(i)).unwrap();
        std::fs::write(workdir(i).join("webhook.secret"), "test-secret\n").unwrap();
        let config = workdir(i).join("pinpoint.toml");
        std::fs::write(&config, &text).unwrap();
        list.push(ServeProcess::serve_on_free_ports(&config, &workdir(i), &format!("replica-{i}")).await);
    }
    let admin = std::fs::read_to_string(workdir(0).join("data/bootstrap-admin.key"))
        .unwrap()
        .trim()
        .to_owned();
    Replicas {
        list,
        http,
        admin,
        _dir: dir,
    }
}

impl Replicas {
    /// A new key, made through the first replica's API.
    async fn key(&self) -> String {
        let created = crate::lifecycle::key_through_api(&self.http, &self.list[0].2, &self.admin).await;
        created["data"]["attributes"]["key"].as_str().unwrap().to_owned()
    }

    /// `GET path` at replica `i` with `key`: the status and the reason header.
    async fn get(&self, i: usize, path: &str, key: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("http://{}{path}", self.list[i].1))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let reason = resp
            .headers()
            .get("x-pinpoint-reason")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (resp.status().as_u16(), reason)
    }

    async fn health(&self, i: usize) -> serde_json::Value {
        self.http
            .get(format!("http://{}/healthz", self.list[i].2))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn three_replicas_share_one_rate_limit_one_quota_and_list_each_other() {
    share_limits_quotas_and_alerts(None).await;
}

#[tokio::test]
async fn three_replicas_on_postgres_share_one_rate_limit_one_quota_and_list_each_other() {
    let db = OwnDatabase::create("share");
    share_limits_quotas_and_alerts(Some(&db)).await;
}

async fn share_limits_quotas_and_alerts(postgres: Option<&OwnDatabase>) {
    let prefix = Prefix::new("share");
    // An alert on the refusals to come, to a webhook nobody answers: which replica
    // evaluates it is the question.
    let alert = format!(
        "\n[alerting]\nevaluate_every_ms = 200\n\n[[alerting.webhooks]]\nid = \"ops\"\nurl = \"http://127.0.0.1:{}/\"\nsecret_file = \"webhook.secret\"\nmax_attempts = 1\n\n[[alerts]]\nid = \"limited\"\nlayer = \"rate\"\nroute = \"limited\"\nwindow_minutes = 2\nmin_count = 5\nnotify = [\"ops\"]\n",
        free_port().await
    );
    let r = replicas(3, "redis://127.0.0.1:6379", &prefix.0, &alert, postgres).await;
    let key = r.key().await;
    // The key made at the first replica works at the others (they follow the store).
    for i in 1..3 {
        poll_until("the key known everywhere", || async {
            r.get(i, "/lenient", &key).await.0 == 200
        })
        .await;
    }

    // 20 requests an hour for the organization, across three replicas, round robin: 300
    // requests, exactly 20 through (none would be: the hour does not refill a request).
    let mut allowed = 0;
    for n in 0..300 {
        match r.get(n % 3, "/limited/x", &key).await {
            (200, _) => allowed += 1,
            (429, reason) => assert_eq!(reason, "rate.limited"),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(
        allowed, 20,
        "the ideal is 20 of 300 (93.3% refused); each replica alone would allow 60"
    );

    // A daily quota of 10 for the organization, spent across replicas.
    let mut answers = Vec::new();
    for n in 0..30 {
        answers.push(r.get(n % 3, "/metered", &key).await);
    }
    assert_eq!(answers.iter().filter(|(s, _)| *s == 200).count(), 10, "{answers:?}");
    assert!(
        answers[10..]
            .iter()
            .all(|(s, reason)| *s == 429 && reason == "quota.exhausted"),
        "{answers:?}"
    );

    // Every replica lists the three, on one revision.
    poll_until("three heartbeats", || async {
        r.health(0).await["cluster"]["replicas"]
            .as_array()
            .is_some_and(|l| l.len() == 3)
    })
    .await;
    let health = r.health(2).await;
    assert_eq!(health["cluster"]["redis"], "up");
    let revisions: Vec<_> = health["cluster"]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["revision"].clone())
        .collect();
    assert!(
        revisions.iter().all(|rev| *rev == health["config_revision"]),
        "{revisions:?}"
    );
    let text = crate::cli(&["cluster", "status"], &format!("http://{}", r.list[1].2), &r.admin).await;
    assert!(text.contains("3 replicas, one config revision."), "{text}");

    // The spike of refusals is announced once, by the one replica holding the alerts lease.
    let firing = |metrics: String| {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("pinpoint_alerts_total{")
                    && l.contains("alert=\"limited\"")
                    && l.contains("state=\"firing\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let metrics_of = |i: usize| {
        let (http, api, admin) = (r.http.clone(), r.list[i].2.clone(), r.admin.clone());
        async move {
            http.get(format!("http://{api}/metrics"))
                .bearer_auth(admin)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    poll_until("the alert fired", || async {
        let mut total = 0;
        for i in 0..3 {
            total += firing(metrics_of(i).await);
        }
        total > 0
    })
    .await;
    let mut counts = Vec::new();
    let mut leaders = 0;
    for i in 0..3 {
        counts.push(firing(metrics_of(i).await));
        leaders += usize::from(r.health(i).await["cluster"]["evaluates_alerts"] == true);
    }
    counts.sort();
    assert_eq!(counts, [0, 0, 1], "one replica fired it, once");
    assert_eq!(leaders, 1);
}

/// Polls `check` every 10 ms until it holds; the time it took, or a failure after `within`.
async fn converges<F, Fut>(what: &str, within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn replicas_on_postgres_follow_one_directory_and_lose_no_decision_when_it_goes() {
    let prefix = Prefix::new("pg-follow");
    let db = OwnDatabase::create("follow");
    let r = replicas(3, "redis://127.0.0.1:6379", &prefix.0, "", Some(&db)).await;
    let new_key = || async {
        let created = crate::lifecycle::key_through_api(&r.http, &r.list[0].2, &r.admin).await;
        let id = created["data"]["id"].as_str().unwrap().to_owned();
        (id, created["data"]["attributes"]["key"].as_str().unwrap().to_owned())
    };
    let revoke_at = |i: usize, id: String| {
        let (http, api, admin) = (r.http.clone(), r.list[i].2.clone(), r.admin.clone());
        async move {
            let resp = http
                .delete(format!("http://{api}/api/v2/api_keys/{id}"))
                .bearer_auth(admin)
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
        }
    };

    // A key made through A works on B and C at once (announced by NOTIFY), and revoked
    // through C it is refused on A within a second.
    let (_, steady) = new_key().await;
    let (id, key) = new_key().await;
    for i in 1..3 {
        converges("the new key at another replica", Duration::from_secs(1), || async {
            r.get(i, "/lenient", &key).await.0 == 200
        })
        .await;
    }
    revoke_at(2, id).await;
    converges("the revocation at A", Duration::from_secs(1), || async {
        r.get(0, "/lenient", &key).await == (401, "authn.key_revoked".to_owned())
    })
    .await;

    // A token issued by any replica verifies on every other (signing keys are in the
    // store, and each replica's new one reaches the others through the feed).
    for issuer in 0..3 {
        let resp = r
            .http
            .post(format!("http://{}/api/v2/tokens", r.list[issuer].2))
            .bearer_auth(&steady)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "token from replica {issuer}");
        let token: serde_json::Value = resp.json().await.unwrap();
        let token = token["data"]["attributes"]["access_token"].as_str().unwrap().to_owned();
        for verifier in 0..3 {
            assert_eq!(
                r.get(verifier, "/lenient", &token).await.0,
                200,
                "issued by {issuer}, used at {verifier}"
            );
        }
    }

    // The listeners' connections killed: a revocation made meanwhile is lost as a
    // notification and still reaches A within the 2 s the poll allows.
    let (id, key) = new_key().await;
    converges("the second key at A", Duration::from_secs(1), || async {
        r.get(0, "/lenient", &key).await.0 == 200
    })
    .await;
    let killed = db.psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND application_name = '{}'",
        "pinpoint-change-listener"
    ));
    assert_eq!(killed, "3", "one listener per replica");
    revoke_at(1, id).await;
    converges(
        "the revocation at A without its listener",
        Duration::from_secs(2),
        || async { r.get(0, "/lenient", &key).await == (401, "authn.key_revoked".to_owned()) },
    )
    .await;

    // PostgreSQL refuses A's connections for a while: the proxy answers from its
    // directory, API writes say the store is unavailable, refusals are spooled and all
    // reach the store once it is back.
    let r = &r;
    let refuse_at_a = |tag: &'static str| async move {
        for n in 0..20 {
            assert_eq!(r.get(0, &format!("/lenient/{tag}-{n}"), "pp_bogus_key").await.0, 401);
        }
    };
    refuse_at_a("before").await;
    psql(
        "postgres",
        &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false", db.0),
    );
    psql(
        "postgres",
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}'",
            db.0
        ),
    );
    refuse_at_a("during").await;
    let (still, _) = r.get(0, "/lenient", &steady).await;
    assert_eq!(still, 200, "served from the directory while the store is gone");
    let write = r
        .http
        .post(format!("http://{}/api/v2/api_keys", r.list[0].2))
        .bearer_auth(&r.admin)
        .json(&serde_json::json!({"data": {"type": "api_keys", "attributes": {"name": "while-down"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 503);
    assert_eq!(write.headers()["x-pinpoint-reason"], "store.unavailable");
    let health = r.health(0).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["store"]["backend"], "postgres");
    assert_eq!(health["store"]["reachable"], false);
    poll_until("the refusals spooled", || async {
        r.health(0).await["store"]["spooled_decision_bytes"].as_u64() > Some(0)
    })
    .await;
    psql(
        "postgres",
        &format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", db.0),
    );
    refuse_at_a("after").await;
    converges("every refusal in the store", Duration::from_secs(5), || async {
        db.psql("SELECT count(*) FROM decisions WHERE strpos(record, '/lenient/before-') > 0 OR strpos(record, '/lenient/during-') > 0 OR strpos(record, '/lenient/after-') > 0")
            == "60"
    })
    .await;
    let health = r.health(0).await;
    assert_eq!(health["store"]["reachable"], true);
    assert_eq!(health["store"]["spooled_decision_bytes"], 0);
}

/// A Redis server of the test's own, on a spare port, stopped by pid.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    async fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--enable-debug-command",
                "local",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        poll_until("redis-server ready", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        OwnRedis { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn redis_down_answers_as_each_limit_says_and_recovers_when_it_returns() {
    let mut redis = OwnRedis::start(free_port().await).await;
    let r = replicas(1, &format!("redis://127.0.0.1:{}", redis.port), "faults:", "", None).await;
    let key = r.key().await;
    assert_eq!(r.get(0, "/limited", &key).await.0, 200);
    assert_eq!(r.get(0, "/lenient", &key).await.0, 200);

    redis.stop();
    // Refusing limits answer 503 with the reason (never a 429 or 403); lenient ones let the
    // request through and trace the reason as a would-deny.
    let (status, reason) = r.get(0, "/limited", &key).await;
    assert_eq!((status, reason.as_str()), (503, "rate.backend_unavailable"));
    let resp = r
        .http
        .get(format!("http://{}/lenient", r.list[0].1))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let decision = format!("http://{}/api/v2/decisions/{id}", r.list[0].2);
    let fetch = || async { r.http.get(&decision).bearer_auth(&r.admin).send().await.unwrap() };
    poll_until("the lenient decision stored", || async {
        fetch().await.status() == 200
    })
    .await;
    let trace: serde_json::Value = fetch().await.json().await.unwrap();
    let text = trace.to_string();
    assert!(
        text.contains("rate.backend_unavailable") && text.contains("would_deny"),
        "{text}"
    );
    assert_eq!(r.health(0).await["cluster"]["redis"], "down");

    // Redis back on the same port: counted there again within a few seconds.
    let _redis = OwnRedis::start(redis.port).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while r.get(0, "/limited", &key).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "not back after Redis returned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(r.health(0).await["cluster"]["redis"], "up");

    // Redis stalls for two seconds: the quota's requests meanwhile are answered 503 (within
    // the timeout), and the scripts Redis runs when it wakes, after their deadline, count
    // nothing: the organization still has its whole quota of 10.
    let port = redis.port.to_string();
    let stall = std::thread::spawn(move || {
        Command::new("redis-cli")
            .args(["-p", &port, "DEBUG", "SLEEP", "2"])
            .output()
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let (status, reason) = r.get(0, "/metered", &key).await;
        assert_eq!((status, reason.as_str()), (503, "rate.backend_unavailable"));
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }
    stall.join().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut served = 0;
    while served == 0 {
        assert!(tokio::time::Instant::now() < deadline, "not back after the stall");
        match r.get(0, "/metered", &key).await {
            (200, _) => served += 1,
            (503, _) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("a request refused during the stall was counted: {other:?}"),
        }
    }
    for _ in 0..12 {
        if r.get(0, "/metered", &key).await.0 == 200 {
            served += 1;
        }
    }
    assert_eq!(served, 10, "the quota counts only the requests it served");

    // A reload that changes [cluster] cannot apply it: said, as degraded, until a restart.
    let config = r._dir.path().join("pinpoint.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("key_prefix = \"faults:\"", "key_prefix = \"other:\"");
    std::fs::write(&config, text).unwrap();
    poll_until("the reload flagged", || async {
        r.health(0).await["status"] == "degraded"
    })
    .await;
    let health = r.health(0).await;
    assert!(
        health["restart_required"].as_str().unwrap().contains("[cluster]"),
        "{health}"
    );
}

#[tokio::test]
async fn an_embedded_store_migrated_to_postgres_keeps_its_keys_and_decisions() {
    let db = OwnDatabase::create("migrate");
    let dir = tempfile::tempdir().unwrap();
    let routes = "[upstreams.main]\ntargets = [\"builtin:echo\"]\n\n[[routes]]\nid = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"main\"\nauth = \"required\"\n";
    let embedded = dir.path().join("embedded.toml");
    std::fs::write(&embedded, format!("[server]\ndata_dir = \"data\"\n\n{routes}")).unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let serve = ServeProcess::serve_on_free_ports(&embedded, dir.path(), "embedded").await;
    let api = serve.2.clone();
    let admin = std::fs::read_to_string(dir.path().join("data/bootstrap-admin.key")).unwrap();
    let admin = admin.trim();
    let created = crate::lifecycle::key_through_api(&http, &api, admin).await;
    let key = created["data"]["attributes"]["key"].as_str().unwrap().to_owned();
    let refused = http
        .get(format!("http://{}/orders/before-migration", serve.1))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let decisions = format!("http://{api}/api/v2/decisions?limit=50");
    poll_until("the refusal written", || async {
        let resp = http.get(&decisions).bearer_auth(admin).send().await.unwrap();
        resp.text().await.unwrap().contains("before-migration")
    })
    .await;
    drop(serve);

    let out = Command::new(env!("CARGO_BIN_EXE_pinpoint"))
        .args(["migrate", "--from", "sqlite:data", "--to", &db.url()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("api_keys") && l.split_whitespace().nth(1) == Some("2")),
        "{report}"
    );
    // Into a store that is no longer empty: refused, nothing merged.
    let again = Command::new(env!("CARGO_BIN_EXE_pinpoint"))
        .args(["migrate", "--from", "sqlite:data", "--to", &db.url()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        db.psql("SELECT count(*) FROM decisions WHERE strpos(record, '/orders/before-migration') > 0"),
        "1"
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("empty database"));

    // The same deployment on PostgreSQL: the key works, the admin key too.
    let shared = dir.path().join("shared.toml");
    std::fs::write(
        &shared,
        format!(
            "[server]\ndata_dir = \"replica\"\n\n[store]\nurl = \"{}\"\npepper_file = \"data/pepper\"\n\n{routes}",
            db.url()
        ),
    )
    .unwrap();
    let (_serve, proxy, api) = ServeProcess::serve_on_free_ports(&shared, dir.path(), "shared").await;
    let status = |key: String| {
        let (http, proxy) = (http.clone(), proxy.clone());
        async move {
            http.get(format!("http://{proxy}/orders/1"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(key.clone()).await, 200);
    assert_eq!(status("pp_0000000000000000_wrong".into()).await, 401);
    let health: serde_json::Value = http
        .get(format!("http://{api}/healthz"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["store"]["backend"], "postgres", "{health}");
    assert!(
        !dir.path().join("replica/bootstrap-admin.key").exists(),
        "the migrated store has its administrator: no new bootstrap key"
    );
    // Back to the embedded store by a reload: not applied, said until a restart.
    std::fs::write(&shared, format!("[server]\ndata_dir = \"replica\"\n\n{routes}")).unwrap();
    let healthz = format!("http://{api}/healthz");
    poll_until("the reload flagged", || async {
        let health: serde_json::Value = http
            .get(&healthz)
            .bearer_auth(admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        health["restart_required"]
            .as_str()
            .is_some_and(|r| r.contains("[store]"))
    })
    .await;
    assert_eq!(status(key.clone()).await, 200, "still on the store it opened");
}

#[test]
fn the_scale_out_example_config_is_valid() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/scale-out.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_pinpoint"))
        .args(["config", "check", file])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn replicas_started_together_on_a_new_postgres_store_all_serve() {
    let db = OwnDatabase::create("together");
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\ndata_dir = \"data\"\n\n[store]\nurl = \"{}\"\npepper_file = \"../pepper\"\n\n[upstreams.main]\ntargets = [\"builtin:echo\"]\n\n[[routes]]\nid = \"all\"\npath_prefix = \"/\"\nupstream = \"main\"\n",
        db.url()
    );
    let workdirs: Vec<_> = (0..3).map(|i| dir.path().join(format!("replica-{i}"))).collect();
    for workdir in &workdirs {
        std::fs::create_dir_all(workdir).unwrap();
        std::fs::write(workdir.join("pinpoint.toml"), &text).unwrap();
    }
    let start = |i: usize| {
        let workdir = workdirs[i].clone();
        async move { ServeProcess::serve_on_free_ports(&workdir.join("pinpoint.toml"), &workdir, "serve").await }
    };
    // All at once: one creates the schema, the pepper and the bootstrap key; the others
    // wait for it and serve.
    let (a, b, c) = tokio::join!(start(0), start(1), start(2));
    let bootstrapped = workdirs
        .iter()
        .filter(|w| w.join("data/bootstrap-admin.key").exists())
        .count();
    assert_eq!(bootstrapped, 1, "one bootstrap key, shown by one replica");
    assert_eq!(db.psql("SELECT count(*) FROM api_keys"), "1");
    drop((a, b, c));
}
