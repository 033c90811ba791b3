//! What only the PostgreSQL store has: its schema (the meaning of SQLite's version 13,
//! created in one step, versioned in `schema_version`), the change feed's triggers (which
//! also `NOTIFY` the [`CHANGES_CHANNEL`]), the key pepper check shared by replicas, and
//! the decision log's day partitions (retention drops a day, it never deletes rows).
//!
//! Every other query is shared with SQLite (`$N` placeholders, `ON CONFLICT`, `CASE` in
//! place of two-argument `MIN`/`MAX`).

use std::collections::BTreeSet;
use std::path::Path;

use sqlx::AnyPool;

use crate::{Store, StoreError, SCHEMA_VERSION};

/// The channel every directory change is announced on (payload: the change's `seq`).
pub const CHANGES_CHANNEL: &str = "pinpoint_directory_changes";

/// Advisory lock ids: schema migration, and decision-partition creation.
const MIGRATION_LOCK: i64 = 0x5049_4e50_0001;
const PARTITION_LOCK: i64 = 0x5049_4e50_0002;
/// Held while the bootstrap administrator is created, so replicas started together on a
/// new store make one.
pub(crate) const BOOTSTRAP_LOCK: i64 = 0x5049_4e50_0003;

/// A session-level advisory lock, held on one pooled connection until [`SessionLock::release`].
pub(crate) struct SessionLock(sqlx::pool::PoolConnection<sqlx::Any>);

impl SessionLock {
    pub(crate) async fn take(store: &Store, id: i64) -> Result<SessionLock, StoreError> {
        let mut conn = store.pool().acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        Ok(SessionLock(conn))
    }

    /// Releases the lock; a connection that cannot say so is closed, which releases it too.
    pub(crate) async fn release(mut self) {
        if sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut *self.0)
            .await
            .is_err()
        {
            let _ = self.0.close().await;
        }
    }
}

/// PostgreSQL's own tables: those whose SQLite shape grew by `ALTER TABLE` (written here in
/// their final shape), the partitioned decisions, and the store's metadata. Every other
/// table is SQLite's definition in PostgreSQL's types ([`shared_tables`]).
const OWN_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS store_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS decisions (
        seq BIGSERIAL,
        request_id TEXT NOT NULL,
        client_request_id TEXT,
        at_ms BIGINT NOT NULL,
        status BIGINT NOT NULL,
        reason TEXT,
        route TEXT,
        org_id TEXT,
        record TEXT NOT NULL
    ) PARTITION BY RANGE (at_ms)",
    "CREATE INDEX IF NOT EXISTS decisions_seq ON decisions(seq)",
    "CREATE INDEX IF NOT EXISTS decisions_request_id ON decisions(request_id)",
    "CREATE INDEX IF NOT EXISTS decisions_client_request_org ON decisions(client_request_id, org_id) WHERE client_request_id IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        secret_hash BYTEA NOT NULL,
        created_at_ms BIGINT NOT NULL,
        last_used_at_ms BIGINT,
        revoked BIGINT NOT NULL DEFAULT 0,
        kind TEXT NOT NULL DEFAULT 'application',
        org_id TEXT,
        principal_id TEXT,
        scopes TEXT,
        expires_at_ms BIGINT,
        replaced_by TEXT
    )",
    // The change feed. Writers take one transaction-scoped lock before appending, so
    // changes commit in `seq` order and a reader that has seen `seq` N never later finds
    // a smaller one committed (what SQLite's single writer gives for free). The lock is
    // taken before each writing statement touches a row (a statement-level trigger), so a
    // transaction never holds row locks while it waits for it: two writers cannot deadlock
    // on it and the rows.
    "CREATE OR REPLACE FUNCTION pinpoint_directory_lock() RETURNS trigger AS $$
     BEGIN
        PERFORM pg_advisory_xact_lock(5787213827432448003);
        RETURN NULL;
     END
     $$ LANGUAGE plpgsql",
    "CREATE OR REPLACE FUNCTION pinpoint_directory_change() RETURNS trigger AS $$
     DECLARE
        changed_id TEXT;
        new_seq BIGINT;
     BEGIN
        PERFORM pg_advisory_xact_lock(5787213827432448003);
        IF TG_OP = 'DELETE' THEN
            changed_id := to_jsonb(OLD) ->> TG_ARGV[1];
        ELSE
            changed_id := to_jsonb(NEW) ->> TG_ARGV[1];
        END IF;
        INSERT INTO directory_changes (kind, id, at_ms)
            VALUES (TG_ARGV[0], changed_id, (extract(epoch from clock_timestamp()) * 1000)::BIGINT)
            RETURNING seq INTO new_seq;
        PERFORM pg_notify('pinpoint_directory_changes', new_seq::TEXT);
        RETURN NULL;
     END
     $$ LANGUAGE plpgsql",
];

