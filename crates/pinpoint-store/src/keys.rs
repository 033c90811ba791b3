//! API keys in the store: issued with 256 random bits, shown once, stored only as
//! `HMAC-SHA256(pepper, secret)`, looked up by their public id and verified in constant
//! time. Also the bootstrap admin key a fresh store creates on first start.

use crate::prelude::*;

use base64::Engine;
use pinpoint_core::identity::{ApiKey, KeyKind, PrincipalKind, ALL_PERMISSIONS};
use pinpoint_core::keys;
use rand::RngCore;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{now_ms, Store, StoreError};

/// Name of the file (in the data dir) holding the bootstrap admin key.
pub const BOOTSTRAP_KEY_FILE: &str = "bootstrap-admin.key";

/// A key as just issued: the only time its secret exists outside the caller.
/// `Debug` redacts the secret.
pub struct IssuedKey {
    pub info: ApiKey,
    /// The whole key (`pp_<id>_<secret>`).
    pub key: String,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuedKey {{ id: {}, key: <redacted> }}", self.info.id)
    }
}

/// What a new key is for.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub kind: KeyKind,
    pub org_id: String,
    /// Required for application keys, absent for organization (api) keys.
    pub principal_id: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub expires_at_ms: Option<i64>,
}

/// A stored key with its hash, for the directory.
#[derive(Clone)]
pub struct StoredKey {
    pub info: ApiKey,
    pub secret_hash: Vec<u8>,
}

/// The name of the operators' organization created on first start.
pub const OPERATORS_ORG: &str = "pinpoint-operators";
/// The role created for the bootstrap admin.
pub const PLATFORM_ADMIN_ROLE: &str = "platform-admin";

fn key_from(row: &AnyRow) -> Result<StoredKey, StoreError> {
    let kind: String = row.try_get("kind")?;
    let scopes: Option<String> = row.try_get("scopes")?;
    Ok(StoredKey {
        info: ApiKey {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            kind: KeyKind::parse(&kind).ok_or_else(|| StoreError::Conflict(format!("unknown key kind {kind}")))?,
            org_id: row.try_get::<Option<String>, _>("org_id")?.unwrap_or_default(),
            principal_id: row.try_get("principal_id")?,
            scopes: scopes.map(|s| serde_json::from_str(&s)).transpose()?,
            expires_at_ms: row.try_get("expires_at_ms")?,
            revoked: row.try_get::<i64, _>("revoked")? != 0,
            created_at_ms: row.try_get("created_at_ms")?,
            last_used_at_ms: row.try_get("last_used_at_ms")?,
            replaced_by: row.try_get("replaced_by")?,
        },
        secret_hash: row.try_get("secret_hash")?,
    })
}

impl Store {
    /// The id of the key in the bootstrap key file, if the file holds one.
    pub fn bootstrap_key_id(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data_dir.join(BOOTSTRAP_KEY_FILE)).ok()?;
        pinpoint_core::keys::parse(text.trim()).map(|k| k.id.to_owned())
    }

    /// Replaces the bootstrap key file's key (after a rotation or a recovery): written to a
    /// new private file, synced, then renamed over the old one, so a reader sees one whole key.
    pub fn replace_bootstrap_key_file(&self, key: &str) -> Result<(), StoreError> {
        let path = self.data_dir.join(BOOTSTRAP_KEY_FILE);
        let fresh = self.data_dir.join(format!("{BOOTSTRAP_KEY_FILE}.new"));
        let _ = std::fs::remove_file(&fresh);
        crate::files::write_private_file(&fresh, format!("{key}\n").as_bytes())?;
        std::fs::rename(&fresh, &path).map_err(|source| StoreError::Io { path, source })
    }

    /// The operators' organization, its `bootstrap-admin` service account (active) holding
    /// the platform-admin role, each made if missing, and a new key for it in the key file.
    async fn issue_bootstrap_key(&self, key_name: &str) -> Result<IssuedKey, StoreError> {
        let org = match self.org_by_name(OPERATORS_ORG).await? {
            Some(org) => org,
            None => self.create_org(OPERATORS_ORG).await?,
        };
        let existing = self
            .principals(Some(&org.id), PrincipalKind::ServiceAccount)
            .await?
            .into_iter()
            .find(|p| p.name == "bootstrap-admin");
        let admin = match existing {
            Some(admin) if admin.suspended => self.set_principal_suspended(&admin.id, false).await?,
            Some(admin) => admin,
            None => {
                self.create_principal(&org.id, PrincipalKind::ServiceAccount, "bootstrap-admin", None)
                    .await?
            }
        };
        let role = match self
            .roles(Some(&org.id))
            .await?
            .into_iter()
            .find(|r| r.name == PLATFORM_ADMIN_ROLE)
        {
            Some(role) => role,
            None => {
                self.create_role(&org.id, PLATFORM_ADMIN_ROLE, &[ALL_PERMISSIONS.to_owned()])
                    .await?
            }
        };
        if !self.roles_of(&admin.id).await?.iter().any(|r| r.id == role.id) {
            self.assign_role(&admin.id, &role.id).await?;
        }
        let issued = self
            .create_key(NewKey {
                name: key_name.into(),
                kind: KeyKind::Application,
                org_id: org.id,
                principal_id: Some(admin.id),
                scopes: None,
                expires_at_ms: None,
            })
            .await?;
        self.replace_bootstrap_key_file(&issued.key)?;
        Ok(issued)
    }

    /// The pepper keys are hashed with (for verification in the directory).
    pub fn pepper(&self) -> std::sync::Arc<[u8]> {
        self.pepper.clone()
    }
}

