//! API keys in the store: issued with 256 random bits, shown once, stored only as
//! `HMAC-SHA256(pepper, secret)`, looked up by their public id and verified in constant
//! time. Also the bootstrap admin key a fresh store creates on first start.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use pinpoint_core::keys;
use rand::RngCore;
use sqlx::Row;

use crate::{now_ms, Store, StoreError};

/// Name of the file (in the data dir) holding the bootstrap admin key.
pub const BOOTSTRAP_KEY_FILE: &str = "bootstrap-admin.key";

/// A key as just issued: the only time its secret exists outside the caller.
/// `Debug` redacts the secret.
pub struct IssuedKey {
    pub id: String,
    /// The whole key (`pp_<id>_<secret>`).
    pub key: String,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuedKey {{ id: {}, key: <redacted> }}", self.id)
    }
}

/// A stored key's public facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at_ms: i64,
}

/// Why a presented key was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the credential is not shaped like a Pinpoint key")]
    Malformed,
    #[error("no key with this id and secret")]
    Unknown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for KeyError {
    fn from(e: sqlx::Error) -> Self {
        KeyError::Store(StoreError::Db(e))
    }
}

impl Store {
    /// Issues a new key.
    pub async fn create_key(&self, name: &str, role: &str) -> Result<IssuedKey, StoreError> {
        let mut rng = rand::rng();
        let mut id_bytes = [0u8; keys::ID_LEN / 2];
        rng.fill_bytes(&mut id_bytes);
        let mut secret_bytes = [0u8; 32];
        rng.fill_bytes(&mut secret_bytes);
        let id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes);
        let hash = keys::hash_secret(&self.pepper, &secret);
        sqlx::query("INSERT INTO api_keys (id, name, role, secret_hash, created_at_ms) VALUES (?, ?, ?, ?, ?)")
            .bind(&id)
            .bind(name)
            .bind(role)
            .bind(&hash[..])
            .bind(now_ms())
            .execute(self.pool())
            .await?;
        let key = keys::format(&id, &secret);
        Ok(IssuedKey { id, key })
    }

    /// Checks a presented key and records its use.
    pub async fn verify_key(&self, presented: &str) -> Result<KeyRecord, KeyError> {
        let parts = keys::parse(presented).ok_or(KeyError::Malformed)?;
        let row =
            sqlx::query("SELECT id, name, role, secret_hash, created_at_ms FROM api_keys WHERE id = ? AND revoked = 0")
                .bind(parts.id)
                .fetch_optional(self.pool())
                .await?;
        let Some(row) = row else {
            // Spend the same time as a real comparison so ids cannot be probed by timing.
            let _ = keys::verify_secret(&self.pepper, parts.secret, &[0u8; 32]);
            return Err(KeyError::Unknown);
        };
        let hash: Vec<u8> = row.try_get("secret_hash")?;
        if !keys::verify_secret(&self.pepper, parts.secret, &hash) {
            return Err(KeyError::Unknown);
        }
        sqlx::query("UPDATE api_keys SET last_used_at_ms = ? WHERE id = ?")
            .bind(now_ms())
            .bind(parts.id)
            .execute(self.pool())
            .await?;
        Ok(KeyRecord {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            role: row.try_get("role")?,
            created_at_ms: row.try_get("created_at_ms")?,
        })
    }

    /// Number of stored keys (revoked ones included).
    pub async fn key_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
            .fetch_one(self.pool())
            .await?)
    }

    /// On a store with no keys at all, creates an admin key and writes it to
    /// `<data-dir>/bootstrap-admin.key` (mode 0600). Returns the key only when it was
    /// created now, so the caller can print it once.
    pub async fn bootstrap_admin_key(&self) -> Result<Option<IssuedKey>, StoreError> {
        if self.key_count().await? > 0 {
            return Ok(None);
        }
        let issued = self.create_key("bootstrap-admin", "admin").await?;
        write_private_file(
            &self.data_dir.join(BOOTSTRAP_KEY_FILE),
            format!("{}\n", issued.key).as_bytes(),
        )?;
        Ok(Some(issued))
    }
}

/// Reads the pepper file, creating it with 32 random bytes (mode 0600) if absent.
pub(crate) fn load_or_create_pepper(path: &Path) -> Result<Vec<u8>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() >= 32 => Ok(bytes),
        Ok(_) => Err(StoreError::Invalid {
            path: path.to_owned(),
            message: "pepper file is shorter than 32 bytes; restore it from backup (keys hashed with it cannot be verified otherwise)".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut pepper = vec![0u8; 32];
            rand::rng().fill_bytes(&mut pepper);
            write_private_file(path, &pepper)?;
            Ok(pepper)
        }
        Err(source) => Err(StoreError::Io { path: path.to_owned(), source }),
    }
}

fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
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
        let record = store.verify_key(&issued.key).await.unwrap();
        assert_eq!(record.role, "admin");
        assert!(!format!("{issued:?}").contains(&issued.key));

        // The secret is not stored anywhere in the database file.
        let secret = issued.key.rsplit('_').next().unwrap().to_owned();
        store.close().await;
        let db = std::fs::read(dir.path().join("pinpoint.db")).unwrap();
        let wal = std::fs::read(dir.path().join("pinpoint.db-wal")).unwrap_or_default();
        for bytes in [db, wal] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
    }

    #[tokio::test]
    async fn wrong_secrets_and_shapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let issued = store.create_key("k", "admin").await.unwrap();
        let mut wrong = issued.key.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'A' { 'B' } else { 'A' });
        assert!(matches!(store.verify_key(&wrong).await, Err(KeyError::Unknown)));
        assert!(matches!(store.verify_key("pp_nope").await, Err(KeyError::Malformed)));
        let other_id = keys::format("0000000000000000", &issued.key[20..]);
        assert!(matches!(store.verify_key(&other_id).await, Err(KeyError::Unknown)));
    }
}