/// The tables whose shape never changed after SQLite created them, defined once: SQLite's
/// statements with PostgreSQL's types (64-bit integers, `BYTEA`, identity sequences).
fn shared_tables() -> Vec<String> {
    let directory_changes = crate::changes::schema_v9().swap_remove(0);
    let rollups = crate::rollups::SCHEMA_V13
        .iter()
        .filter(|s| s.contains("CREATE TABLE decision_rollups"));
    crate::SCHEMA_V2
        .iter()
        .chain(crate::SCHEMA_V3)
        .chain(crate::cloudauth::SCHEMA_V4)
        .chain(crate::cloudauth::SCHEMA_V7)
        .chain(rollups)
        .chain(crate::revisions::SCHEMA_V13)
        .map(|s| s.to_string())
        .chain([directory_changes])
        .filter(|statement| statement.starts_with("CREATE"))
        .map(|statement| in_postgres_types(&statement))
        .collect()
}

/// A SQLite `CREATE` statement in PostgreSQL's dialect.
fn in_postgres_types(sqlite: &str) -> String {
    sqlite
        .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        .replace("INTEGER", "BIGINT")
        .replace("BLOB", "BYTEA")
        .replace(" WITHOUT ROWID", "")
        .replace(
            "CREATE TABLE decision_rollups",
            "CREATE TABLE IF NOT EXISTS decision_rollups",
        )
}

/// The feed's triggers: (table, events, kind, id column). A key's last-use time is not a
/// change (as on SQLite).
const TRIGGERS: &[(&str, &str, &str, &str)] = &[
    ("api_keys", "INSERT OR DELETE", "key", "id"),
    (
        "api_keys",
        "UPDATE OF name, role, secret_hash, revoked, kind, org_id, principal_id, scopes, expires_at_ms, replaced_by",
        "key",
        "id",
    ),
    ("principals", "INSERT OR UPDATE OR DELETE", "principal", "id"),
    ("organizations", "INSERT OR UPDATE OR DELETE", "org", "id"),
    ("roles", "UPDATE", "role", "id"),
    ("role_assignments", "INSERT OR DELETE", "principal", "principal_id"),
    ("signing_keys", "INSERT OR UPDATE OR DELETE", "signing_key", "kid"),
];

/// Creates the schema when the database is new (one replica at a time, under an advisory
/// lock), refuses a newer one, and returns the pepper: read from `pepper_file` (created
/// there when the store has none yet) and checked against the store's record of it.
pub(crate) async fn migrate_and_check_pepper(pool: &AnyPool, pepper_file: &Path) -> Result<Vec<u8>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
        .fetch_one(&mut *tx)
        .await?;
    let version = version.unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(StoreError::Invalid {
            path: "postgres".into(),
            message: format!("schema version {version} is newer than this binary understands ({SCHEMA_VERSION})"),
        });
    }
    if version < SCHEMA_VERSION {
        for statement in OWN_SCHEMA.iter().map(|s| s.to_string()).chain(shared_tables()) {
            sqlx::query(&statement).execute(&mut *tx).await?;
        }
        for (i, (table, events, kind, column)) in TRIGGERS.iter().enumerate() {
            let (lock, change) = (format!("{table}_lock_{i}"), format!("{table}_changed_{i}"));
            for statement in [
                format!("DROP TRIGGER IF EXISTS {lock} ON {table}"),
                format!("DROP TRIGGER IF EXISTS {change} ON {table}"),
                format!(
                    "CREATE TRIGGER {lock} BEFORE {events} ON {table} FOR EACH STATEMENT \
                     EXECUTE FUNCTION pinpoint_directory_lock()"
                ),
                format!(
                    "CREATE TRIGGER {change} AFTER {events} ON {table} FOR EACH ROW \
                     EXECUTE FUNCTION pinpoint_directory_change('{kind}', '{column}')"
                ),
            ] {
                sqlx::query(&statement).execute(&mut *tx).await?;
            }
        }
        sqlx::query("DELETE FROM schema_version").execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(SCHEMA_VERSION)
            .execute(&mut *tx)
            .await?;
    }
    let recorded: Option<String> = sqlx::query_scalar("SELECT value FROM store_meta WHERE name = 'pepper_check'")
        .fetch_optional(&mut *tx)
        .await?;
    let pepper = match &recorded {
        // A store that has a pepper: the file must exist and hold the same one.
        Some(_) => crate::files::read_pepper(pepper_file)?,
        None => crate::files::load_or_create_pepper(pepper_file)?,
    };
    let check = pepper_check(&pepper);
    match recorded {
        Some(recorded) if recorded != check => {
            return Err(StoreError::Invalid {
                path: pepper_file.to_owned(),
                message:
                    "this is not the pepper the store's keys were hashed with: give every replica the same pepper file"
                        .into(),
            })
        }
        Some(_) => {}
        None => {
            sqlx::query("INSERT INTO store_meta (name, value) VALUES ('pepper_check', $1)")
                .bind(&check)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(pepper)
}

/// What the store keeps to recognise its pepper: a keyed hash of a fixed label, which
/// says nothing about the pepper itself.
fn pepper_check(pepper: &[u8]) -> String {
    pinpoint_core::hex::lower(&pinpoint_core::keys::hash_secret(pepper, "pinpoint pepper check v1"))
}

const DAY_MS: i64 = 86_400_000;

/// The latest time a decision partition is made for (the end of year 9999): a record with
/// a time outside 1970..=9999 (a clock gone wrong, an edited spool) is filed at the nearer
/// end, so partition bounds never overflow and names never go negative.
const LAST_MS: i64 = 253_402_300_799_999;

/// Where a decision made at `at_ms` is filed (its `at_ms` column; the record keeps the
/// original).
pub(crate) fn filed_at(at_ms: i64) -> i64 {
    at_ms.clamp(0, LAST_MS)
}

/// The partitions this process knows exist may be gone (another replica's retention, an
/// operator): forgotten after a failed insert, so the next one makes sure again.
pub(crate) fn forget_partitions(store: &Store) {
    known_days(store).clear();
}

/// The days whose partition this process knows exists (a poisoned lock still holds them).
fn known_days(store: &Store) -> std::sync::MutexGuard<'_, BTreeSet<i64>> {
    store.day_partitions.lock().unwrap_or_else(|e| e.into_inner())
}

