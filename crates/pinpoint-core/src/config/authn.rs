//! `[authn]`: where the authentication filter looks for credentials.

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::Diagnostics;
use crate::verdict::Mode;

/// Where the authentication layer looks for credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialSource {
    /// `Authorization: Bearer <api key or JWT>`.
    Authorization,
    /// `X-API-Key: <api key>`.
    XApiKey,
    /// Datadog's pair: `DD-API-KEY` (the organization) + `DD-APPLICATION-KEY` (the principal).
    DdKeys,
}

/// `[authn]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthnConfig {
    pub mode: Mode,
    pub sources: Vec<CredentialSource>,
    /// Client certificates (mTLS) that identify a principal, as a key would: on a route
    /// that needs authentication, a request with no credential header is authenticated by
    /// its verified certificate when one of these names it.
    pub client_certs: Vec<ClientCertIdentity>,
}

/// `[[authn.client_certs]]`: a client certificate that acts as a principal.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertIdentity {
    /// The certificate: its subject (`CN=billing,O=acme`), a subjectAltName
    /// (`spiffe://acme/billing`) or `sha256:<fingerprint>`.
    pub certificate: String,
    /// The principal (user or service account id) it authenticates as; its roles, its
    /// organization and its standing apply as for any of its keys.
    pub principal: String,
}

impl Default for AuthnConfig {
    fn default() -> Self {
        AuthnConfig {
            mode: Mode::Enforce,
            sources: vec![
                CredentialSource::Authorization,
                CredentialSource::XApiKey,
                CredentialSource::DdKeys,
            ],
            client_certs: Vec::new(),
        }
    }
}

pub(super) fn read(item: &Item, d: &mut Diagnostics) -> Option<AuthnConfig> {
    d.read_or_default(item)
}