/// API keys: issued once, stored hashed; rotation, revocation, last use, the bootstrap key.
pub trait KeyStore {
    /// Issues a new key: 64-bit public id, 256-bit secret, stored as a keyed hash.
    fn create_key(&self, new: NewKey) -> impl std::future::Future<Output = Result<IssuedKey, StoreError>> + Send;

    /// Stores a key whose id and secret were derived by the caller (managed intake keys),
    /// unless a key with that id exists. Returns whether it was created now.
    fn insert_derived_key(
        &self,
        new: NewKey,
        id: &str,
        secret: &str,
    ) -> impl std::future::Future<Output = Result<bool, StoreError>> + Send;

    /// One key with its hash.
    fn stored_key(&self, id: &str) -> impl std::future::Future<Output = Result<Option<StoredKey>, StoreError>> + Send;

    /// The key `id` when it belongs to `org` (any organization's when `None`), for
    /// tenants' lookups: another organization's is not read at all, so it is answered in
    /// the time an absent one is.
    fn stored_key_in(
        &self,
        id: &str,
        org: Option<&str>,
    ) -> impl std::future::Future<Output = Result<Option<StoredKey>, StoreError>> + Send;

    /// Every key with its hash, for loading the directory.
    fn all_keys(&self) -> impl std::future::Future<Output = Result<Vec<StoredKey>, StoreError>> + Send;

    /// Keys of an organization (and optionally one principal), newest first.
    fn keys(
        &self,
        org_id: Option<&str>,
        principal_id: Option<&str>,
    ) -> impl std::future::Future<Output = Result<Vec<ApiKey>, StoreError>> + Send;

    fn revoke_key(&self, id: &str) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// Issues a successor with the same owner, kind and scopes; the old key keeps working
    /// for `overlap_ms` (or until its own expiry, if sooner).
    fn rotate_key(
        &self,
        id: &str,
        overlap_ms: i64,
    ) -> impl std::future::Future<Output = Result<IssuedKey, StoreError>> + Send;

    /// Records last-use times (written behind the hot path, in one transaction).
    fn touch_keys(&self, used: &[(String, i64)]) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// Number of stored keys (revoked ones included).
    fn key_count(&self) -> impl std::future::Future<Output = Result<i64, StoreError>> + Send;

    /// On a store with no keys at all: creates the operators' organization, a
    /// `bootstrap-admin` service account holding the `platform-admin` role (`*`), and an
    /// application key for it, written to `<data-dir>/bootstrap-admin.key` (mode 0600).
    /// Returns the key only when it was created now, so the caller can print it once.
    fn bootstrap_admin_key(&self) -> impl std::future::Future<Output = Result<Option<IssuedKey>, StoreError>> + Send;

    /// Issues a new key for the bootstrap admin (recreating it, and its platform-admin
    /// role, if they were deleted) and puts it in the key file: for an operator with access
    /// to the data directory who has lost every administrator key.
    fn recover_bootstrap_key(&self) -> impl std::future::Future<Output = Result<IssuedKey, StoreError>> + Send;
}

