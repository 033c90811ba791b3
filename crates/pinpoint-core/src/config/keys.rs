//! `[keys]`: the API-key lifecycle.

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::Diagnostics;

/// `[keys]`: API-key lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// After a rotation, the old key keeps working for this long.
    pub rotation_overlap_seconds: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            rotation_overlap_seconds: 24 * 3600,
        }
    }
}

pub(super) fn read(item: &Item, d: &mut Diagnostics) -> Option<KeysConfig> {
    d.read_or_default(item)
}
