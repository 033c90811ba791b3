//! Pinpoint's integration tests: one binary, real sockets, real HTTP clients, real
//! upstreams. Each test starts its own gateway on port 0 with its own data directory.

mod access;
mod alerts;
mod api;
mod architecture;
mod audits;
mod canonical;
mod cloudauth;
mod cluster;
mod decision_log;
mod evaluation;
mod grpc;
mod identity_api;
mod lifecycle;
#[cfg(feature = "otlp")]
mod otlp;
mod proxy;
mod tls;
mod upstreams;
mod waf;
mod waf_corpus;
mod websocket;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pinpoint_core::config::Config;
use pinpoint_core::Decision;
use pinpoint_gateway::{Gateway, Listeners};
pub use pinpoint_store::prelude::*;
use pinpoint_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A gateway running in this process.
pub struct TestGateway {
    pub proxy: SocketAddr,
    pub api: SocketAddr,
    pub store: Store,
    pub admin_key: String,
    pub config_path: PathBuf,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// Appended to test configs without a `[decision_log]` of their own.
pub const KEEP_EVERY_DECISION: &str = "\n[decision_log]\nsample_allowed = 1.0\n";

/// Starts a gateway with `config` (TOML; `DATA_DIR` is replaced by a fresh temp dir).
pub async fn start(config: &str) -> TestGateway {
    let (dir, store, admin_key) = fresh_store().await;
    start_in(dir, store, admin_key, config).await
}

/// Whether this run's in-process gateways are on PostgreSQL (`PINPOINT_IT_STORE=postgres`;
/// `.ci/run` runs the suite both ways). Gateways started as processes from config files
/// use what their config says.
pub fn on_postgres() -> bool {
    std::env::var("PINPOINT_IT_STORE").is_ok_and(|v| v == "postgres")
}

/// A store of the test's own on the PostgreSQL server on this machine: one database for
/// the run (those of earlier runs whose process is gone are dropped first), a schema for
/// each store, chosen by the URL's `search_path`.
async fn postgres_store(data_dir: &std::path::Path) -> Store {
    use sqlx::{Connection, Executor, Row};
    const SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";
    static RUN: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    let database = RUN
        .get_or_init(|| async {
            let mut server = sqlx::PgConnection::connect(SERVER)
                .await
                .expect("PostgreSQL on 127.0.0.1:5432");
            let stale = server
                .fetch_all("SELECT datname::TEXT FROM pg_database WHERE datname LIKE 'pinpoint_it_run_%'")
                .await
                .unwrap();
            for row in stale {
                let name: String = row.get(0);
                let pid = name.rsplit('_').next().unwrap_or_default();
                if !std::path::Path::new("/proc").join(pid).exists() {
                    let _ = server
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            }
            let name = format!("pinpoint_it_run_{}", std::process::id());
            server
                .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await
                .unwrap();
            server
                .execute(format!("CREATE DATABASE {name}").as_str())
                .await
                .unwrap();
            name
        })
        .await;
    static SCHEMAS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let schema = format!("t{}", SCHEMAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    conn.execute(format!("CREATE SCHEMA {schema}").as_str()).await.unwrap();
    let url = format!("{url}?options=-c%20search_path%3D{schema}");
    Store::connect(&url, &data_dir.join("pepper"), data_dir)
        .await
        .expect("PostgreSQL store")
}

/// A temp dir with a bootstrapped store in `<dir>/data`, for tests that seed it first.
pub async fn fresh_store() -> (tempfile::TempDir, Store, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = match on_postgres() {
        true => postgres_store(&dir.path().join("data")).await,
        false => Store::open(&dir.path().join("data")).await.expect("store"),
    };
    let admin_key = store
        .bootstrap_admin_key()
        .await
        .expect("bootstrap")
        .expect("fresh store")
        .key;
    (dir, store, admin_key)
}

/// Starts a gateway on an already-seeded store.
pub async fn start_in(dir: tempfile::TempDir, store: Store, admin_key: String, config: &str) -> TestGateway {
    // Warnings and errors of the gateway show in a failing test's output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_test_writer()
        .try_init();
    let mut text = config.replace("DATA_DIR", &dir.path().join("data").display().to_string());
    if !text.contains("[decision_log]") {
        // Tests read allowed requests' decisions back, so they keep every record; the
        // sampling tests set their own `[decision_log]`.
        text.push_str(KEEP_EVERY_DECISION);
    }
    if let Some(url) = store.postgres_url().filter(|_| !text.contains("[store]")) {
        // The config names the store the gateway runs on (a reload compares them; the CLI
        // reads it).
        text.push_str(&format!("\n[store]\nurl = \"{url}\"\n"));
    }
    let config_path = dir.path().join("pinpoint.toml");
    std::fs::write(&config_path, &text).expect("write config");
    let config = Config::parse(&text, &config_path.display().to_string()).expect("valid test config");
    let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let api = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
    let (proxy_addr, api_addr) = (proxy.local_addr().unwrap(), api.local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    let gateway = Gateway {
        config,
        config_path: Some(config_path.clone()),
        store: store.clone(),
        listen_override: Default::default(),
    };
    let task = tokio::spawn(async move {
        pinpoint_gateway::run(gateway, Listeners { proxy, api }, async {
            let _ = rx.await;
        })
        .await
        .expect("gateway runs");
    });
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let gw = TestGateway {
        proxy: proxy_addr,
        api: api_addr,
        store,
        admin_key,
        config_path,
        http,
        shutdown: Some(tx),
        task: Some(task),
        _dir: dir,
    };
    gw.wait_ready().await;
    gw
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    async fn wait_ready(&self) {
        poll_until("gateway ready", || async {
            self.http
                .get(self.api_url("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }

    /// The newest stored decision for `request_id` (Pinpoint's id or the client's own),
    /// waiting for the writer to flush it.
    pub async fn decision(&self, request_id: &str) -> Decision {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(d) = self.store.decision(request_id).await.expect("store readable") {
                return d;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no decision stored for {request_id}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Re-reads a principal into the running gateway's directory (after a direct store change),
    /// the way the API does after its own changes.
    pub async fn services_refresh_principal(&self, id: &str) {
        let resp = self
            .http
            .patch(self.api_url(&format!("/api/v2/users/{id}")))
            .bearer_auth(&self.admin_key)
            .json(&serde_json::json!({"data": {"type": "users", "attributes": {}}}))
            .send()
            .await
            .unwrap();
        if resp.status() != 200 {
            let resp = self
                .http
                .patch(self.api_url(&format!("/api/v2/service_accounts/{id}")))
                .bearer_auth(&self.admin_key)
                .json(&serde_json::json!({"data": {"type": "service_accounts", "attributes": {}}}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "refresh {id}");
        }
    }

    /// `GET path` on the api listener, with `bearer` if given.
    pub async fn api_get(&self, path: &str, bearer: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.api_url(path));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// The JSON body of `GET path` on the api listener, with `bearer` if given.
    pub async fn api_json(&self, path: &str, bearer: Option<&str>) -> serde_json::Value {
        self.api_get(path, bearer).await.json().await.unwrap()
    }

    /// Revokes `key` (the whole `pp_...` text) through the API, as the bootstrap admin.
    pub async fn revoke_key(&self, key: &str) {
        let id = pinpoint_core::keys::parse(key).unwrap().id.to_owned();
        let resp = self
            .http
            .delete(self.api_url(&format!("/api/v2/api_keys/{id}")))
            .bearer_auth(&self.admin_key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204, "revoking key {id}");
    }

    /// The config revision `/healthz` reports.
    pub async fn revision(&self) -> String {
        let v = self.api_json("/healthz", None).await;
        v["config_revision"].as_str().unwrap().to_owned()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.api_get("/metrics", None).await.text().await.unwrap()
    }

    /// Stops the gateway gracefully, keeping its data directory for a restart.
    pub async fn stop_and_keep(mut self) -> (tempfile::TempDir, Store, String) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("gateway task");
        }
        (self._dir, self.store, self.admin_key)
    }

    /// Stops the gateway gracefully and waits for it.
    pub async fn stop(mut self) -> Store {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("gateway task");
        }
        self.store.clone()
    }
}

/// Polls `check` every 20 ms until it holds, failing after 10 s.
/// Runs `pinpoint ARGS --api API --key KEY` (a CLI command against a running API), asserts
/// it succeeded, and returns what it printed.
pub async fn cli(args: &[&str], api: &str, key: &str) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pinpoint"));
    command
        .args(args)
        .args(["--api", api, "--key", key])
        .env("NO_PROXY", "*");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub async fn poll_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A config with one route `/orders` (GET, POST) to `targets`, and extra TOML appended.
pub fn config_with(targets: &str, upstream_extra: &str, extra: &str) -> String {
    format!(
        r#"
[server]
data_dir = "DATA_DIR"
reload_poll_ms = 50
drain_timeout_ms = 5000

[upstreams.main]
targets = [{targets}]
{upstream_extra}

[[routes]]
id = "orders"
path_prefix = "/orders"
methods = ["GET", "POST"]
upstream = "main"

[[routes]]
id = "admin"
path_prefix = "/admin"
upstream = "main"

[[policy.rules]]
id = "admin-read-only"
routes = ["admin"]
methods = ["POST", "DELETE"]
description = "operator-only text"
{extra}
"#
    )
}

/// The default test config: routes to the built-in echo.
pub fn echo_config() -> String {
    config_with("\"builtin:echo\"", "", "")
}

/// An address where nothing listens.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A raw TCP upstream: for each connection, reads the request head, waits `delay`, then
/// writes `reply` and closes. Runs until the test's runtime ends.
pub async fn raw_upstream(reply: &'static [u8], delay: Duration) -> SocketAddr {
    raw_upstream_signalling(reply, delay).await.0
}

/// Like [`raw_upstream`], and says on the channel each time a request head has arrived.
pub async fn raw_upstream_signalling(
    reply: &'static [u8],
    delay: Duration,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = arrived.send(());
                tokio::time::sleep(delay).await;
                let _ = s.write_all(reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, arrivals)
}

/// Reads a JSON problem body and checks the fields every problem must have.
pub async fn problem(resp: reqwest::Response, status: u16, reason: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status for {reason}");
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/problem+json",
        "content type for {reason}"
    );
    let header_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], reason);
    assert_eq!(body["status"], status);
    assert_eq!(body["layer"], reason.split('.').next().unwrap());
    assert_eq!(body["request_id"], header_id.as_str());
    assert!(body["type"].as_str().unwrap().ends_with(&format!("#{reason}")));
    let info = pinpoint_core::Reason::from_code(reason).unwrap().info();
    assert_eq!(body["title"], info.title);
    assert_eq!(body["hint"], info.hint);
    assert!(!body["detail"].as_str().unwrap().is_empty());
    body
}
