//! Pinpoint's persistence. [`Store`] owns the database (SQLite in WAL mode under the data
//! directory) and the server pepper; [`decisions`] owns the off-hot-path decision log
//! writer; [`keys`] owns API keys (issued once, stored hashed) and the bootstrap admin key.
//! Each aggregate is a trait ([`IdentityStore`], [`KeyStore`], [`CloudAuthStore`],
//! [`DecisionStore`], [`QuotaStore`], [`SigningKeyStore`], [`ChangeFeed`]) that [`Store`]
//! implements over SQLite; another backend implements the same traits.
#![forbid(unsafe_code)]

pub mod changes;
pub mod cloudauth;
pub mod decisions;
mod files;
pub mod identities;
pub mod keys;
pub mod migrate;
mod postgres;
pub mod record;
pub mod revisions;
pub mod rollups;
pub mod signing;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, ConnectOptions, Executor};

pub use changes::{ChangeFeed, ChangeKind, DirectoryChange};
pub use cloudauth::CloudAuthStore;
pub use decisions::DecisionStore;
pub use identities::IdentityStore;
pub use keys::KeyStore;
pub use postgres::CHANGES_CHANNEL;
pub use signing::SigningKeyStore;

/// The store's traits, one per aggregate: `use pinpoint_store::prelude::*;` to call their
/// methods on a [`Store`].
pub mod prelude {
    pub use crate::{ChangeFeed, CloudAuthStore, DecisionStore, IdentityStore, KeyStore, QuotaStore, SigningKeyStore};
}
pub use decisions::{DecisionFilter, DecisionLog, DecisionLogWriter};
pub use keys::{IssuedKey, NewKey, StoredKey};
pub use signing::SigningKeyRecord;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("stored record could not be decoded: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
}

/// Which database a [`Store`] is on: the embedded SQLite file (the default) or a
/// PostgreSQL server shared by replicas. Queries are written once, with `$N` placeholders
/// both take; the few statements whose dialects differ ask [`Store::backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Its name in `/healthz`: `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl StoreError {
    /// Whether the database could not be reached (as opposed to refusing what was asked):
    /// connection failures, a pool that waited in vain, a server shutting down or not
    /// accepting connections.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Db(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // SQLSTATE class 08 (connection exception), 57P (operator intervention:
                // shutdown, cannot connect now), 55000 (database not accepting connections).
                sqlx::Error::Database(db) => db
                    .code()
                    .is_some_and(|code| code.starts_with("08") || code.starts_with("57P") || code == "55000"),
                _ => false,
            },
            _ => false,
        }
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    pepper: std::sync::Arc<[u8]>,
    data_dir: PathBuf,
    /// The PostgreSQL URL (for the change-feed listener), when on PostgreSQL.
    url: Option<std::sync::Arc<str>>,
    /// PostgreSQL: the days whose decision partition this process knows exists.
    day_partitions: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<i64>>>,
}

/// Set on every SQLite connection. 16 KiB pages for a new store (an existing one keeps its
/// size): the decision log appends a few hundred bytes per request, and larger pages mean
/// a quarter of the WAL frames, each a write system call or two. Reads go through a memory
/// map and a larger page cache: the decision writer revisits the same index pages batch
/// after batch.
const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA page_size = 16384",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
    "PRAGMA mmap_size = 268435456",
    "PRAGMA cache_size = -32768",
];

/// The embedded store's database file in the data directory.
pub const DB_FILE: &str = "pinpoint.db";

/// The key pepper's file in the data directory (unless `[store] pepper_file` says where).
pub const PEPPER_FILE: &str = "pepper";

/// Current schema version (SQLite `user_version`; PostgreSQL's `schema_version` table).
const SCHEMA_VERSION: i64 = 13;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS decisions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        status INTEGER NOT NULL,
        reason TEXT,
        route TEXT,
        record TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS decisions_request_id ON decisions(request_id)",
    "CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        secret_hash BLOB NOT NULL,
        created_at_ms INTEGER NOT NULL,
        last_used_at_ms INTEGER,
        revoked INTEGER NOT NULL DEFAULT 0
    )",
];

/// Version 10: a decision's organization as a column, so lookups by a client's request id
/// select the caller's organization's decisions before limiting how many.
const SCHEMA_V10: &[&str] = &[
    "ALTER TABLE decisions ADD COLUMN org_id TEXT",
    "CREATE INDEX IF NOT EXISTS decisions_client_request_org ON decisions(client_request_id, org_id) WHERE client_request_id IS NOT NULL",
];

/// Version 8: a rotated key names its successor, so its refusal after the overlap can.
const SCHEMA_V8: &[&str] = &["ALTER TABLE api_keys ADD COLUMN replaced_by TEXT"];

/// Version 6: the client's own request id, a second way to find a decision. Its index is
/// partial: requests without a client id (most) add nothing to it.
const SCHEMA_V6: &[&str] = &[
    "ALTER TABLE decisions ADD COLUMN client_request_id TEXT",
    "CREATE INDEX IF NOT EXISTS decisions_client_request_id ON decisions(client_request_id) WHERE client_request_id IS NOT NULL",
];

