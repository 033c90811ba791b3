//! TLS termination for both listeners: certificates from PEM files (several, picked by
//! the client's SNI name), TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`, optional
//! client certificates (mTLS). [`TlsState`] holds a listener's current rustls config and
//! swaps in a new one when the config reloads or a certificate file changes; connections
//! already open keep the config they began with, new ones get the new certificate. A file
//! that does not load is an error naming it, and the old certificate keeps serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use pinpoint_core::config::TlsConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Why a listener's TLS setup could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls.server_name `{0}` is not a DNS name or an IP address")]
    Name(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The crypto provider every TLS config here uses (ring, as the rest of the tree).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a listener's rustls config from its `[server.*_tls]` section, reading every file.
pub fn server_config(config: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let mut certificates = Vec::with_capacity(config.certificates.len());
    for files in &config.certificates {
        let (chain, key) = read_cert_and_key(&files.cert, &files.key)?;
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| file_error(&files.key, format!("unusable private key: {e}")))?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified.keys_match().map_err(|e| {
            file_error(
                &files.key,
                format!("does not match the certificate in {}: {e}", files.cert.display()),
            )
        })?;
        certificates.push(Arc::new(certified));
    }
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_chain(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error(ca, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if config.client_cert_required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| file_error(ca, format!("client CA unusable: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(BySni { certificates }));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(file_error(path, "holds no certificate"));
    }
    Ok(chain)
}

/// A certificate chain and its private key from PEM files.
pub fn read_cert_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = read_chain(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, format!("no private key read: {e}")))?;
    Ok((chain, key))
}

/// Picks the first certificate valid for the client's SNI name; the first certificate
/// when the client sent no name or no certificate covers it (the client then decides).
#[derive(Debug)]
struct BySni {
    certificates: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let covering = hello
            .server_name()
            .and_then(|name| ServerName::try_from(name).ok())
            .and_then(|name| {
                self.certificates.iter().find(|c| {
                    c.end_entity_cert().is_ok_and(|der| {
                        webpki::EndEntityCert::try_from(der)
                            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
                    })
                })
            });
        covering.or_else(|| self.certificates.first()).cloned()
    }
}

/// A listener's TLS: the current rustls config (none: plaintext), and what its files
/// looked like when it was built, to notice when they change.
#[derive(Default)]
pub struct TlsState {
    current: ArcSwapOption<rustls::ServerConfig>,
    built_from: Mutex<Option<(TlsConfig, Vec<FileStamp>)>>,
    /// The last error logged, so a broken file is reported once, not on every poll.
    last_failure: Mutex<Option<String>>,
}

/// A file's modification time and length (`None`: unreadable).
type FileStamp = Option<(SystemTime, u64)>;

fn stamps(config: &TlsConfig) -> Vec<FileStamp> {
    config
        .files()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

impl TlsState {
    /// Whether `error` is news (not the one last reported); remembers it.
    pub fn note_failure(&self, error: &TlsError) -> bool {
        let text = error.to_string();
        let mut last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        let news = last.as_deref() != Some(text.as_str());
        *last = Some(text);
        news
    }

    /// The config new connections use, if the listener speaks TLS.
    pub fn current(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.current.load_full()
    }

    /// Brings the state in line with `config` (and the files it names): rebuilds when the
    /// section or any file's stamp changed. On an error the old config keeps serving.
    /// Returns whether a new config was swapped in.
    pub fn update(&self, config: Option<&TlsConfig>) -> Result<bool, TlsError> {
        let mut built_from = self.built_from.lock().unwrap_or_else(|p| p.into_inner());
        let Some(config) = config else {
            let changed = built_from.is_some();
            *built_from = None;
            self.current.store(None);
            return Ok(changed);
        };
        let now = stamps(config);
        if built_from.as_ref().is_some_and(|(c, s)| c == config && *s == now) {
            return Ok(false);
        }
        let server = server_config(config)?;
        self.current.store(Some(server));
        *built_from = Some((config.clone(), now));
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(true)
    }
}
