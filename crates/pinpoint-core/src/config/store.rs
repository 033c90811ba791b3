//! `[store]`: where identities, keys, mappings, signing keys, quotas and decisions are kept.
//! Unset, the embedded SQLite file under `server.data_dir`; with `url`, a PostgreSQL
//! server that replicas share. Read at start (a reload keeps the open store).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml_edit::Item;

use super::diagnostics::{place, Diagnostics};

/// `[store]`: the database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://[user[:password]@]host[:port]/database`; none keeps the embedded SQLite
    /// store in `server.data_dir`.
    pub url: Option<String>,
    /// The key pepper (32+ random bytes) every replica on a shared store must be given:
    /// created there by the first replica of a new store. Default: `pepper` in
    /// `server.data_dir`.
    pub pepper_file: Option<PathBuf>,
}

impl StoreConfig {
    /// Whether `url` names a PostgreSQL server (the only shared store there is).
    pub fn is_postgres_url(url: &str) -> bool {
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }
}

pub(super) fn read(item: &Item, d: &mut Diagnostics) -> Option<StoreConfig> {
    let store: StoreConfig = d.read_or_default(item)?;
    if let Some(url) = &store.url {
        // The URL may hold a password: not repeated.
        if !StoreConfig::is_postgres_url(url) {
            d.error(
                place(&[item.get("url"), Some(item)]),
                "store.url must be a postgres:// URL (the embedded SQLite store needs no URL: leave it out)",
            );
        }
    }
    Some(store)
}
