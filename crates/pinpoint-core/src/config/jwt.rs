//! `[jwt]`: the tokens Pinpoint signs, and their signing-key rotation.

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::{place, Diagnostics};

/// `[jwt]`: tokens Pinpoint signs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    pub issuer: String,
    pub ttl_seconds: u64,
    /// A signing key signs for this long; it stays published until its last token expires.
    pub rotate_after_hours: u64,
    /// Clock skew tolerated when checking `exp`.
    pub leeway_seconds: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: String::from("pinpoint"),
            ttl_seconds: 900,
            rotate_after_hours: 24,
            leeway_seconds: 30,
        }
    }
}

pub(super) fn read(item: &Item, d: &mut Diagnostics) -> Option<JwtConfig> {
    let jwt: JwtConfig = d.read_or_default(item)?;
    for (value, field) in [
        (jwt.ttl_seconds, "ttl_seconds"),
        (jwt.rotate_after_hours, "rotate_after_hours"),
    ] {
        if value == 0 {
            d.error(
                place(&[item.get(field), Some(item)]),
                format!("jwt.{field} must be at least 1"),
            );
        }
    }
    Some(jwt)
}
