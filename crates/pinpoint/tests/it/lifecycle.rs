//! Lifecycle: hot reload, graceful shutdown with no lost decisions, and the real binary
//! (bootstrap key, SIGHUP, SIGTERM, config errors).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::*;

fn counter(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const INVENTORY_ROUTE: &str = "\n[[routes]]\nid = \"inventory\"\npath_prefix = \"/inventory\"\nupstream = \"main\"\n";

#[tokio::test]
async fn file_changes_reload_atomically_and_bad_configs_are_rejected() {
    let gw = start(&echo_config()).await;
    let first = gw.revision().await;
    assert_eq!(gw.http.get(gw.url("/inventory")).send().await.unwrap().status(), 404);

    let good = std::fs::read_to_string(&gw.config_path).unwrap() + INVENTORY_ROUTE;
    std::fs::write(&gw.config_path, &good).unwrap();
    poll_until("new revision", || async { gw.revision().await != first }).await;
    let second = gw.revision().await;
    let resp = gw
        .http
        .get(gw.url("/inventory/1"))
        .header("x-request-id", "after-reload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(gw.decision("after-reload").await.config_revision, second);

    let rejected = "pinpoint_config_reloads_total{result=\"rejected\"}";
    let before = counter(&gw.metrics().await, rejected);
    let bad = good.replace("upstream = \"main\"\n", "upstream = \"missing\"\n");
    std::fs::write(&gw.config_path, bad).unwrap();
    poll_until("bad config rejected", || async {
        counter(&gw.metrics().await, rejected) > before
    })
    .await;
    assert_eq!(gw.revision().await, second, "the old config keeps serving");
    assert_eq!(gw.http.get(gw.url("/inventory")).send().await.unwrap().status(), 200);
    let health = gw.api_json("/healthz", None).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["config_error"].as_str().unwrap().contains("missing"), "{health}");

    // An empty (or truncated) file is refused too, not taken as "no routes".
    for broken in [String::new(), good[..good.len() / 3].to_owned()] {
        let before = counter(&gw.metrics().await, rejected);
        std::fs::write(&gw.config_path, &broken).unwrap();
        poll_until("broken config rejected", || async {
            counter(&gw.metrics().await, rejected) > before
        })
        .await;
        assert_eq!(gw.revision().await, second);
    }
    // A good file again: healthy.
    std::fs::write(&gw.config_path, &good).unwrap();
    poll_until("healthy again", || async {
        gw.api_json("/healthz", None).await["status"] == "ok"
    })
    .await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_keeps_their_decisions() {
    let (slow, mut arrivals) = raw_upstream_signalling(
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow",
        Duration::from_millis(300),
    )
    .await;
    let gw = start(&config_with(&format!("\"{slow}\""), "", "")).await;
    let url = gw.url("/orders/slow");
    let http = gw.http.clone();
    let in_flight = tokio::spawn(async move {
        let resp = http.get(url).header("x-request-id", "in-flight").send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    arrivals.recv().await.expect("request reached the upstream");
    let proxy = gw.proxy;
    let store = gw.stop().await;
    assert_eq!(in_flight.await.unwrap(), (200, String::from("slow")));
    // Stop returned only after the decision log was flushed.
    let d = store
        .decision("in-flight")
        .await
        .unwrap()
        .expect("decision kept across shutdown");
    assert_eq!(d.status, 200);
    assert!(
        tokio::net::TcpStream::connect(proxy).await.is_err(),
        "no longer accepting"
    );
}

/// A `pinpoint serve` child process, killed by pid when dropped.
pub(crate) struct ServeProcess {
    child: Child,
    stderr_path: std::path::PathBuf,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    fn start(config: &Path, dir: &Path, name: &str) -> ServeProcess {
        let config = config.to_str().expect("utf-8 temp path");
        ServeProcess::start_with(&["serve", "--config", config], dir, name)
    }

    /// `pinpoint <args>` in `dir`, its output in `<name>.stdout` and `<name>.stderr` there.
    pub(crate) fn start_with(args: &[&str], dir: &Path, name: &str) -> ServeProcess {
        let stderr_path = dir.join(format!("{name}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_pinpoint"))
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("{name}.stdout"))).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn pinpoint serve");
        ServeProcess { child, stderr_path }
    }

    /// `pinpoint serve --config CONFIG` on free proxy and api ports, once its api answers:
    /// the process, the proxy address and the api address.
    ///
    /// A port taken by someone else between choosing it and binding it (the process exits
    /// saying so) is retried on new ports; any other exit, or no answer within 30 s (a
    /// loaded CI machine opening a PostgreSQL store), fails with what the process printed.
    pub(crate) async fn serve_on_free_ports(config: &Path, dir: &Path, name: &str) -> (ServeProcess, String, String) {
        let config = config.to_str().expect("utf-8 temp path");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        for _attempt in 0..3 {
            let (proxy, api) = (
                format!("127.0.0.1:{}", free_port().await),
                format!("127.0.0.1:{}", free_port().await),
            );
            let args = [
                "serve",
                "--config",
                config,
                "--proxy-listen",
                &proxy,
                "--api-listen",
                &api,
            ];
            let mut process = ServeProcess::start_with(&args, dir, name);
            let health = format!("http://{api}/healthz");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                if http.get(&health).send().await.is_ok() {
                    return (process, proxy, api);
                }
                if !process.is_running() {
                    let stderr = process.stderr();
                    assert!(
                        stderr.contains("in use"),
                        "pinpoint serve ({name}) exited before it was ready:\n{stderr}"
                    );
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "pinpoint serve ({name}) not ready after 30 s:\n{}",
                    process.stderr()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("pinpoint serve ({name}): three tries found their ports taken");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        poll_until("pinpoint exits", || {
            status = self.child.try_wait().unwrap();
            std::future::ready(status.is_some())
        })
        .await;
        status.unwrap()
    }
}

/// Every log line is one JSON object with each key once, and nothing carries colour codes
/// (the output is a file, not a terminal). Lines that are not JSON (the bootstrap-key
/// banner on stderr) are only checked for colour codes.
fn assert_log_lines_are_clean(output: &str) {
    use serde::de::{Deserializer as _, MapAccess, Visitor};
    struct UniqueKeys;
    impl<'de> Visitor<'de> for UniqueKeys {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
                }
                map.next_value::<serde::de::IgnoredAny>()?;
            }
            Ok(())
        }
    }
    assert!(!output.contains('\u{1b}'), "colour codes in a log file:\n{output}");
    for line in output.lines().filter(|l| l.starts_with('{')) {
        let mut de = serde_json::Deserializer::from_str(line);
        if let Err(e) = de.deserialize_map(UniqueKeys) {
            panic!("log line {line}: {e}");
        }
    }
}

/// Polls `check` until it holds, and asserts that it held within a second of `since`.
async fn within_a_second<F, Fut>(what: &str, since: std::time::Instant, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll_until(what, check).await;
    assert!(
        since.elapsed() < Duration::from_secs(1),
        "{what}: {:?}",
        since.elapsed()
    );
}

/// A key named `shared` made through the API at `api` (`host:port`) with `admin`: the API's
/// answer (the key in `data.attributes.key`, its id in `data.id`).
pub(crate) async fn key_through_api(http: &reqwest::Client, api: &str, admin: &str) -> serde_json::Value {
    http.post(format!("http://{api}/api/v2/api_keys"))
        .bearer_auth(admin)
        .json(&serde_json::json!({"data": {"type": "api_keys", "attributes": {"name": "shared"}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub(crate) async fn free_port() -> u16 {
    dead_addr().await.port()
}

#[tokio::test]
async fn binary_bootstraps_once_reloads_on_sighup_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy_port, api_port) = (free_port().await, free_port().await);
    let config = format!(
        "[server]\nproxy_listen = \"127.0.0.1:{proxy_port}\"\napi_listen = \"127.0.0.1:{api_port}\"\ndata_dir = \"data\"\nreload_poll_ms = 0\n\n[upstreams.main]\ntargets = [\"builtin:echo\"]\n\n[[routes]]\nid = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"main\"\n\n[upstreams.gone]\ntargets = [\"{gone}\"]\n\n[[routes]]\nid = \"gone\"\npath_prefix = \"/gone\"\nupstream = \"gone\"\n{keep}",
        gone = dead_addr().await,
        keep = crate::KEEP_EVERY_DECISION,
    );
    let config_path = dir.path().join("pinpoint.toml");
    std::fs::write(&config_path, &config).unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let health = format!("http://127.0.0.1:{api_port}/healthz");
    let revision = || async {
        let r = http.get(&health).send().await.ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        v["config_revision"].as_str().map(str::to_owned)
    };

    let mut server = ServeProcess::start(&config_path, dir.path(), "first");
    poll_until("binary ready", || async { revision().await.is_some() }).await;
    let key_file = dir.path().join("data/bootstrap-admin.key");
    let key = std::fs::read_to_string(&key_file).unwrap().trim().to_owned();
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(server.stderr().contains(&key), "the key is printed once on first start");

    let resp = http
        .get(format!("http://127.0.0.1:{proxy_port}/orders"))
        .header("x-request-id", "bin-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Three connection failures eject the dead target: a warning with its own fields.
    for _ in 0..3 {
        let resp = http
            .get(format!("http://127.0.0.1:{proxy_port}/gone"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
    }

    let first = revision().await.unwrap();
    std::fs::write(&config_path, config.clone() + INVENTORY_ROUTE).unwrap();
    server.signal("-HUP");
    poll_until("SIGHUP reload", || async {
        revision().await.is_some_and(|r| r != first)
    })
    .await;
    assert_eq!(
        http.get(format!("http://127.0.0.1:{proxy_port}/inventory"))
            .header("x-request-id", "bin-2")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    server.signal("-TERM");
    let status = server.wait_exit().await;
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status:?}\n{}",
        server.stderr()
    );
    let store = Store::open(&dir.path().join("data")).await.unwrap();
    assert!(
        store.decision("bin-1").await.unwrap().is_some(),
        "decisions survive shutdown"
    );
    store.close().await;
    // The access log is buffered; what was waiting at shutdown (bin-2 was served just
    // before SIGTERM) is written before exit.
    let access_log = std::fs::read_to_string(dir.path().join("first.stdout")).unwrap();
    for id in ["bin-1", "bin-2"] {
        let line = access_log
            .lines()
            .find(|l| l.contains(&format!("\"client_request_id\":\"{id}\"")))
            .unwrap_or_else(|| panic!("no access-log line for {id} in:\n{access_log}"));
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["target"], "pinpoint::access");
        assert_eq!(line["status"], 200);
    }
    assert!(access_log.contains("ejected"), "{access_log}");
    assert_log_lines_are_clean(&access_log);
    assert_log_lines_are_clean(&server.stderr());

    // A second start finds keys and prints none.
    let mut again = ServeProcess::start(&config_path, dir.path(), "second");
    poll_until("binary ready again", || async { revision().await.is_some() }).await;
    assert!(!again.stderr().contains("pp_"), "{}", again.stderr());
    again.signal("-TERM");
    assert!(again.wait_exit().await.success());
}

#[tokio::test]
async fn a_bad_config_is_refused_with_every_mistake_and_its_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nmax_headers = 0\n\n[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n\n[[routes]]\nid = \"x\"\npath_prefix = \"/x\"\nupstream = \"nope\"\n\n[jwt]\nttl_seconds = 0\n",
    )
    .unwrap();
    let file = path.display();
    for args in [vec!["config", "check"], vec!["serve", "--config"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_pinpoint"))
            .args(&args)
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8(out.stderr).unwrap();
        let expected = [
            "error: config refused, 3 mistakes:".to_owned(),
            format!("{file}:2:15: server.max_headers must be 1 to 1000"),
            format!("{file}:10:12: route `x` names upstream `nope`"),
            format!("{file}:13:15: jwt.ttl_seconds must be at least 1"),
        ];
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), expected.len(), "{args:?}: {err}");
        for (line, want) in lines.iter().zip(&expected) {
            assert!(line.starts_with(want.as_str()), "{args:?}: {line} is not {want}");
        }
    }
}

#[tokio::test]
async fn a_relative_data_dir_is_relative_to_its_config_file_and_reasons_end_quietly_on_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy_port, api_port) = (free_port().await, free_port().await);
    let conf_dir = dir.path().join("conf");
    std::fs::create_dir(&conf_dir).unwrap();
    let config_path = conf_dir.join("pinpoint.toml");
    std::fs::write(
        &config_path,
        format!(
            "[server]\nproxy_listen = \"127.0.0.1:{proxy_port}\"\napi_listen = \"127.0.0.1:{api_port}\"\ndata_dir = \"data\"\n\n[upstreams.main]\ntargets = [\"builtin:echo\"]\n\n[[routes]]\nid = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"main\"\n"
        ),
    )
    .unwrap();
    // Started from another directory than the config file's.
    let server = ServeProcess::start(&config_path, dir.path(), "relative");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let health = format!("http://127.0.0.1:{api_port}/healthz");
    poll_until("binary ready", || async { http.get(&health).send().await.is_ok() }).await;
    assert!(
        conf_dir.join("data/bootstrap-admin.key").exists(),
        "{}",
        server.stderr()
    );
    assert!(!dir.path().join("data").exists());
    drop(server);

    // `pinpoint reasons | head -1`: the reader goes away after one line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_pinpoint"))
        .arg("reasons")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[tokio::test]
async fn sighup_never_stops_the_demo_and_a_pinpoint_toml_created_later_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy_port, api_port) = (free_port().await, free_port().await);
    let (proxy, api) = (format!("127.0.0.1:{proxy_port}"), format!("127.0.0.1:{api_port}"));
    // No --config and no ./pinpoint.toml: the built-in demo, on this test's own ports.
    let mut server = ServeProcess::start_with(
        &["serve", "--proxy-listen", &proxy, "--api-listen", &api],
        dir.path(),
        "demo",
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let health = format!("http://{api}/healthz");
    let healthz = || async {
        let r = http.get(&health).send().await.ok()?;
        r.json::<serde_json::Value>().await.ok()
    };
    poll_until("demo ready", || async { healthz().await.is_some() }).await;
    let demo_revision = healthz().await.unwrap()["config_revision"].clone();
    let status = |path: &'static str| {
        let http = http.clone();
        let url = format!("http://{proxy}{path}");
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/orders").await, 200);
    assert_eq!(status("/inventory").await, 404);

    // SIGHUP with nothing to reload: still serving the demo.
    for _ in 0..3 {
        server.signal("-HUP");
    }
    // A process SIGHUP killed would be gone by the time it answers a new connection.
    assert_eq!(status("/orders").await, 200);
    assert!(server.is_running(), "{}", server.stderr());
    assert_eq!(healthz().await.unwrap()["config_revision"], demo_revision);

    // pinpoint.toml appears (its listen addresses are the demo's; the flags still win).
    let file = pinpoint_core::config::DEMO_CONFIG.to_owned()
        + "\n[[routes]]\nid = \"inventory\"\npath_prefix = \"/inventory\"\nupstream = \"echo\"\n";
    std::fs::write(dir.path().join("pinpoint.toml"), &file).unwrap();
    server.signal("-HUP");
    poll_until("pinpoint.toml picked up", || async {
        healthz().await.is_some_and(|h| h["config_revision"] != demo_revision)
    })
    .await;
    assert_eq!(status("/inventory").await, 200);

    // A broken file on SIGHUP: refused, reported, and the server keeps serving.
    std::fs::write(dir.path().join("pinpoint.toml"), "[[routes]\n").unwrap();
    server.signal("-HUP");
    poll_until("broken file reported", || async {
        healthz().await.is_some_and(|h| h["status"] == "degraded")
    })
    .await;
    assert!(server.is_running());
    assert_eq!(status("/inventory").await, 200);
    server.signal("-TERM");
    assert!(server.wait_exit().await.success(), "{}", server.stderr());
}

#[tokio::test]
async fn two_processes_on_one_store_enforce_each_others_key_changes_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("pinpoint.toml");
    std::fs::write(
        &config_path,
        "[server]\ndata_dir = \"data\"\n\n[upstreams.main]\ntargets = [\"builtin:echo\"]\n\n[[routes]]\nid = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"main\"\nauth = \"required\"\n\n[[routes]]\nid = \"open\"\npath_prefix = \"/open\"\nupstream = \"main\"\n",
    )
    .unwrap();
    let config = config_path.to_str().unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut processes = Vec::new();
    let mut addrs = Vec::new();
    for name in ["first", "second"] {
        let (process, proxy, api) = ServeProcess::serve_on_free_ports(Path::new(config), dir.path(), name).await;
        processes.push(process);
        addrs.push((proxy, api));
    }
    let admin = std::fs::read_to_string(dir.path().join("data/bootstrap-admin.key"))
        .unwrap()
        .trim()
        .to_owned();
    let ((_, first_api), (second_proxy, _)) = (&addrs[0], &addrs[1]);

    // A key made through the first process's API ...
    let created = key_through_api(&http, first_api, &admin).await;
    let key = created["data"]["attributes"]["key"].as_str().unwrap().to_owned();
    let key_id = created["data"]["id"].as_str().unwrap().to_owned();
    let status_at_second = || async {
        http.get(format!("http://{second_proxy}/orders"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // ... works at the second within a second,
    let made = std::time::Instant::now();
    within_a_second("new key known to the second process", made, || async {
        status_at_second().await == 200
    })
    .await;

    // ... and once revoked there, is refused by the second within a second.
    let resp = http
        .delete(format!("http://{first_api}/api/v2/api_keys/{key_id}"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let revoked = std::time::Instant::now();
    within_a_second("revocation reaches the second process", revoked, || async {
        status_at_second().await == 401
    })
    .await;
    let refused = http
        .get(format!("http://{second_proxy}/orders"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    problem(refused, 401, "authn.key_revoked").await;

    // A signing key rotated through the first process: the second accepts its tokens, and
    // never passes one to an upstream, within a second.
    let (first_api, second_proxy) = (&addrs[0].1, &addrs[1].0);
    let resp = http
        .post(format!("http://{first_api}/api/v2/signing_keys/rotate"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let rotated = std::time::Instant::now();
    let issued: serde_json::Value = http
        .post(format!("http://{first_api}/api/v2/tokens"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = issued["data"]["attributes"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    within_a_second("new signing key known to the second process", rotated, || async {
        let at_second = |path: &'static str| {
            http.get(format!("http://{second_proxy}{path}"))
                .bearer_auth(&token)
                .send()
        };
        let accepted = at_second("/orders").await.unwrap().status() == 200;
        let echoed = at_second("/open/x").await.unwrap().text().await.unwrap();
        accepted && !echoed.contains(&token)
    })
    .await;
    for mut process in processes {
        process.signal("-TERM");
        assert!(process.wait_exit().await.success(), "{}", process.stderr());
    }
}