/// Version 5: decisions lose their `at_ms` index. Pruning walks `seq` order instead (rows are
/// appended in time order), and one index fewer is one b-tree fewer to rewrite for every
/// batch of decisions.
const SCHEMA_V5: &[&str] = &["DROP INDEX IF EXISTS decisions_at"];

/// Version 3: quota counters, so a restart does not reset daily or monthly quotas.
const SCHEMA_V3: &[&str] = &["CREATE TABLE IF NOT EXISTS quota_usage (
        quota_id TEXT NOT NULL,
        org_id TEXT NOT NULL,
        window_start_ms INTEGER NOT NULL,
        used INTEGER NOT NULL,
        PRIMARY KEY (quota_id, org_id, window_start_ms)
    )"];

/// Version 2: organizations, principals, roles, key ownership and signing keys.
const SCHEMA_V2: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS organizations (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        suspended INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS principals (
        id TEXT PRIMARY KEY,
        org_id TEXT NOT NULL REFERENCES organizations(id),
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        email TEXT,
        suspended INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL,
        UNIQUE (org_id, kind, name)
    )",
    "CREATE TABLE IF NOT EXISTS roles (
        id TEXT PRIMARY KEY,
        org_id TEXT NOT NULL REFERENCES organizations(id),
        name TEXT NOT NULL,
        permissions TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        UNIQUE (org_id, name)
    )",
    "CREATE TABLE IF NOT EXISTS role_assignments (
        principal_id TEXT NOT NULL REFERENCES principals(id),
        role_id TEXT NOT NULL REFERENCES roles(id),
        PRIMARY KEY (principal_id, role_id)
    )",
    "CREATE TABLE IF NOT EXISTS signing_keys (
        kid TEXT PRIMARY KEY,
        alg TEXT NOT NULL,
        private_pkcs8 BLOB NOT NULL,
        public_raw BLOB NOT NULL,
        created_at_ms INTEGER NOT NULL,
        retire_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL
    )",
    "ALTER TABLE api_keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'application'",
    "ALTER TABLE api_keys ADD COLUMN org_id TEXT",
    "ALTER TABLE api_keys ADD COLUMN principal_id TEXT",
    "ALTER TABLE api_keys ADD COLUMN scopes TEXT",
    "ALTER TABLE api_keys ADD COLUMN expires_at_ms INTEGER",
    "CREATE INDEX IF NOT EXISTS api_keys_principal ON api_keys(principal_id)",
    "CREATE INDEX IF NOT EXISTS role_assignments_role ON role_assignments(role_id)",
];

