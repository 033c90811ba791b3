//! Organizations, principals, roles and role assignments in the store. Every write is a
//! single statement or transaction; uniqueness violations come back as
//! [`StoreError::Conflict`], missing rows as [`StoreError::NotFound`].

use pinpoint_core::identity::{Organization, Principal, PrincipalKind, Role};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{now_ms, Store, StoreError};

/// A fresh random UUID (v4), hyphenated.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Maps a constraint violation to [`StoreError::Conflict`] with `what` as the message.
pub(crate) fn conflict(what: String) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() || db.is_foreign_key_violation() => {
            StoreError::Conflict(what)
        }
        _ => StoreError::Db(e),
    }
}

fn org_from(row: &AnyRow) -> Result<Organization, sqlx::Error> {
    Ok(Organization {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        suspended: row.try_get::<i64, _>("suspended")? != 0,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

fn principal_from(row: &AnyRow) -> Result<Principal, StoreError> {
    let kind: String = row.try_get("kind")?;
    Ok(Principal {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        kind: PrincipalKind::parse(&kind)
            .ok_or_else(|| StoreError::Conflict(format!("unknown principal kind {kind}")))?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        suspended: row.try_get::<i64, _>("suspended")? != 0,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

fn role_from(row: &AnyRow) -> Result<Role, StoreError> {
    let permissions: String = row.try_get("permissions")?;
    Ok(Role {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        name: row.try_get("name")?,
        permissions: serde_json::from_str(&permissions)?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

/// Organizations, principals (users and service accounts), roles and role assignments.
pub trait IdentityStore {
    // ---- organizations ----------------------------------------------------------------
    fn create_org(&self, name: &str) -> impl std::future::Future<Output = Result<Organization, StoreError>> + Send;

    fn org(&self, id: &str) -> impl std::future::Future<Output = Result<Option<Organization>, StoreError>> + Send;

    fn org_by_name(
        &self,
        name: &str,
    ) -> impl std::future::Future<Output = Result<Option<Organization>, StoreError>> + Send;

    fn orgs(&self) -> impl std::future::Future<Output = Result<Vec<Organization>, StoreError>> + Send;

    fn set_org_suspended(
        &self,
        id: &str,
        suspended: bool,
    ) -> impl std::future::Future<Output = Result<Organization, StoreError>> + Send;

    /// Deletes an organization with no principals and no keys left (and its roles).
    fn delete_org(&self, id: &str) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    // ---- principals -------------------------------------------------------------------
    fn create_principal(
        &self,
        org_id: &str,
        kind: PrincipalKind,
        name: &str,
        email: Option<&str>,
    ) -> impl std::future::Future<Output = Result<Principal, StoreError>> + Send;

    fn principal(&self, id: &str) -> impl std::future::Future<Output = Result<Option<Principal>, StoreError>> + Send;

    /// The principal `id` when it belongs to `org` (any organization's when `None`), for
    /// tenants' lookups: another organization's is not read at all, so it is answered in
    /// the time an absent one is.
    fn principal_in(
        &self,
        id: &str,
        org: Option<&str>,
    ) -> impl std::future::Future<Output = Result<Option<Principal>, StoreError>> + Send;

    /// Principals of one kind, in one organization or all.
    fn principals(
        &self,
        org_id: Option<&str>,
        kind: PrincipalKind,
    ) -> impl std::future::Future<Output = Result<Vec<Principal>, StoreError>> + Send;

    fn all_principals(&self) -> impl std::future::Future<Output = Result<Vec<Principal>, StoreError>> + Send;

    fn set_principal_suspended(
        &self,
        id: &str,
        suspended: bool,
    ) -> impl std::future::Future<Output = Result<Principal, StoreError>> + Send;

    /// Deletes a principal, its role assignments, and revokes its keys.
    fn delete_principal(&self, id: &str) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    // ---- roles ------------------------------------------------------------------------
    fn create_role(
        &self,
        org_id: &str,
        name: &str,
        permissions: &[String],
    ) -> impl std::future::Future<Output = Result<Role, StoreError>> + Send;

    fn role(&self, id: &str) -> impl std::future::Future<Output = Result<Option<Role>, StoreError>> + Send;

    /// The role `id` when it belongs to `org` (any organization's when `None`), for
    /// tenants' lookups: another organization's is not read at all, so it is answered in
    /// the time an absent one is.
    fn role_in(
        &self,
        id: &str,
        org: Option<&str>,
    ) -> impl std::future::Future<Output = Result<Option<Role>, StoreError>> + Send;

    fn roles(&self, org_id: Option<&str>) -> impl std::future::Future<Output = Result<Vec<Role>, StoreError>> + Send;

    fn set_role_permissions(
        &self,
        id: &str,
        permissions: &[String],
    ) -> impl std::future::Future<Output = Result<Role, StoreError>> + Send;

    /// Deletes a role and its assignments; returns the principals that held it.
    fn delete_role(&self, id: &str) -> impl std::future::Future<Output = Result<Vec<String>, StoreError>> + Send;

    fn assign_role(
        &self,
        principal_id: &str,
        role_id: &str,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    fn unassign_role(
        &self,
        principal_id: &str,
        role_id: &str,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// The roles a principal holds.
    fn roles_of(&self, principal_id: &str) -> impl std::future::Future<Output = Result<Vec<Role>, StoreError>> + Send;

    /// Every (principal id, role) pair, for loading the directory.
    fn all_assignments(&self) -> impl std::future::Future<Output = Result<Vec<(String, Role)>, StoreError>> + Send;

    /// Ids of the principals holding a role.
    fn role_holders(&self, role_id: &str) -> impl std::future::Future<Output = Result<Vec<String>, StoreError>> + Send;
}

impl IdentityStore for Store {
    async fn create_org(&self, name: &str) -> Result<Organization, StoreError> {
        let org = Organization {
            id: new_id(),
            name: name.to_owned(),
            suspended: false,
            created_at_ms: now_ms(),
        };
        sqlx::query("INSERT INTO organizations (id, name, created_at_ms) VALUES ($1, $2, $3)")
            .bind(&org.id)
            .bind(&org.name)
            .bind(org.created_at_ms)
            .execute(self.pool())
            .await
            .map_err(conflict(format!("an organization named `{name}` already exists")))?;
        Ok(org)
    }

    async fn org(&self, id: &str) -> Result<Option<Organization>, StoreError> {
        let row = sqlx::query("SELECT * FROM organizations WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(org_from).transpose()?)
    }

    async fn org_by_name(&self, name: &str) -> Result<Option<Organization>, StoreError> {
        let row = sqlx::query("SELECT * FROM organizations WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(org_from).transpose()?)
    }

    async fn orgs(&self) -> Result<Vec<Organization>, StoreError> {
        let rows = sqlx::query("SELECT * FROM organizations ORDER BY created_at_ms, id")
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(org_from).collect::<Result<_, _>>()?)
    }

    async fn set_org_suspended(&self, id: &str, suspended: bool) -> Result<Organization, StoreError> {
        sqlx::query("UPDATE organizations SET suspended = $1 WHERE id = $2")
            .bind(i64::from(suspended))
            .bind(id)
            .execute(self.pool())
            .await?;
        self.org(id).await?.ok_or(StoreError::NotFound("organization"))
    }

    async fn delete_org(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let members: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM principals WHERE org_id = $1) + (SELECT COUNT(*) FROM api_keys WHERE org_id = $2 AND revoked = 0)",
        )
        .bind(id)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if members > 0 {
            return Err(StoreError::Conflict(
                "the organization still has users, service accounts or active keys; delete or revoke them first".into(),
            ));
        }
        sqlx::query("DELETE FROM roles WHERE org_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM organizations WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("organization"));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn create_principal(
        &self,
        org_id: &str,
        kind: PrincipalKind,
        name: &str,
        email: Option<&str>,
    ) -> Result<Principal, StoreError> {
        let p = Principal {
            id: new_id(),
            org_id: org_id.to_owned(),
            kind,
            name: name.to_owned(),
            email: email.map(str::to_owned),
            suspended: false,
            created_at_ms: now_ms(),
        };
        sqlx::query(
            "INSERT INTO principals (id, org_id, kind, name, email, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&p.id)
        .bind(&p.org_id)
        .bind(kind.as_str())
        .bind(&p.name)
        .bind(&p.email)
        .bind(p.created_at_ms)
        .execute(self.pool())
        .await
        .map_err(conflict(format!(
            "a {} named `{name}` already exists in this organization",
            kind.as_str()
        )))?;
        Ok(p)
    }

    async fn principal(&self, id: &str) -> Result<Option<Principal>, StoreError> {
        self.principal_in(id, None).await
    }

    async fn principal_in(&self, id: &str, org: Option<&str>) -> Result<Option<Principal>, StoreError> {
        let row = sqlx::query("SELECT * FROM principals WHERE id = $1 AND ($2 IS NULL OR org_id = $3)")
            .bind(id)
            .bind(org)
            .bind(org)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(principal_from).transpose()
    }

    async fn principals(&self, org_id: Option<&str>, kind: PrincipalKind) -> Result<Vec<Principal>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM principals WHERE kind = $1 AND ($2 IS NULL OR org_id = $3) ORDER BY created_at_ms, id",
        )
        .bind(kind.as_str())
        .bind(org_id)
        .bind(org_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(principal_from).collect()
    }

    async fn all_principals(&self) -> Result<Vec<Principal>, StoreError> {
        let rows = sqlx::query("SELECT * FROM principals").fetch_all(self.pool()).await?;
        rows.iter().map(principal_from).collect()
    }

    async fn set_principal_suspended(&self, id: &str, suspended: bool) -> Result<Principal, StoreError> {
        sqlx::query("UPDATE principals SET suspended = $1 WHERE id = $2")
            .bind(i64::from(suspended))
            .bind(id)
            .execute(self.pool())
            .await?;
        self.principal(id).await?.ok_or(StoreError::NotFound("principal"))
    }

    async fn delete_principal(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM role_assignments WHERE principal_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE api_keys SET revoked = 1 WHERE principal_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM principals WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("principal"));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn create_role(&self, org_id: &str, name: &str, permissions: &[String]) -> Result<Role, StoreError> {
        let role = Role {
            id: new_id(),
            org_id: org_id.to_owned(),
            name: name.to_owned(),
            permissions: permissions.to_vec(),
            created_at_ms: now_ms(),
        };
        sqlx::query("INSERT INTO roles (id, org_id, name, permissions, created_at_ms) VALUES ($1, $2, $3, $4, $5)")
            .bind(&role.id)
            .bind(&role.org_id)
            .bind(&role.name)
            .bind(serde_json::to_string(&role.permissions)?)
            .bind(role.created_at_ms)
            .execute(self.pool())
            .await
            .map_err(conflict(format!(
                "a role named `{name}` already exists in this organization"
            )))?;
        Ok(role)
    }

    async fn role(&self, id: &str) -> Result<Option<Role>, StoreError> {
        self.role_in(id, None).await
    }

    async fn role_in(&self, id: &str, org: Option<&str>) -> Result<Option<Role>, StoreError> {
        let row = sqlx::query("SELECT * FROM roles WHERE id = $1 AND ($2 IS NULL OR org_id = $3)")
            .bind(id)
            .bind(org)
            .bind(org)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(role_from).transpose()
    }

    async fn roles(&self, org_id: Option<&str>) -> Result<Vec<Role>, StoreError> {
        let rows = sqlx::query("SELECT * FROM roles WHERE ($1 IS NULL OR org_id = $2) ORDER BY created_at_ms, id")
            .bind(org_id)
            .bind(org_id)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(role_from).collect()
    }

    async fn set_role_permissions(&self, id: &str, permissions: &[String]) -> Result<Role, StoreError> {
        sqlx::query("UPDATE roles SET permissions = $1 WHERE id = $2")
            .bind(serde_json::to_string(permissions)?)
            .bind(id)
            .execute(self.pool())
            .await?;
        self.role(id).await?.ok_or(StoreError::NotFound("role"))
    }

    async fn delete_role(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let holders = self.role_holders(id).await?;
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM role_assignments WHERE role_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM roles WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("role"));
        }
        tx.commit().await?;
        Ok(holders)
    }

    async fn assign_role(&self, principal_id: &str, role_id: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO role_assignments (principal_id, role_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(principal_id)
            .bind(role_id)
            .execute(self.pool())
            .await
            .map_err(conflict("the principal or the role does not exist".into()))?;
        Ok(())
    }

    async fn unassign_role(&self, principal_id: &str, role_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM role_assignments WHERE principal_id = $1 AND role_id = $2")
            .bind(principal_id)
            .bind(role_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn roles_of(&self, principal_id: &str) -> Result<Vec<Role>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.* FROM roles r JOIN role_assignments a ON a.role_id = r.id WHERE a.principal_id = $1 ORDER BY r.name",
        )
        .bind(principal_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(role_from).collect()
    }

    async fn all_assignments(&self) -> Result<Vec<(String, Role)>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.principal_id AS holder, r.* FROM roles r JOIN role_assignments a ON a.role_id = r.id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get::<String, _>("holder")?, role_from(row)?)))
            .collect()
    }

    async fn role_holders(&self, role_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT principal_id FROM role_assignments WHERE role_id = $1")
                .bind(role_id)
                .fetch_all(self.pool())
                .await?,
        )
    }
}
