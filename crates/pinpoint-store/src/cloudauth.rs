//! Cloud-authentication state: the AWS accounts registered per organization, persona
//! mappings (ARN pattern -> user or service account) and intake mappings (ARN pattern ->
//! managed intake keys), with the role unique id each mapping is bound to on first use.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::identities::{conflict, new_id};
use crate::{now_ms, Store, StoreError};

/// A persona or intake mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub id: String,
    pub org_id: String,
    /// `persona` or `intake`.
    pub kind: String,
    pub arn_pattern: String,
    /// The principal a persona mapping logs in as.
    pub principal_id: Option<String>,
    /// The role's or user's unique id (`AROA...`/`AIDA...`), bound on first use.
    pub bound_unique_id: Option<String>,
    pub created_at_ms: i64,
}

fn mapping_from(row: &AnyRow) -> Result<Mapping, sqlx::Error> {
    Ok(Mapping {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        kind: row.try_get("kind")?,
        arn_pattern: row.try_get("arn_pattern")?,
        principal_id: row.try_get("principal_id")?,
        bound_unique_id: row.try_get("bound_unique_id")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

pub(crate) const SCHEMA_V4: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS aws_accounts (
        org_id TEXT NOT NULL REFERENCES organizations(id),
        account_id TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (org_id, account_id)
    )",
    "CREATE TABLE IF NOT EXISTS cloud_auth_mappings (
        id TEXT PRIMARY KEY,
        org_id TEXT NOT NULL REFERENCES organizations(id),
        kind TEXT NOT NULL,
        arn_pattern TEXT NOT NULL,
        principal_id TEXT,
        bound_unique_id TEXT,
        created_at_ms INTEGER NOT NULL,
        UNIQUE (org_id, kind, arn_pattern)
    )",
    "CREATE TABLE IF NOT EXISTS intake_keys (
        mapping_id TEXT NOT NULL,
        identity TEXT NOT NULL,
        key_id TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (mapping_id, identity, key_id)
    )",
];

/// Version 7: the signatures of used identity proofs, so a proof works once across
/// restarts too (kept until no proof signed with them could be fresh any more).
pub(crate) const SCHEMA_V7: &[&str] = &["CREATE TABLE IF NOT EXISTS proof_replay (
        signature TEXT PRIMARY KEY,
        until_s INTEGER NOT NULL
    )"];

/// Cloud-identity exchange state: registered AWS accounts, persona and intake mappings, managed intake keys and used proofs.
pub trait CloudAuthStore {
    /// Records a used proof's signature until `until_s`. False when it was recorded
    /// before and is still remembered: the proof is a replay.
    fn burn_proof(
        &self,
        signature: &str,
        until_s: i64,
        now_s: i64,
    ) -> impl std::future::Future<Output = Result<bool, StoreError>> + Send;

    /// Forgets the signatures no proof could be fresh with any more.
    fn prune_proofs(&self, now_s: i64) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    fn register_aws_account(
        &self,
        org_id: &str,
        account: &str,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    fn aws_accounts(&self, org_id: &str) -> impl std::future::Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Removes a registered account together with the organization's mappings for it
    /// (a mapping for an unregistered account cannot be created, so none may outlive it),
    /// revoking every intake key issued through them. Returns the revoked key ids.
    fn remove_aws_account(
        &self,
        org_id: &str,
        account: &str,
    ) -> impl std::future::Future<Output = Result<Vec<String>, StoreError>> + Send;

    fn create_mapping(
        &self,
        org_id: &str,
        kind: &str,
        arn_pattern: &str,
        principal_id: Option<&str>,
    ) -> impl std::future::Future<Output = Result<Mapping, StoreError>> + Send;

    /// Mappings of one kind in an organization, oldest first.
    fn mappings(
        &self,
        org_id: &str,
        kind: &str,
    ) -> impl std::future::Future<Output = Result<Vec<Mapping>, StoreError>> + Send;

    fn mapping(&self, id: &str) -> impl std::future::Future<Output = Result<Option<Mapping>, StoreError>> + Send;

    /// The mapping `id` when it belongs to `org` (any organization's when `None`), for
    /// tenants' lookups: another organization's is not read at all, so it is answered in
    /// the time an absent one is.
    fn mapping_in(
        &self,
        id: &str,
        org: Option<&str>,
    ) -> impl std::future::Future<Output = Result<Option<Mapping>, StoreError>> + Send;

    /// Deletes a mapping and revokes every intake key issued through it; returns their ids.
    fn delete_mapping(&self, id: &str) -> impl std::future::Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Binds a mapping to a unique id if it has none yet; returns the id it is bound to.
    fn bind_mapping(
        &self,
        id: &str,
        unique_id: &str,
    ) -> impl std::future::Future<Output = Result<String, StoreError>> + Send;

    /// Intake keys issued for one identity under a mapping, newest first.
    fn intake_keys(
        &self,
        mapping_id: &str,
        identity: &str,
    ) -> impl std::future::Future<Output = Result<Vec<(String, i64)>, StoreError>> + Send;

    fn record_intake_key(
        &self,
        mapping_id: &str,
        identity: &str,
        key_id: &str,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

impl CloudAuthStore for Store {
    async fn burn_proof(&self, signature: &str, until_s: i64, now_s: i64) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM proof_replay WHERE signature = $1 AND until_s < $2")
            .bind(signature)
            .bind(now_s)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(
            "INSERT INTO proof_replay (signature, until_s) VALUES ($1, $2) ON CONFLICT(signature) DO NOTHING",
        )
        .bind(signature)
        .bind(until_s)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn prune_proofs(&self, now_s: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM proof_replay WHERE until_s < $1")
            .bind(now_s)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn register_aws_account(&self, org_id: &str, account: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO aws_accounts (org_id, account_id, created_at_ms) VALUES ($1, $2, $3)")
            .bind(org_id)
            .bind(account)
            .bind(now_ms())
            .execute(self.pool())
            .await
            .map_err(conflict(format!("account {account} is already registered")))?;
        Ok(())
    }

    async fn aws_accounts(&self, org_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT account_id FROM aws_accounts WHERE org_id = $1 ORDER BY account_id")
                .bind(org_id)
                .fetch_all(self.pool())
                .await?,
        )
    }

    async fn remove_aws_account(&self, org_id: &str, account: &str) -> Result<Vec<String>, StoreError> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM aws_accounts WHERE org_id = $1 AND account_id = $2")
            .bind(org_id)
            .bind(account)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("AWS account"));
        }
        let mappings: Vec<(String, String)> =
            sqlx::query_as("SELECT id, arn_pattern FROM cloud_auth_mappings WHERE org_id = $1")
                .bind(org_id)
                .fetch_all(&mut *tx)
                .await?;
        let mut revoked = Vec::new();
        // `arn:<partition>:<service>::<account>:<resource>`
        for (id, _) in mappings.iter().filter(|(_, p)| p.split(':').nth(4) == Some(account)) {
            revoked.extend(delete_mapping_in(&mut tx, id).await?);
        }
        tx.commit().await?;
        Ok(revoked)
    }

