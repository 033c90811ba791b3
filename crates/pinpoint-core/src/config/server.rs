//! `[server]`: listeners, the data directory, caller-facing links and request-head limits.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::{place, Diagnostics};

/// `[server]`: listeners, data directory and caller-facing links.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listener for proxied routes.
    pub proxy_listen: SocketAddr,
    /// Listener for Pinpoint's own API, `/metrics` and `/healthz`.
    pub api_listen: SocketAddr,
    /// Where the embedded store and the bootstrap admin key live.
    pub data_dir: PathBuf,
    /// Where docs/reasons.md is published; problem `type` links point into it. The default
    /// is served by the proxy listener itself.
    pub reasons_url: String,
    /// How long a graceful shutdown waits for in-flight requests.
    pub drain_timeout_ms: u64,
    /// How often the config file is checked for changes (0 disables; SIGHUP still works).
    pub reload_poll_ms: u64,
    /// Largest request head (request line and every header) the proxy accepts; larger
    /// ones are refused with `request.headers_too_large` (431).
    pub max_head_bytes: usize,
    /// Largest single header line (`name: value`).
    pub max_header_bytes: usize,
    /// Most header lines one request may carry.
    pub max_headers: usize,
    /// TLS on the proxy listener (absent: plaintext). Certificates are re-read when the
    /// config reloads and when their files change.
    pub proxy_tls: Option<TlsConfig>,
    /// TLS on the api listener (absent: plaintext).
    pub api_tls: Option<TlsConfig>,
    /// HTTP/2 with prior knowledge (h2c) on a plaintext proxy listener. Over TLS, HTTP/2
    /// is offered by ALPN whatever this says.
    pub h2c: bool,
    /// Who may read `/metrics` on the api listener: `"public"` (anyone who reaches the
    /// listener), `"key"` (a platform administrator's API key), or `"off"` (not served there;
    /// see `metrics_listen`).
    pub metrics: MetricsAccess,
    /// A listener of its own for `/metrics` (plain HTTP, nothing else served), for a
    /// scraper on a separate network. Read at start.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to export one span per proxied request, OTLP over HTTP (JSON), e.g.
    /// `http://127.0.0.1:4318/v1/traces`. Needs a build with the `otlp` feature. Read at
    /// start.
    pub otlp_traces_endpoint: Option<String>,
    /// Proxy worker threads, each with its own event loop, listener and upstream
    /// connections (0: one per CPU the process may run on). Read at start.
    pub workers: usize,
}

/// `[server] metrics`: who may read `/metrics` on the api listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricsAccess {
    #[default]
    Public,
    Key,
    Off,
}

/// `[server.proxy_tls]` / `[server.api_tls]`: TLS 1.2 and 1.3 with rustls, ALPN `h2` and
/// `http/1.1`. Relative paths are taken from the config file's directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// One or more certificate chains with their keys (PEM). A client's SNI name picks the
    /// first certificate valid for it; the first one serves clients that send no name or
    /// a name no certificate covers.
    pub certificates: Vec<CertificateFiles>,
    /// Client certificates (mTLS): CA certificates (PEM) that client certificates must
    /// chain to. Absent: no client certificate is asked for.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: whether a client without a certificate is refused in the
    /// handshake (`true`), or admitted and decided on by the pipeline (`false`).
    #[serde(default = "yes")]
    pub client_cert_required: bool,
}

fn yes() -> bool {
    true
}

/// One certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsConfig {
    /// Every file the TLS setup reads.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.certificates
            .iter()
            .flat_map(|c| [&c.cert, &c.key])
            .chain(self.client_ca.iter())
    }

    /// Makes relative paths relative to `dir`.
    pub fn resolve_relative_to(&mut self, dir: &std::path::Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for c in &mut self.certificates {
            resolve(&mut c.cert);
            resolve(&mut c.key);
        }
        if let Some(ca) = &mut self.client_ca {
            resolve(ca);
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            proxy_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            data_dir: PathBuf::from("./pinpoint-data"),
            reasons_url: String::from(REASONS_PATH),
            drain_timeout_ms: 10_000,
            reload_poll_ms: 1_000,
            max_head_bytes: 32 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 90,
            proxy_tls: None,
            api_tls: None,
            h2c: false,
            metrics: MetricsAccess::Public,
            metrics_listen: None,
            otlp_traces_endpoint: None,
            workers: 0,
        }
    }
}

/// Path on the proxy listener that serves the reason catalogue.
pub const REASONS_PATH: &str = "/_pinpoint/reasons";

pub(super) fn read(item: &Item, d: &mut Diagnostics) -> Option<ServerConfig> {
    let server: ServerConfig = d.read_or_default(item)?;
    let at = |field: &str| place(&[item.get(field), Some(item)]);
    if !(1024..=1 << 20).contains(&server.max_head_bytes) {
        d.error(at("max_head_bytes"), "server.max_head_bytes must be 1024 to 1048576");
    } else if !(64..=server.max_head_bytes).contains(&server.max_header_bytes) {
        d.error(
            at("max_header_bytes"),
            "server.max_header_bytes must be 64 to max_head_bytes",
        );
    }
    if !(1..=1000).contains(&server.max_headers) {
        d.error(at("max_headers"), "server.max_headers must be 1 to 1000");
    }
    if server.workers > 1024 {
        d.error(at("workers"), "server.workers must be 0 (one per CPU) to 1024");
    }
    for (name, tls) in [("proxy_tls", &server.proxy_tls), ("api_tls", &server.api_tls)] {
        if tls.as_ref().is_some_and(|t| t.certificates.is_empty()) {
            d.error(at(name), format!("server.{name} needs at least one certificate"));
        }
    }
    Some(server)
}
