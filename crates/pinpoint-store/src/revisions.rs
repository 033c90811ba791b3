//! When each config revision was loaded (`config_loads`): one row per start and per applied
//! reload, kept as long as the rollups. Alerts read it to say whether the config changed
//! shortly before a spike began.

use sqlx::Row;

use crate::{Store, StoreError};

/// One load of a config revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLoad {
    /// Unix milliseconds.
    pub at_ms: i64,
    pub revision: String,
    /// The revision it replaced (none at the first start).
    pub previous: Option<String>,
    /// What loaded it: `start`, `SIGHUP`, `file change`.
    pub trigger: String,
}

/// Records a load.
pub async fn record(store: &Store, load: &ConfigLoad) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO config_loads (at_ms, revision, previous, trigger) VALUES ($1, $2, $3, $4)")
        .bind(load.at_ms)
        .bind(&load.revision)
        .bind(load.previous.as_deref())
        .bind(&load.trigger)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// The latest load from `from_ms` to `to_ms` (both inclusive), if any.
pub async fn latest(store: &Store, from_ms: i64, to_ms: i64) -> Result<Option<ConfigLoad>, StoreError> {
    let row = sqlx::query(
        "SELECT at_ms, revision, previous, trigger FROM config_loads
         WHERE at_ms >= $1 AND at_ms <= $2 ORDER BY at_ms DESC, seq DESC LIMIT 1",
    )
    .bind(from_ms)
    .bind(to_ms)
    .fetch_optional(store.pool())
    .await?;
    row.map(|row| {
        Ok(ConfigLoad {
            at_ms: row.try_get("at_ms")?,
            revision: row.try_get("revision")?,
            previous: row.try_get("previous")?,
            trigger: row.try_get("trigger")?,
        })
    })
    .transpose()
}

/// Drops the loads before `before_ms`.
pub async fn prune(store: &Store, before_ms: i64) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM config_loads WHERE at_ms < $1")
        .bind(before_ms)
        .execute(store.pool())
        .await?;
    Ok(done.rows_affected())
}

/// Part of version 13: the table of loads.
pub(crate) const SCHEMA_V13: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS config_loads (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        revision TEXT NOT NULL,
        previous TEXT,
        trigger TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS config_loads_at ON config_loads(at_ms)",
];