    async fn create_mapping(
        &self,
        org_id: &str,
        kind: &str,
        arn_pattern: &str,
        principal_id: Option<&str>,
    ) -> Result<Mapping, StoreError> {
        let m = Mapping {
            id: new_id(),
            org_id: org_id.to_owned(),
            kind: kind.to_owned(),
            arn_pattern: arn_pattern.to_owned(),
            principal_id: principal_id.map(str::to_owned),
            bound_unique_id: None,
            created_at_ms: now_ms(),
        };
        sqlx::query(
            "INSERT INTO cloud_auth_mappings (id, org_id, kind, arn_pattern, principal_id, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&m.id)
        .bind(&m.org_id)
        .bind(&m.kind)
        .bind(&m.arn_pattern)
        .bind(&m.principal_id)
        .bind(m.created_at_ms)
        .execute(self.pool())
        .await
        .map_err(conflict(format!("a {kind} mapping for `{arn_pattern}` already exists")))?;
        Ok(m)
    }

    async fn mappings(&self, org_id: &str, kind: &str) -> Result<Vec<Mapping>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM cloud_auth_mappings WHERE org_id = $1 AND kind = $2 ORDER BY created_at_ms, id")
                .bind(org_id)
                .bind(kind)
                .fetch_all(self.pool())
                .await?;
        Ok(rows.iter().map(mapping_from).collect::<Result<_, _>>()?)
    }

    async fn mapping(&self, id: &str) -> Result<Option<Mapping>, StoreError> {
        self.mapping_in(id, None).await
    }

    async fn mapping_in(&self, id: &str, org: Option<&str>) -> Result<Option<Mapping>, StoreError> {
        let row = sqlx::query("SELECT * FROM cloud_auth_mappings WHERE id = $1 AND ($2 IS NULL OR org_id = $3)")
            .bind(id)
            .bind(org)
            .bind(org)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(mapping_from).transpose()?)
    }

    async fn delete_mapping(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let mut tx = self.write_tx().await?;
        let keys = delete_mapping_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(keys)
    }

    async fn bind_mapping(&self, id: &str, unique_id: &str) -> Result<String, StoreError> {
        sqlx::query("UPDATE cloud_auth_mappings SET bound_unique_id = $1 WHERE id = $2 AND bound_unique_id IS NULL")
            .bind(unique_id)
            .bind(id)
            .execute(self.pool())
            .await?;
        let bound: Option<String> = sqlx::query_scalar("SELECT bound_unique_id FROM cloud_auth_mappings WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .flatten();
        bound.ok_or(StoreError::NotFound("mapping"))
    }

    async fn intake_keys(&self, mapping_id: &str, identity: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT key_id, created_at_ms FROM intake_keys WHERE mapping_id = $1 AND identity = $2 ORDER BY created_at_ms DESC",
        )
        .bind(mapping_id)
        .bind(identity)
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    async fn record_intake_key(&self, mapping_id: &str, identity: &str, key_id: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO intake_keys (mapping_id, identity, key_id, created_at_ms) VALUES ($1, $2, $3, $4)")
            .bind(mapping_id)
            .bind(identity)
            .bind(key_id)
            .bind(now_ms())
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

/// Deletes one mapping inside `tx` and revokes the intake keys issued through it.
async fn delete_mapping_in(tx: &mut sqlx::AnyConnection, id: &str) -> Result<Vec<String>, StoreError> {
    let keys: Vec<String> = sqlx::query_scalar("SELECT key_id FROM intake_keys WHERE mapping_id = $1")
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
    sqlx::query("UPDATE api_keys SET revoked = 1 WHERE id IN (SELECT key_id FROM intake_keys WHERE mapping_id = $1)")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM intake_keys WHERE mapping_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let done = sqlx::query("DELETE FROM cloud_auth_mappings WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound("mapping"));
    }
    Ok(keys)
}
