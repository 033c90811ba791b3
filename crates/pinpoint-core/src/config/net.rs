//! `[net]`: global IP lists and the proxies trusted to report client addresses.

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::Diagnostics;
use crate::verdict::Mode;

/// `[net]`: global IP lists and the proxies trusted to report client addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    pub mode: Mode,
    pub allow: Vec<ipnet::IpNet>,
    pub deny: Vec<ipnet::IpNet>,
    /// Only connections from these addresses may set `X-Forwarded-For` / `Forwarded`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

pub(super) fn read(item: &Item, d: &mut Diagnostics) -> Option<NetConfig> {
    d.read_or_default(item)
}
