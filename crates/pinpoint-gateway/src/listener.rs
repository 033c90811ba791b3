//! The accept loop both listeners share: TCP accept, the TLS handshake when the listener
//! has TLS (in the connection's own task, bounded in time), then HTTP/1.1 or HTTP/2 on the
//! connection (ALPN over TLS; prior knowledge on plaintext where `h2c` allows it), with
//! upgrades (WebSockets) kept, and a graceful drain on shutdown. The parser's own refusals
//! are rewritten into problem bodies on the way out (`parse_errors`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::parse_errors::ProblemStream;
use crate::telemetry;
use crate::tls::TlsState;

/// What a request knows of the connection it came on.
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    /// Whether the connection is TLS (the request came as `https`).
    pub secure: bool,
    /// The client certificate the handshake verified (mTLS), if any.
    pub client_cert: Option<Arc<pinpoint_policy::identity::ClientCertificate>>,
}

/// What a verified client certificate says: subject, subjectAltNames (DNS and URI),
/// fingerprint. `None` when it does not parse (rustls verified it, so that is unexpected).
pub fn client_certificate(der: &[u8]) -> Option<pinpoint_policy::identity::ClientCertificate> {
    use sha2::Digest;
    use x509_parser::extensions::GeneralName;
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let (mut dns_names, mut uris) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = certificate.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns_names.push((*n).to_owned()),
                GeneralName::URI(n) => uris.push((*n).to_owned()),
                _ => {}
            }
        }
    }
    let sha256 = pinpoint_core::hex::lower(&sha2::Sha256::digest(der));
    Some(pinpoint_policy::identity::ClientCertificate {
        subject: rfc4514(certificate.subject()),
        dns_names,
        uris,
        sha256,
    })
}

/// A distinguished name as RFC 4514 writes it: RDNs last first, joined by `,`; the
/// attributes of one RDN joined by `+`; known types by their short names, others by OID;
/// values with `"+,;<>\` and a leading `#` or space or a trailing space escaped, and
/// values that are not strings as `#` and their bytes in hex.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    const SHORT_NAMES: [&str; 9] = ["CN", "L", "ST", "O", "OU", "C", "STREET", "DC", "UID"];
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attribute| {
                    let oid = attribute.attr_type();
                    let kind = x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
                        .ok()
                        .filter(|short| SHORT_NAMES.contains(short))
                        .map(str::to_owned)
                        .unwrap_or_else(|| oid.to_id_string());
                    let value = match attribute.as_str() {
                        Ok(text) => escape_dn_value(text),
                        Err(_) => {
                            let bytes = attribute.attr_value().as_bytes();
                            format!("#{}", pinpoint_core::hex::lower(bytes))
                        }
                    };
                    format!("{kind}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// How long a plaintext client may stay silent before its first bytes (as long as
/// hyper's header read timeout allows for a request head).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves connections from `listener` with the services `make` builds, until `shutdown`
/// resolves; then drains in-flight requests for at most `drain`.
#[allow(clippy::too_many_arguments)]
pub async fn serve<M, S, B>(
    name: &'static str,
    listener: TcpListener,
    tls: Arc<TlsState>,
    h2c: bool,
    builder: auto::Builder<TokioExecutor>,
    refusals: Option<crate::parse_errors::Refusals>,
    make: M,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    M: Fn(Connection) -> S + Clone + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: auto::HttpServerConnExec<S::Future, B>,
{
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let refusals = refusals.clone();
        match tls.current() {
            None => {
                let service = make(Connection {
                    peer,
                    secure: false,
                    client_cert: None,
                });
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    // hyper serves HTTP/2 to whoever opens with its preface; on a plaintext
                    // listener that is only wanted where `h2c` says so.
                    if !h2c {
                        match tokio::time::timeout(FIRST_BYTES_TIMEOUT, opens_with_h2_preface(&stream)).await {
                            Ok(false) => {}
                            Ok(true) => {
                                metrics::counter!(telemetry::CONNECTION_ERRORS, "kind" => "h2c_disabled").increment(1);
                                tracing::debug!(listener = name, %peer, "HTTP/2 prior knowledge refused: h2c is off");
                                return;
                            }
                            // Silent as long as a request head may take (hyper's header timeout).
                            Err(_) => return,
                        }
                    }
                    let stream = ProblemStream::new(stream, peer, refusals);
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        connection_ended(name, &*e);
                    }
                });
            }
            Some(config) => {
                let make = make.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            telemetry::count_tls_handshake_failure();
                            tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            telemetry::count_tls_handshake_failure();
                            tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let client_cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| client_certificate(leaf))
                        .map(Arc::new);
                    let service = make(Connection {
                        peer,
                        secure: true,
                        client_cert,
                    });
                    // hyper picks HTTP/2 by its preface, which an ALPN `h2` client sends.
                    let stream = ProblemStream::new(stream, peer, refusals);
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        connection_ended(name, &*e);
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            listener = name,
            drain_ms = drain.as_millis() as u64,
            "drain timed out; closing remaining connections"
        );
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client's first bytes are the HTTP/2 preface, looked at without reading
/// them. An HTTP/1 request differs from its first byte on; `PRI ` is taken as the preface.
/// It waits as long as the bytes so far could still be the preface (the caller bounds the
/// wait): giving up early would leave the decision to hyper, which serves the preface.
async fn opens_with_h2_preface(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 4];
    loop {
        let seen = match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if first[..seen] != H2_PREFACE[..seen] {
            return false;
        }
        if seen == first.len() {
            return true;
        }
        // A prefix of the preface so far: wait for the rest of the 4 bytes.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn connection_ended(name: &'static str, e: &(dyn std::error::Error + Send + Sync + 'static)) {
    if let Some(hyper_error) = e.downcast_ref::<hyper::Error>() {
        telemetry::count_connection_error(hyper_error);
    }
    tracing::debug!(listener = name, error = %e, "connection ended with an error");
}