impl KeyStore for Store {
    async fn create_key(&self, new: NewKey) -> Result<IssuedKey, StoreError> {
        let mut id_bytes = [0u8; keys::ID_LEN / 2];
        let mut secret_bytes = [0u8; 32];
        {
            // The thread-local generator is not `Send`: keep it out of the awaits below.
            let mut rng = rand::rng();
            rng.fill_bytes(&mut id_bytes);
            rng.fill_bytes(&mut secret_bytes);
        }
        let id: String = pinpoint_core::hex::lower(&id_bytes);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes);
        let hash = keys::hash_secret(&self.pepper, &secret);
        let info = ApiKey {
            id: id.clone(),
            name: new.name,
            kind: new.kind,
            org_id: new.org_id,
            principal_id: new.principal_id,
            scopes: new.scopes,
            expires_at_ms: new.expires_at_ms,
            revoked: false,
            created_at_ms: now_ms(),
            last_used_at_ms: None,
            replaced_by: None,
        };
        sqlx::query(
            "INSERT INTO api_keys (id, name, role, kind, org_id, principal_id, scopes, expires_at_ms, secret_hash, created_at_ms)
             VALUES ($1, $2, '', $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&info.id)
        .bind(&info.name)
        .bind(info.kind.as_str())
        .bind(&info.org_id)
        .bind(&info.principal_id)
        .bind(info.scopes.as_ref().map(serde_json::to_string).transpose()?)
        .bind(info.expires_at_ms)
        .bind(&hash[..])
        .bind(info.created_at_ms)
        .execute(self.pool())
        .await?;
        let key = keys::format(&id, &secret);
        Ok(IssuedKey { info, key })
    }

    async fn insert_derived_key(&self, new: NewKey, id: &str, secret: &str) -> Result<bool, StoreError> {
        let hash = keys::hash_secret(&self.pepper, secret);
        let done = sqlx::query(
            "INSERT INTO api_keys (id, name, role, kind, org_id, principal_id, scopes, expires_at_ms, secret_hash, created_at_ms)
             VALUES ($1, $2, '', $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(&new.name)
        .bind(new.kind.as_str())
        .bind(&new.org_id)
        .bind(&new.principal_id)
        .bind(new.scopes.as_ref().map(serde_json::to_string).transpose()?)
        .bind(new.expires_at_ms)
        .bind(&hash[..])
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn stored_key(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        self.stored_key_in(id, None).await
    }

    async fn stored_key_in(&self, id: &str, org: Option<&str>) -> Result<Option<StoredKey>, StoreError> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE id = $1 AND ($2 IS NULL OR org_id = $3)")
            .bind(id)
            .bind(org)
            .bind(org)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(key_from).transpose()
    }

    async fn all_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query("SELECT * FROM api_keys").fetch_all(self.pool()).await?;
        rows.iter().map(key_from).collect()
    }

    async fn keys(&self, org_id: Option<&str>, principal_id: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM api_keys WHERE ($1 IS NULL OR org_id = $2) AND ($3 IS NULL OR principal_id = $4)
             ORDER BY created_at_ms DESC, id",
        )
        .bind(org_id)
        .bind(org_id)
        .bind(principal_id)
        .bind(principal_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| key_from(r).map(|k| k.info)).collect()
    }

