//! Copying one store into another (`pinpoint migrate`): an embedded SQLite store into a
//! new PostgreSQL one, table by table in the order their references need, decisions
//! through the decision writer's own batched insert (so they land in day partitions).
//! The target's column types decide how each value is read, so a NULL is bound with the
//! type its column has.

use sqlx::Row;

use crate::{Backend, Store, StoreError};

/// The tables copied, parents before children. The change feed is not copied: the
/// target's triggers fill its own as the rows go in. Decisions are copied separately.
const TABLES: &[&str] = &[
    "organizations",
    "principals",
    "roles",
    "role_assignments",
    "api_keys",
    "signing_keys",
    "aws_accounts",
    "cloud_auth_mappings",
    "intake_keys",
    "proof_replay",
    "quota_usage",
    "decision_rollups",
    "config_loads",
];

/// Decisions read per round.
const DECISIONS_PER_ROUND: i64 = 2000;

/// What was copied: rows per table, in copy order.
#[derive(Debug, Default)]
pub struct MigrationReport {
    pub tables: Vec<(&'static str, u64)>,
}

/// A column's type in the target, which says how to read the source's value.
#[derive(Clone, Copy)]
enum ColumnType {
    Integer,
    Text,
    Bytes,
}

/// Copies everything in `from` into `to`, which must hold no keys and no organizations
/// (a store in use is never merged into).
pub async fn copy_store(from: &Store, to: &Store) -> Result<MigrationReport, StoreError> {
    if to.backend() != Backend::Postgres {
        return Err(StoreError::Conflict("the target must be a PostgreSQL store".into()));
    }
    let used: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM api_keys) + (SELECT COUNT(*) FROM organizations) + (SELECT COUNT(*) FROM decisions)",
    )
    .fetch_one(to.pool())
    .await?;
    if used > 0 {
        return Err(StoreError::Conflict(
            "the target store already holds keys, organizations or decisions; migrate into an empty database".into(),
        ));
    }
    let mut report = MigrationReport::default();
    let mut tx = to.pool().begin().await?;
    for table in TABLES {
        let columns = target_columns(to, table).await?;
        let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
        let select = format!("SELECT {} FROM {table}", names.join(", "));
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            placeholders.join(", ")
        );
        let rows = sqlx::query(&select).fetch_all(from.pool()).await?;
        for row in &rows {
            let mut query = sqlx::query(&insert);
            for (i, (_, kind)) in columns.iter().enumerate() {
                query = match kind {
                    ColumnType::Integer => query.bind(row.try_get::<Option<i64>, _>(i)?),
                    ColumnType::Text => query.bind(row.try_get::<Option<String>, _>(i)?),
                    ColumnType::Bytes => query.bind(row.try_get::<Option<Vec<u8>>, _>(i)?),
                };
            }
            query.execute(&mut *tx).await?;
        }
        report.tables.push((table, rows.len() as u64));
    }
    tx.commit().await?;

    // Decisions, oldest first, in the writer's batches.
    let mut after = i64::MIN;
    let mut copied = 0;
    loop {
        // The organization as SQLite files it: its column, or for rows older than the
        // column the record's own.
        let rows = sqlx::query(concat!(
            "SELECT seq, record, COALESCE(org_id, ",
            crate::decisions::sqlite_record_org!(),
            ") AS org FROM decisions WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after)
        .bind(DECISIONS_PER_ROUND)
        .fetch_all(from.pool())
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get("seq")?;
        let mut decisions: Vec<(pinpoint_core::Decision, String, Option<String>)> = Vec::with_capacity(rows.len());
        for row in &rows {
            let record: String = row.try_get("record")?;
            decisions.push((serde_json::from_str(&record)?, record, row.try_get("org")?));
        }
        // The records as SQLite holds them, not encoded again.
        let batch: Vec<crate::decisions::DecisionRow> = decisions
            .iter()
            .map(|(decision, record, org)| crate::decisions::DecisionRow {
                decision,
                record: std::borrow::Cow::Borrowed(record),
                org_id: org.as_deref(),
            })
            .collect();
        crate::decisions::insert_rows(to, &batch).await?;
        copied += batch.len() as u64;
    }
    report.tables.push(("decisions", copied));
    Ok(report)
}

/// The target table's columns, in order, with their types.
async fn target_columns(to: &Store, table: &str) -> Result<Vec<(String, ColumnType)>, StoreError> {
    let rows = sqlx::query(
        "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT) FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(to.pool())
    .await?;
    let mut columns = Vec::with_capacity(rows.len());
    for row in rows {
        let (name, data_type): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        let kind = match data_type.as_str() {
            "bigint" | "integer" => ColumnType::Integer,
            "bytea" => ColumnType::Bytes,
            _ => ColumnType::Text,
        };
        columns.push((name, kind));
    }
    // `seq` columns are numbered afresh by the target.
    columns.retain(|(name, _)| name != "seq");
    Ok(columns)
}
