//! `[cors]`: the origins, methods and headers browsers may use across origins.

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::{entry, place, Diagnostics};
use super::names::is_origin;
use crate::verdict::Mode;

/// `[cors]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    pub mode: Mode,
    /// Exact origins (`https://app.example.com`) or `*`.
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub max_age_seconds: u64,
    pub allow_credentials: bool,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            mode: Mode::Enforce,
            allowed_origins: Vec::new(),
            allowed_methods: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                .map(String::from)
                .to_vec(),
            allowed_headers: [
                "authorization",
                "content-type",
                "x-api-key",
                "x-request-id",
                "dd-api-key",
                "dd-application-key",
            ]
            .map(String::from)
            .to_vec(),
            max_age_seconds: 600,
            allow_credentials: false,
        }
    }
}

pub(super) fn read(item: &Item, d: &mut Diagnostics) -> Option<CorsConfig> {
    let cors: CorsConfig = d.read_or_default(item)?;
    let origins = item.get("allowed_origins");
    for (i, origin) in cors.allowed_origins.iter().enumerate() {
        if origin != "*" && !is_origin(origin) {
            d.error(
                place(&[origins.and_then(|o| entry(o, i)), origins, Some(item)]),
                format!(
                    "cors origin `{origin}` must be `*` or an origin as browsers send it: http:// or https://, a host and an optional port, no path"
                ),
            );
        }
    }
    if cors.allow_credentials && cors.allowed_origins.iter().any(|o| o == "*") {
        d.error(
            place(&[item.get("allow_credentials"), Some(item)]),
            "cors: allowed_origins `*` with allow_credentials = true would let every site read cookie-authenticated responses; list the origins instead",
        );
    }
    Some(cors)
}