fn partition_name(day: i64) -> String {
    format!("decisions_day_{day}")
}

/// Makes sure the decision partitions of the days `at_ms` fall in exist.
pub(crate) async fn ensure_day_partitions(store: &Store, at_ms: impl Iterator<Item = i64>) -> Result<(), StoreError> {
    let days: BTreeSet<i64> = at_ms.map(|at| filed_at(at) / DAY_MS).collect();
    let missing: Vec<i64> = {
        let known = known_days(store);
        days.into_iter().filter(|day| !known.contains(day)).collect()
    };
    if missing.is_empty() {
        return Ok(());
    }
    let mut tx = store.pool().begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PARTITION_LOCK)
        .execute(&mut *tx)
        .await?;
    for day in &missing {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF decisions FOR VALUES FROM ({}) TO ({})",
            partition_name(*day),
            day * DAY_MS,
            (day + 1) * DAY_MS
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    known_days(store).extend(missing);
    Ok(())
}

/// The days that have a decision partition, oldest first.
async fn partition_days(store: &Store) -> Result<Vec<i64>, StoreError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace
         WHERE p.relname = 'decisions' AND n.nspname = current_schema()",
    )
    .fetch_all(store.pool())
    .await?;
    let mut days: Vec<i64> = names
        .iter()
        .filter_map(|name| name.strip_prefix("decisions_day_")?.parse().ok())
        .collect();
    days.sort_unstable();
    Ok(days)
}

/// What the decision partitions take on disk, indexes included.
async fn partitions_bytes(store: &Store) -> Result<u64, StoreError> {
    let bytes: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(pg_total_relation_size(i.inhrelid)), 0) AS BIGINT) FROM pg_inherits i
         JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace
         WHERE p.relname = 'decisions' AND n.nspname = current_schema()",
    )
    .fetch_one(store.pool())
    .await?;
    Ok(u64::try_from(bytes).unwrap_or(0))
}

/// Drops the partitions of days that ended before `horizon_ms`, then, while the decision
/// records take more than `max_bytes`, the oldest day (never today's). Returns how many
/// days went.
pub(crate) async fn drop_old_partitions(
    store: &Store,
    horizon_ms: i64,
    max_bytes: Option<u64>,
) -> Result<u64, StoreError> {
    let today = crate::now_ms().div_euclid(DAY_MS);
    let mut dropped = 0;
    for day in partition_days(store).await? {
        let ended_before_horizon = (day + 1) * DAY_MS <= horizon_ms;
        let over_size = match max_bytes {
            Some(max) if day < today => partitions_bytes(store).await? > max,
            _ => false,
        };
        if !(ended_before_horizon || over_size) {
            break;
        }
        known_days(store).remove(&day);
        sqlx::query(&format!("DROP TABLE IF EXISTS {}", partition_name(day)))
            .execute(store.pool())
            .await?;
        dropped += 1;
    }
    Ok(dropped)
}