/// Applies one schema version's statements and records the version, in one transaction.
/// A column that is already there (an older binary's version number over a newer table)
/// is taken as added: `ALTER TABLE ... ADD COLUMN` has no `IF NOT EXISTS` in SQLite.
async fn migrate_to(pool: &AnyPool, version: i64, statements: &[&str]) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    for statement in statements {
        match sqlx::query(statement).execute(&mut *tx).await {
            Err(sqlx::Error::Database(e)) if e.message().starts_with("duplicate column name") => {}
            other => {
                other?;
            }
        }
    }
    sqlx::query(&format!("PRAGMA user_version = {version}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the embedded store in `data_dir`: `pinpoint.db` and the
    /// `pepper` file (32 random bytes, mode 0600) used to hash key secrets.
    pub async fn open(data_dir: &Path) -> Result<Store, StoreError> {
        create_private_dir(data_dir)?;
        let pepper = files::load_or_create_pepper(&data_dir.join(PEPPER_FILE))?;
        sqlx::any::install_default_drivers();
        let url = SqliteConnectOptions::new()
            .filename(data_dir.join(DB_FILE))
            .create_if_missing(true)
            .to_url_lossy();
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in SQLITE_PRAGMAS {
                        conn.execute(*pragma).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(AnyConnectOptions::from_url(&url)?)
            .await?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&pool).await?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Invalid {
                path: data_dir.join(DB_FILE),
                message: format!("schema version {version} is newer than this binary understands ({SCHEMA_VERSION})"),
            });
        }
        if version < 1 {
            for statement in SCHEMA {
                sqlx::query(statement).execute(&pool).await?;
            }
        }
        if version < 2 {
            let mut tx = pool.begin().await?;
            for statement in SCHEMA_V2 {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
        if version < 3 {
            for statement in SCHEMA_V3 {
                sqlx::query(statement).execute(&pool).await?;
            }
        }
        if version < 4 {
            for statement in cloudauth::SCHEMA_V4 {
                sqlx::query(statement).execute(&pool).await?;
            }
        }
        for (to, statements) in [
            (5, SCHEMA_V5),
            (6, SCHEMA_V6),
            (7, cloudauth::SCHEMA_V7),
            (8, SCHEMA_V8),
        ] {
            if version < to {
                migrate_to(&pool, to, statements).await?;
            }
        }
        if version < 9 {
            let statements = changes::schema_v9();
            let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
            migrate_to(&pool, 9, &statements).await?;
        }
        if version < 10 {
            migrate_to(&pool, 10, SCHEMA_V10).await?;
        }
        if version < 11 {
            let statements = changes::schema_v11();
            let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
            migrate_to(&pool, 11, &statements).await?;
        }
        if version < 12 {
            migrate_to(&pool, 12, rollups::SCHEMA_V12).await?;
        }
        if version < 13 {
            // A store already at 13 whose number an older binary lowered keeps its table.
            let has_principals: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pragma_table_info('decision_rollups') WHERE name = 'principal_id'",
            )
            .fetch_one(&pool)
            .await?;
            let has_principals = has_principals > 0;
            let rollups = if has_principals { &[][..] } else { rollups::SCHEMA_V13 };
            let statements: Vec<&str> = [rollups, revisions::SCHEMA_V13].concat();
            migrate_to(&pool, 13, &statements).await?;
        }
        sqlx::query(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .execute(&pool)
            .await?;
        Ok(Store {
            pool,
            backend: Backend::Sqlite,
            pepper: pepper.into(),
            data_dir: data_dir.to_owned(),
            url: None,
            day_partitions: Default::default(),
        })
    }

    /// Connects to the PostgreSQL store at `url` (creating or migrating its schema), with
    /// the key pepper read from `pepper_file`: created there when the store is new, and
    /// refused when it is not the pepper the store's keys were hashed with (every replica
    /// must be given the same file). `data_dir` keeps what is local to this replica (the
    /// decision spool, the bootstrap key file).
    pub async fn connect(url: &str, pepper_file: &Path, data_dir: &Path) -> Result<Store, StoreError> {
        create_private_dir(data_dir)?;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        let pepper = postgres::migrate_and_check_pepper(&pool, pepper_file).await?;
        Ok(Store {
            pool,
            backend: Backend::Postgres,
            pepper: pepper.into(),
            data_dir: data_dir.to_owned(),
            url: Some(url.into()),
            day_partitions: Default::default(),
        })
    }

    /// Opens the store `config` names: PostgreSQL when `[store] url` is set, else the
    /// embedded SQLite file in `data_dir`.
    pub async fn open_configured(
        config: &pinpoint_core::config::StoreConfig,
        data_dir: &Path,
    ) -> Result<Store, StoreError> {
        match &config.url {
            Some(url) => {
                let pepper_file = config.pepper_file.clone().unwrap_or_else(|| data_dir.join(PEPPER_FILE));
                Store::connect(url, &pepper_file, data_dir).await
            }
            None => Store::open(data_dir).await,
        }
    }

    /// Whether the database answers a trivial query within a second, and how many bytes of
    /// decisions wait in the spool for it (`/healthz` reports both).
    pub async fn health(&self) -> (bool, u64) {
        let reachable = tokio::time::timeout(Duration::from_secs(1), sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .is_ok_and(|answered| answered.is_ok());
        let spooled = std::fs::metadata(self.data_dir.join(decisions::SPOOL_FILE)).map_or(0, |m| m.len());
        (reachable, spooled)
    }

    /// Which database this store is on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The PostgreSQL URL, when on PostgreSQL (the change-feed listener connects to it).
    pub fn postgres_url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// Closes every connection; later queries fail with [`StoreError::Db`].
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The data directory this store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A write transaction that takes the write lock up front (`BEGIN IMMEDIATE`): in WAL
    /// mode a transaction that reads first and writes later fails with SQLITE_BUSY_SNAPSHOT
    /// when another writer (the decision log) committed in between; waiting for the lock
    /// at the start is covered by the busy timeout instead.
    /// On PostgreSQL, a plain transaction (row locks and constraints order writers there).
    pub(crate) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// Quota counters, saved so a restart does not reset quotas.
pub trait QuotaStore {
    /// Quota counters of windows that started after `since_ms`.
    fn quota_usage(
        &self,
        since_ms: i64,
    ) -> impl std::future::Future<Output = Result<Vec<(String, String, i64, u64)>, StoreError>> + Send;

    /// Saves quota counters (a counter never goes down) and forgets windows older than `before_ms`.
    fn save_quota_usage(
        &self,
        counters: &[(String, String, i64, u64)],
        before_ms: i64,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

impl QuotaStore for Store {
    async fn quota_usage(&self, since_ms: i64) -> Result<Vec<(String, String, i64, u64)>, StoreError> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT quota_id, org_id, window_start_ms, used FROM quota_usage WHERE window_start_ms >= $1",
        )
        .bind(since_ms)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(q, o, w, u)| (q, o, w, u.max(0) as u64))
            .collect())
    }

    async fn save_quota_usage(
        &self,
        counters: &[(String, String, i64, u64)],
        before_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        for (quota, org, window, used) in counters {
            sqlx::query(
                "INSERT INTO quota_usage (quota_id, org_id, window_start_ms, used) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (quota_id, org_id, window_start_ms) DO UPDATE SET used = CASE WHEN excluded.used > quota_usage.used THEN excluded.used ELSE quota_usage.used END",
            )
            .bind(quota)
            .bind(org)
            .bind(window)
            .bind(i64::try_from(*used).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM quota_usage WHERE window_start_ms < $1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
