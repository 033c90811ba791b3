//! JWT signing keys in the store. A key signs until `retire_at_ms`, then stays published
//! (in the JWKS, for verification) until `expires_at_ms`, when every token it signed has
//! expired. The private half never leaves the data directory (mode 0700).

use sqlx::Row;

use crate::{now_ms, Store, StoreError};

/// A stored signing key. `Debug` redacts the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// The one algorithm this key is used with (pinned at verification).
    pub alg: String,
    pub private_pkcs8: Vec<u8>,
    pub public_raw: Vec<u8>,
    pub created_at_ms: i64,
    pub retire_at_ms: i64,
    pub expires_at_ms: i64,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SigningKeyRecord {{ kid: {}, alg: {}, private: <redacted> }}",
            self.kid, self.alg
        )
    }
}

/// The keys that sign Pinpoint's tokens, with their retire and expiry times.
pub trait SigningKeyStore {
    /// Keys not yet expired, newest first.
    fn signing_keys(&self) -> impl std::future::Future<Output = Result<Vec<SigningKeyRecord>, StoreError>> + Send;

    fn insert_signing_key(
        &self,
        key: &SigningKeyRecord,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// Ends signing with a key now (it stays published until it expires).
    fn retire_signing_key(
        &self,
        kid: &str,
        at_ms: i64,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// Removes keys whose tokens have all expired.
    fn delete_expired_signing_keys(&self) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send;
}

impl SigningKeyStore for Store {
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM signing_keys WHERE expires_at_ms > $1 ORDER BY created_at_ms DESC")
            .bind(now_ms())
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SigningKeyRecord {
                    kid: r.try_get("kid")?,
                    alg: r.try_get("alg")?,
                    private_pkcs8: r.try_get("private_pkcs8")?,
                    public_raw: r.try_get("public_raw")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                    retire_at_ms: r.try_get("retire_at_ms")?,
                    expires_at_ms: r.try_get("expires_at_ms")?,
                })
            })
            .collect()
    }

    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, private_pkcs8, public_raw, created_at_ms, retire_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.private_pkcs8)
        .bind(&key.public_raw)
        .bind(key.created_at_ms)
        .bind(key.retire_at_ms)
        .bind(key.expires_at_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn retire_signing_key(&self, kid: &str, at_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE signing_keys SET retire_at_ms = $1 WHERE kid = $2 AND retire_at_ms > $1")
            .bind(at_ms)
            .bind(kid)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn delete_expired_signing_keys(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM signing_keys WHERE expires_at_ms <= $1")
            .bind(now_ms())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}
