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
        }
    }
}

pub(super) fn read(item: &Item, d: &mut Diagnostics) -> Option<AuthnConfig> {
    d.read_or_default(item)
}
