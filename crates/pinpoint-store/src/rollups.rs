//! Exact per-minute counts of every decision (`decision_rollups`), whatever share of the
//! records themselves the decision log keeps: one count per minute, route, reason (the
//! layer is the reason's first part), organization, principal, the permission the
//! authorization layer granted (when it granted one), status and mode. A request counts once
//! with mode `enforce` and its outcome's reason (none when it was allowed), and once more
//! with mode `report` for each report-mode would-deny in its trace. Requests count in
//! memory (`Rollups::count`, a short lock on the counting thread's own shard); the decision
//! log's writer adds the counts to the store every [`FLUSH_EVERY`] and when it finishes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pinpoint_core::{Decision, Mark, Mode, Reason};
use sqlx::Row;

use crate::{Store, StoreError};

/// How often counts reach the store.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// What one count is of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RollupKey {
    /// The minute's start, Unix milliseconds.
    pub minute_ms: i64,
    pub route: Option<String>,
    pub reason: Option<Reason>,
    pub org_id: Option<Arc<str>>,
    /// The caller's principal (none for an organization key or an unknown caller).
    pub principal_id: Option<Arc<str>>,
    /// The permission the authorization layer granted the request, if it checked one:
    /// what `pinpoint audit` reads to find permissions granted but never used.
    pub permission: Option<Arc<str>>,
    pub status: u16,
    pub mode: Mode,
}

/// One stored count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRow {
    pub key: RollupKey,
    pub count: u64,
}

/// Counts not yet in the store, in shards: each thread counts into its own (threads are
/// dealt shards in turn), so proxy workers never wait on each other's lock.
#[derive(Default)]
pub struct Rollups {
    shards: [Mutex<Counts>; SHARDS],
}

const SHARDS: usize = 16;

/// foldhash, not SipHash: every request hashes its key here (SipHash was 1,000
/// instructions of it). Keys are not chosen by clients beyond the route they hit.
type Counts = HashMap<RollupKey, u64, foldhash::fast::RandomState>;

impl Rollups {
    /// Counts `decision` (see the module docs).
    pub fn count(&self, decision: &Decision) {
        let key = RollupKey {
            minute_ms: decision.at_ms - decision.at_ms.rem_euclid(60_000),
            route: decision.route.clone(),
            reason: decision.reason,
            org_id: decision.caller.as_ref().map(|c| c.org_id.clone()),
            principal_id: decision.caller.as_ref().and_then(|c| c.principal_id.clone()),
            permission: decision
                .trace
                .iter()
                .find(|t| t.mark == Mark::Pass && t.layer == "authz")
                .and_then(|t| t.rule_id.clone()),
            status: decision.status,
            mode: Mode::Enforce,
        };
        let would_deny = decision
            .trace
            .iter()
            .filter(|t| t.mark == Mark::WouldDeny)
            .map(|t| t.reason)
            .collect::<Vec<_>>();
        let mut counts = self.shard().lock().unwrap_or_else(|p| p.into_inner());
        for reason in &would_deny {
            let report = RollupKey {
                reason: *reason,
                mode: Mode::Report,
                ..key.clone()
            };
            *counts.entry(report).or_insert(0) += 1;
        }
        *counts.entry(key).or_insert(0) += 1;
    }

    /// This thread's shard.
    fn shard(&self) -> &Mutex<Counts> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
        }
        &self.shards[SHARD.with(|s| *s)]
    }

    /// Takes the counts gathered so far.
    pub fn take(&self) -> Counts {
        let mut all = Counts::default();
        for shard in &self.shards {
            let counts = std::mem::take(&mut *shard.lock().unwrap_or_else(|p| p.into_inner()));
            for (key, count) in counts {
                *all.entry(key).or_insert(0) += count;
            }
        }
        all
    }

    /// Puts counts back (after a failed write), adding to what gathered meanwhile.
    pub fn restore(&self, counts: Counts) {
        let mut current = self.shard().lock().unwrap_or_else(|p| p.into_inner());
        for (key, count) in counts {
            *current.entry(key).or_insert(0) += count;
        }
    }
}

