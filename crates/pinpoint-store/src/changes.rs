//! The directory's change feed: every write to keys, principals, organizations, roles and
//! role assignments appends `(kind, id)` to `directory_changes`, by triggers in the same
//! transaction as the write, whoever made it (this process's API, another process on the
//! same data dir, the CLI). A directory remembers the last `seq` it applied and reads what
//! came after ([`Store::directory_changes_after`]); SQLite has one writer at a time, so a
//! reader never sees a later `seq` committed before an earlier one.

use sqlx::Row;

use crate::{Store, StoreError};

/// What changed: the kind of record and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Key,
    Principal,
    Org,
    /// A role's permissions changed or it was deleted: every holder's permissions follow.
    Role,
    /// A token signing key was added, retired or removed.
    SigningKey,
}

/// One entry of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryChange {
    pub seq: i64,
    pub kind: ChangeKind,
    pub id: String,
}

const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

/// Version 9: the change feed and the triggers that fill it. A key's last-use time is not
/// a change (it is written once a minute per key and no directory reads it back).
pub(crate) fn schema_v9() -> Vec<String> {
    let mut statements = vec![String::from(
        "CREATE TABLE IF NOT EXISTS directory_changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            at_ms INTEGER NOT NULL
        )",
    )];
    let key_update = "UPDATE OF name, role, secret_hash, revoked, kind, org_id, principal_id, scopes, \
                      expires_at_ms, replaced_by ON api_keys";
    let triggers: [(&str, &str, &str, &str); 12] = [
        ("api_keys_inserted", "INSERT ON api_keys", "key", "NEW.id"),
        ("api_keys_updated", key_update, "key", "NEW.id"),
        ("api_keys_deleted", "DELETE ON api_keys", "key", "OLD.id"),
        ("principals_inserted", "INSERT ON principals", "principal", "NEW.id"),
        ("principals_updated", "UPDATE ON principals", "principal", "NEW.id"),
        ("principals_deleted", "DELETE ON principals", "principal", "OLD.id"),
        // A new organization is a change too (its standing may already be asked for).
        ("organizations_inserted", "INSERT ON organizations", "org", "NEW.id"),
        ("organizations_updated", "UPDATE ON organizations", "org", "NEW.id"),
        ("organizations_deleted", "DELETE ON organizations", "org", "OLD.id"),
        ("roles_updated", "UPDATE ON roles", "role", "NEW.id"),
        (
            "role_assignments_inserted",
            "INSERT ON role_assignments",
            "principal",
            "NEW.principal_id",
        ),
        (
            "role_assignments_deleted",
            "DELETE ON role_assignments",
            "principal",
            "OLD.principal_id",
        ),
    ];
    for (name, event, kind, id) in triggers {
        statements.push(format!(
            "CREATE TRIGGER IF NOT EXISTS {name} AFTER {event} BEGIN \
             INSERT INTO directory_changes (kind, id, at_ms) VALUES ('{kind}', {id}, {NOW_MS}); END"
        ));
    }
    statements
}

/// Version 11: signing keys join the feed, so every process knows a new token key (and
/// strips tokens it signed) as soon as one process rotates.
pub(crate) fn schema_v11() -> Vec<String> {
    [
        ("signing_keys_inserted", "INSERT ON signing_keys", "NEW.kid"),
        ("signing_keys_updated", "UPDATE ON signing_keys", "NEW.kid"),
        ("signing_keys_deleted", "DELETE ON signing_keys", "OLD.kid"),
    ]
    .into_iter()
    .map(|(name, event, id)| {
        format!(
            "CREATE TRIGGER IF NOT EXISTS {name} AFTER {event} BEGIN \
             INSERT INTO directory_changes (kind, id, at_ms) VALUES ('signing_key', {id}, {NOW_MS}); END"
        )
    })
    .collect()
}

/// The directory change feed: what changed in identities, keys and roles, in order.
pub trait ChangeFeed {
    /// The newest `seq` in the feed (0 when empty): where a directory loaded now starts.
    fn directory_change_head(&self) -> impl std::future::Future<Output = Result<i64, StoreError>> + Send;

    /// Up to `limit` changes after `seq`, oldest first.
    fn directory_changes_after(
        &self,
        seq: i64,
        limit: i64,
    ) -> impl std::future::Future<Output = Result<Vec<DirectoryChange>, StoreError>> + Send;

    /// The oldest `seq` still in the feed, if any (a reader that is further behind has
    /// missed pruned changes and must reload everything).
    fn directory_change_tail(&self) -> impl std::future::Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Drops feed entries older than `before_ms`, keeping the newest one (so the head, and
    /// with it every reader's place, survives).
    fn prune_directory_changes(
        &self,
        before_ms: i64,
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send;
}

impl ChangeFeed for Store {
    async fn directory_change_head(&self) -> Result<i64, StoreError> {
        let head: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM directory_changes")
            .fetch_one(self.pool())
            .await?;
        Ok(head.unwrap_or(0))
    }

    async fn directory_changes_after(&self, seq: i64, limit: i64) -> Result<Vec<DirectoryChange>, StoreError> {
        let rows = sqlx::query("SELECT seq, kind, id FROM directory_changes WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(seq)
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            let kind = match row.try_get::<String, _>("kind")?.as_str() {
                "key" => ChangeKind::Key,
                "principal" => ChangeKind::Principal,
                "org" => ChangeKind::Org,
                "role" => ChangeKind::Role,
                "signing_key" => ChangeKind::SigningKey,
                // Written only by this schema's triggers; an unknown kind is skipped.
                _ => continue,
            };
            changes.push(DirectoryChange {
                seq: row.try_get("seq")?,
                kind,
                id: row.try_get("id")?,
            });
        }
        Ok(changes)
    }

    async fn directory_change_tail(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT MIN(seq) FROM directory_changes")
            .fetch_one(self.pool())
            .await?)
    }

    async fn prune_directory_changes(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM directory_changes WHERE at_ms < $1 AND seq < (SELECT MAX(seq) FROM directory_changes)",
        )
        .bind(before_ms)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }
}

/// Name the change listener's connection carries (`pg_stat_activity.application_name`).
pub const LISTENER_APPLICATION_NAME: &str = "pinpoint-change-listener";

impl Store {
    /// On PostgreSQL, a task that wakes `wake` whenever a directory change is announced
    /// (`LISTEN` on [`crate::CHANGES_CHANNEL`]), reconnecting when its connection drops.
    /// A notification sent while it reconnects is lost: the follower's own poll finds that
    /// change. None on SQLite (one host: the poll alone).
    pub fn spawn_change_listener(
        &self,
        wake: std::sync::Arc<tokio::sync::Notify>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let url = self.postgres_url()?.to_owned();
        Some(tokio::spawn(async move {
            let mut failing = false;
            loop {
                match listen(&url, &wake).await {
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "change notifications lost; following the store by polling until they return");
                    }
                    Err(_) => {}
                }
                // Whatever was announced meanwhile: the follower reads the feed now.
                wake.notify_one();
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }))
    }
}

/// Listens until the connection fails.
async fn listen(url: &str, wake: &tokio::sync::Notify) -> Result<(), sqlx::Error> {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?.application_name(LISTENER_APPLICATION_NAME);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
    listener.listen(crate::CHANGES_CHANNEL).await?;
    wake.notify_one();
    loop {
        match listener.try_recv().await? {
            Some(_) => wake.notify_one(),
            // The connection dropped: the caller says so, wakes the follower, connects again.
            None => return Err(sqlx::Error::PoolClosed),
        }
    }
}