    async fn revoke_key(&self, id: &str) -> Result<(), StoreError> {
        // With the keys it replaced that are still in their rotation overlap: revoking a
        // successor ends the credential, not only its newest form.
        let done = sqlx::query(
            "WITH RECURSIVE rotated(id) AS (SELECT CAST($1 AS TEXT) UNION SELECT k.id FROM api_keys k JOIN rotated r ON k.replaced_by = r.id) \
             UPDATE api_keys SET revoked = 1 WHERE id IN (SELECT id FROM rotated)",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("key"));
        }
        Ok(())
    }

    async fn rotate_key(&self, id: &str, overlap_ms: i64) -> Result<IssuedKey, StoreError> {
        let old = self.stored_key(id).await?.ok_or(StoreError::NotFound("key"))?.info;
        if old.revoked {
            return Err(StoreError::Conflict("a revoked key cannot be rotated".into()));
        }
        let issued = self
            .create_key(NewKey {
                name: old.name.clone(),
                kind: old.kind,
                org_id: old.org_id.clone(),
                principal_id: old.principal_id.clone(),
                scopes: old.scopes.clone(),
                expires_at_ms: old.expires_at_ms,
            })
            .await?;
        let overlap_end = now_ms().saturating_add(overlap_ms);
        let old_expiry = old.expires_at_ms.map_or(overlap_end, |e| e.min(overlap_end));
        sqlx::query("UPDATE api_keys SET expires_at_ms = $1, replaced_by = $2 WHERE id = $3")
            .bind(old_expiry)
            .bind(&issued.info.id)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(issued)
    }

    async fn touch_keys(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        // In key order, the latest time per key: replicas writing their batches at once
        // lock the same rows in the same order (in arrival order two of them deadlock).
        let mut used = used.to_vec();
        used.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        used.dedup_by(|later, first| later.0 == first.0);
        let mut tx = self.write_tx().await?;
        for (id, at) in &used {
            sqlx::query("UPDATE api_keys SET last_used_at_ms = $1 WHERE id = $2 AND COALESCE(last_used_at_ms, 0) < $1")
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn key_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(self.pool())
            .await?)
    }

    async fn bootstrap_admin_key(&self) -> Result<Option<IssuedKey>, StoreError> {
        if self.backend() == crate::Backend::Postgres {
            // Replicas starting together on a new store: one at a time decides.
            let lock = crate::postgres::SessionLock::take(self, crate::postgres::BOOTSTRAP_LOCK).await?;
            let issued = self.bootstrap_if_keyless().await;
            lock.release().await;
            return issued;
        }
        self.bootstrap_if_keyless().await
    }

    async fn recover_bootstrap_key(&self) -> Result<IssuedKey, StoreError> {
        self.issue_bootstrap_key("bootstrap-admin (recovered)").await
    }
}

impl Store {
    async fn bootstrap_if_keyless(&self) -> Result<Option<IssuedKey>, StoreError> {
        if self.key_count().await? > 0 {
            return Ok(None);
        }
        match self.issue_bootstrap_key("bootstrap-admin").await {
            Ok(issued) => Ok(Some(issued)),
            // Another process on the same store is bootstrapping it at this moment (replicas
            // started together on a new PostgreSQL store): its key appears within moments,
            // and this process has no key of its own to show.
            Err(StoreError::Conflict(why)) => {
                for _ in 0..100 {
                    if self.key_count().await? > 0 {
                        return Ok(None);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(StoreError::Conflict(why))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bootstrap_creates_one_private_admin_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let issued = store.bootstrap_admin_key().await.unwrap().unwrap();
        assert!(store.bootstrap_admin_key().await.unwrap().is_none());
        let path = dir.path().join(BOOTSTRAP_KEY_FILE);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), issued.key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(
                std::fs::metadata(dir.path().join("pepper"))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777,
                0o600
            );
        }
        let owner = store
            .principal(issued.info.principal_id.as_deref().unwrap())
            .await
            .unwrap()
            .unwrap();
        let roles = store.roles_of(&owner.id).await.unwrap();
        assert_eq!(roles[0].permissions, vec!["*".to_owned()]);
        assert!(!format!("{issued:?}").contains(&issued.key));

        // The secret is not stored anywhere in the database file; its keyed hash is.
        let stored = store.stored_key(&issued.info.id).await.unwrap().unwrap();
        let secret = keys::parse(&issued.key).unwrap().secret.to_owned();
        assert!(keys::verify_secret(&store.pepper(), &secret, &stored.secret_hash));
        store.close().await;
        let db = std::fs::read(dir.path().join("pinpoint.db")).unwrap();
        let wal = std::fs::read(dir.path().join("pinpoint.db-wal")).unwrap_or_default();
        for bytes in [db, wal] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
    }

    #[tokio::test]
    async fn rotation_keeps_the_old_key_for_the_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let issued = store.bootstrap_admin_key().await.unwrap().unwrap();
        let next = store.rotate_key(&issued.info.id, 60_000).await.unwrap();
        assert_ne!(next.info.id, issued.info.id);
        assert_eq!(next.info.principal_id, issued.info.principal_id);
        let old = store.stored_key(&issued.info.id).await.unwrap().unwrap().info;
        let expiry = old.expires_at_ms.unwrap();
        assert!(expiry > now_ms() && expiry <= now_ms() + 60_000);
        store.revoke_key(&issued.info.id).await.unwrap();
        assert!(matches!(
            store.rotate_key(&issued.info.id, 1).await,
            Err(StoreError::Conflict(_))
        ));
    }
}