/// Adds `counts` to the stored rollups, in one transaction.
pub async fn add<S: std::hash::BuildHasher>(
    store: &Store,
    counts: &HashMap<RollupKey, u64, S>,
) -> Result<(), StoreError> {
    if counts.is_empty() {
        return Ok(());
    }
    // In one order whatever the map's: replicas adding their counts at once lock the same
    // rows in the same order (in hash order two of them deadlock on PostgreSQL).
    let mut counts: Vec<(&RollupKey, &u64)> = counts.iter().collect();
    counts.sort_unstable_by(|(a, _), (b, _)| {
        (
            a.minute_ms,
            &a.route,
            a.reason.map(|r| r.code()),
            &a.org_id,
            &a.principal_id,
            &a.permission,
            a.status,
            a.mode.as_str(),
        )
            .cmp(&(
                b.minute_ms,
                &b.route,
                b.reason.map(|r| r.code()),
                &b.org_id,
                &b.principal_id,
                &b.permission,
                b.status,
                b.mode.as_str(),
            ))
    });
    let mut tx = store.write_tx().await?;
    for (key, count) in counts {
        sqlx::query(
            "INSERT INTO decision_rollups
                 (minute_ms, route, reason, org_id, principal_id, permission, status, mode, count)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (minute_ms, route, reason, org_id, principal_id, permission, status, mode)
             DO UPDATE SET count = decision_rollups.count + excluded.count",
        )
        .bind(key.minute_ms)
        .bind(key.route.as_deref().unwrap_or(""))
        .bind(key.reason.map_or("", |r| r.code()))
        .bind(key.org_id.as_deref().unwrap_or(""))
        .bind(key.principal_id.as_deref().unwrap_or(""))
        .bind(key.permission.as_deref().unwrap_or(""))
        .bind(i64::from(key.status))
        .bind(key.mode.as_str())
        .bind(i64::try_from(*count).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The stored counts of the minutes from `from_ms` (inclusive) to `to_ms` (exclusive).
pub async fn read(store: &Store, from_ms: i64, to_ms: i64) -> Result<Vec<RollupRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT minute_ms, route, reason, org_id, principal_id, permission, status, mode, count
         FROM decision_rollups
         WHERE minute_ms >= $1 AND minute_ms < $2 ORDER BY minute_ms",
    )
    .bind(from_ms)
    .bind(to_ms)
    .fetch_all(store.pool())
    .await?;
    let text = |row: &sqlx::any::AnyRow, column: &str| -> Result<Option<String>, sqlx::Error> {
        let value: String = row.try_get(column)?;
        Ok((!value.is_empty()).then_some(value))
    };
    rows.iter()
        .map(|row| {
            let mode: String = row.try_get("mode")?;
            Ok(RollupRow {
                key: RollupKey {
                    minute_ms: row.try_get("minute_ms")?,
                    route: text(row, "route")?,
                    reason: text(row, "reason")?.and_then(|code| Reason::from_code(&code)),
                    org_id: text(row, "org_id")?.map(Arc::from),
                    principal_id: text(row, "principal_id")?.map(Arc::from),
                    permission: text(row, "permission")?.map(Arc::from),
                    status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(0),
                    mode: if mode == "report" { Mode::Report } else { Mode::Enforce },
                },
                count: u64::try_from(row.try_get::<i64, _>("count")?).unwrap_or(0),
            })
        })
        .collect()
}

/// Which counts an alert rule reads: refusals (mode `enforce`) or report-mode
/// would-denies (`report`), of one reason, layer, route or organization when given.
#[derive(Debug, Clone, Copy)]
pub struct RefusalFilter<'a> {
    pub mode: Mode,
    pub reason: Option<&'a str>,
    pub layer: Option<&'a str>,
    pub route: Option<&'a str>,
    pub org: Option<&'a str>,
}

const REFUSALS_WHERE: &str = "minute_ms >= $1 AND minute_ms < $2 AND mode = $3 AND reason != ''
     AND ($4 = '' OR reason = $4)
     AND ($5 = '' OR substr(reason, 1, length($5) + 1) = $5 || '.')
     AND ($6 = '' OR route = $6)
     AND ($7 = '' OR org_id = $7)";

fn bind_refusals<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>>,
    from_ms: i64,
    to_ms: i64,
    filter: RefusalFilter<'q>,
) -> sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>> {
    query
        .bind(from_ms)
        .bind(to_ms)
        .bind(filter.mode.as_str())
        .bind(filter.reason.unwrap_or(""))
        .bind(filter.layer.unwrap_or(""))
        .bind(filter.route.unwrap_or(""))
        .bind(filter.org.unwrap_or(""))
}

/// The counts `filter` matches from `from_ms` to `to_ms`, added up in the store over the
/// permission granted: one row per minute, route, reason, organization, principal and
/// status (what an alert names), however many rows the range holds.
pub async fn refusals(
    store: &Store,
    from_ms: i64,
    to_ms: i64,
    filter: RefusalFilter<'_>,
) -> Result<Vec<RollupRow>, StoreError> {
    let sql = format!(
        "SELECT minute_ms, route, reason, org_id, principal_id, status, CAST(SUM(count) AS BIGINT) FROM decision_rollups
         WHERE {REFUSALS_WHERE}
         GROUP BY minute_ms, route, reason, org_id, principal_id, status LIMIT 100000"
    );
    type Row = (i64, String, String, String, String, i64, i64);
    let rows: Vec<Row> = bind_refusals(sqlx::query_as(&sql), from_ms, to_ms, filter)
        .fetch_all(store.pool())
        .await?;
    let text = |value: String| (!value.is_empty()).then_some(value);
    Ok(rows
        .into_iter()
        .map(|(minute_ms, route, reason, org, principal, status, count)| RollupRow {
            key: RollupKey {
                minute_ms,
                route: text(route),
                reason: Reason::from_code(&reason),
                org_id: text(org).map(Arc::from),
                principal_id: text(principal).map(Arc::from),
                permission: None,
                status: u16::try_from(status).unwrap_or(0),
                mode: filter.mode,
            },
            count: u64::try_from(count).unwrap_or(0),
        })
        .collect())
}

/// How many requests `filter` matches from `from_ms` to `to_ms`, added up in the store.
pub async fn refusal_total(
    store: &Store,
    from_ms: i64,
    to_ms: i64,
    filter: RefusalFilter<'_>,
) -> Result<u64, StoreError> {
    let sql = format!("SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM decision_rollups WHERE {REFUSALS_WHERE}");
    let (total,): (i64,) = bind_refusals(sqlx::query_as(&sql), from_ms, to_ms, filter)
        .fetch_one(store.pool())
        .await?;
    Ok(u64::try_from(total).unwrap_or(0))
}

/// The permissions each principal was granted by the authorization layer from `from_ms`
/// on, as (principal, permission) pairs, and for each organization the first minute in
/// that range whose counts name one of its principals (how far back the answer reaches
/// for it: one tenant's traffic says nothing about another's coverage).
pub async fn permissions_used(
    store: &Store,
    from_ms: i64,
) -> Result<(HashMap<String, i64>, Vec<(String, String)>), StoreError> {
    let first: Vec<(String, i64)> = sqlx::query_as(
        "SELECT org_id, MIN(minute_ms) FROM decision_rollups
         WHERE minute_ms >= $1 AND principal_id != '' GROUP BY org_id",
    )
    .bind(from_ms)
    .fetch_all(store.pool())
    .await?;
    let first = first.into_iter().collect();
    let pairs = sqlx::query_as::<_, (String, String)>(
        "SELECT DISTINCT principal_id, permission FROM decision_rollups
         WHERE minute_ms >= $1 AND principal_id != '' AND permission != ''",
    )
    .bind(from_ms)
    .fetch_all(store.pool())
    .await?;
    Ok((first, pairs))
}

/// Drops the counts of minutes before `before_ms`.
pub async fn prune(store: &Store, before_ms: i64) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM decision_rollups WHERE minute_ms < $1")
        .bind(before_ms)
        .execute(store.pool())
        .await?;
    Ok(done.rows_affected())
}

/// Version 12: the rollups table.
pub(crate) const SCHEMA_V12: &[&str] = &["CREATE TABLE IF NOT EXISTS decision_rollups (
        minute_ms INTEGER NOT NULL,
        route TEXT NOT NULL,
        reason TEXT NOT NULL,
        org_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        mode TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (minute_ms, route, reason, org_id, status, mode)
    ) WITHOUT ROWID"];

/// Version 13: rollups count by principal and by the permission granted too.
pub(crate) const SCHEMA_V13: &[&str] = &[
    "ALTER TABLE decision_rollups RENAME TO decision_rollups_v12",
    "CREATE TABLE decision_rollups (
        minute_ms INTEGER NOT NULL,
        route TEXT NOT NULL,
        reason TEXT NOT NULL,
        org_id TEXT NOT NULL,
        principal_id TEXT NOT NULL,
        permission TEXT NOT NULL,
        status INTEGER NOT NULL,
        mode TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (minute_ms, route, reason, org_id, principal_id, permission, status, mode)
    ) WITHOUT ROWID",
    "INSERT INTO decision_rollups
        SELECT minute_ms, route, reason, org_id, '', '', status, mode, count FROM decision_rollups_v12",
    "DROP TABLE decision_rollups_v12",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn version_13_keeps_the_counts_of_version_12() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        // Put the table back as version 12 had it, with one count.
        let mut conn = store.pool().acquire().await.unwrap();
        for statement in [
            "DROP TABLE decision_rollups",
            "DROP TABLE config_loads",
            SCHEMA_V12[0],
            "INSERT INTO decision_rollups VALUES (60000, 'orders', 'authz.permission_missing', 'org-1', 403, 'enforce', 7)",
            "PRAGMA user_version = 12",
        ] {
            // One connection: each statement sees the one before.
            sqlx::query(statement).execute(&mut *conn).await.unwrap();
        }
        drop(conn);
        store.close().await;
        let store = Store::open(dir.path()).await.unwrap();
        let rows = read(&store, 0, i64::MAX).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].count, 7);
        assert_eq!(rows[0].key.reason, Some(Reason::AuthzPermissionMissing));
        assert_eq!(
            (rows[0].key.principal_id.clone(), rows[0].key.permission.clone()),
            (None, None)
        );
        crate::revisions::latest(&store, 0, i64::MAX).await.unwrap();
        // An older binary lowering the number over this table: opening again keeps it.
        sqlx::query("PRAGMA user_version = 12")
            .execute(store.pool())
            .await
            .unwrap();
        store.close().await;
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(read(&store, 0, i64::MAX).await.unwrap().len(), 1);
    }
}
