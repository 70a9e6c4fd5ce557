//! The dataset catalogue, metadata instances and the access log.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, Catalog, Result, get_json, now_ms, to_json, unique_violation};
use crate::builtin;
use crate::error::CatalogError;
use crate::model::{
    AccessAction, AccessDecision, AccessLogEntry, ConnectionId, DataEnvironment, Dataset, DatasetEnvironment,
    DatasetName, MemberId, MetadataInstance, SubscriberId,
};

const DATASET_COLUMNS: &str = "name, title, description, kind, environment, event_time_field, fields";

fn dataset_from_row(row: &AnyRow) -> Result<Dataset> {
    let parse = |col: &str| -> Result<String> { Ok(row.try_get::<String, _>(col)?) };
    let event: Option<String> = row.try_get("event_time_field")?;
    Ok(Dataset {
        name: parse("name")?.parse().map_err(CatalogError::corrupt)?,
        title: parse("title")?,
        description: parse("description")?,
        kind: serde_json::from_value(parse("kind")?.into()).map_err(CatalogError::corrupt)?,
        environment: serde_json::from_value(parse("environment")?.into()).map_err(CatalogError::corrupt)?,
        event_time_field: event.map(|e| e.parse()).transpose().map_err(CatalogError::corrupt)?,
        fields: get_json(row, "fields")?,
    })
}

fn str_of<T: serde::Serialize>(v: T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => unreachable!("unit enums serialize as strings"),
    }
}

impl Catalog {
    /// Adds the built-in datasets the store does not have yet (first start, or a newer
    /// binary with more datasets). Existing rows are left alone.
    pub(super) async fn seed_builtin_datasets(&self) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        for d in builtin::datasets() {
            insert_dataset(&mut tx, &d, true, now, true).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn datasets(&self) -> Result<Vec<Dataset>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {DATASET_COLUMNS} FROM datasets ORDER BY name")))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(dataset_from_row).collect()
    }

    pub async fn dataset(&self, name: &DatasetName) -> Result<Dataset> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {DATASET_COLUMNS} FROM datasets WHERE name = $1")))
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(CatalogError::NotFound { what: "dataset" })?;
        dataset_from_row(&row)
    }

    /// The operator adds a dataset; it starts in the sandbox environment whatever it says.
    pub async fn create_dataset(&self, mut dataset: Dataset) -> Result<Dataset> {
        dataset.environment = DatasetEnvironment::Sandbox;
        dataset.validate().map_err(CatalogError::invalid)?;
        let mut tx = self.begin().await?;
        insert_dataset(&mut tx, &dataset, false, now_ms(), false).await?;
        Self::bump_generation(&mut tx).await?;
        tx.commit().await?;
        self.dataset(&dataset.name).await
    }

    /// The operator promotes a sandbox dataset to production.
    pub async fn promote_dataset(&self, name: &DatasetName) -> Result<Dataset> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("UPDATE datasets SET environment = 'production' WHERE name = $1 AND environment = 'sandbox'")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?;
        Self::bump_generation(&mut tx).await?;
        tx.commit().await?;
        let dataset = self.dataset(name).await?;
        if done.rows_affected() != 1 {
            return Err(CatalogError::conflict("the dataset is already in production"));
        }
        Ok(dataset)
    }

    /// A member's instances of a metadata dataset in one environment, by id.
    pub async fn metadata_instances(
        &self,
        member: MemberId,
        dataset: &DatasetName,
        env: DataEnvironment,
    ) -> Result<Vec<MetadataInstance>> {
        let rows = sqlx::query(
            "SELECT id, field_values, created_at, updated_at FROM metadata_instances \
             WHERE member_uid = $1 AND dataset = $2 AND environment = $3 ORDER BY id",
        )
        .bind(member.get())
        .bind(dataset.as_str())
        .bind(env.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(instance_from_row).collect()
    }

    /// Adds an instance of a metadata dataset; its id is the next one for the member and
    /// dataset. `values` must already be checked against the dataset's types.
    pub async fn create_metadata_instance(
        &self,
        member: MemberId,
        dataset: &DatasetName,
        env: DataEnvironment,
        values: BTreeMap<String, serde_json::Value>,
    ) -> Result<MetadataInstance> {
        let now = now_ms();
        // Two concurrent creates may pick the same id; the primary key refuses the second,
        // which retries with the next id.
        for _ in 0..5 {
            let mut tx = self.begin().await?;
            let row = sqlx::query(
                "SELECT COALESCE(MAX(id), 0) FROM metadata_instances WHERE member_uid = $1 AND dataset = $2 AND environment = $3",
            )
            .bind(member.get())
            .bind(dataset.as_str())
            .bind(env.as_str())
            .fetch_one(&mut *tx)
            .await?;
            let id = row.try_get::<i64, _>(0)? + 1;
            let inserted = sqlx::query(
                "INSERT INTO metadata_instances (member_uid, dataset, environment, id, field_values, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6)",
            )
            .bind(member.get())
            .bind(dataset.as_str())
            .bind(env.as_str())
            .bind(id)
            .bind(to_json(&values))
            .bind(now)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {
                    tx.commit().await?;
                    return Ok(MetadataInstance { id, values, created_at: now, updated_at: now });
                }
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CatalogError::conflict("too many concurrent writes to this dataset; retry"))
    }

    /// Replaces the named fields of instance `id`; other fields keep their values.
    pub async fn update_metadata_instance(
        &self,
        member: MemberId,
        dataset: &DatasetName,
        env: DataEnvironment,
        id: i64,
        values: BTreeMap<String, serde_json::Value>,
    ) -> Result<MetadataInstance> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT id, field_values, created_at, updated_at FROM metadata_instances \
             WHERE member_uid = $1 AND dataset = $2 AND environment = $3 AND id = $4",
        )
        .bind(member.get())
        .bind(dataset.as_str())
        .bind(env.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(CatalogError::NotFound { what: "instance" })?;
        let mut instance = instance_from_row(&row)?;
        instance.values.extend(values);
        instance.updated_at = now_ms();
        sqlx::query(
            "UPDATE metadata_instances SET field_values = $1, updated_at = $2 \
             WHERE member_uid = $3 AND dataset = $4 AND environment = $5 AND id = $6",
        )
        .bind(to_json(&instance.values))
        .bind(instance.updated_at)
        .bind(member.get())
        .bind(dataset.as_str())
        .bind(env.as_str())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(instance)
    }

    /// Appends entries to the access log, durably, before the answer that they describe. A
    /// read across many members logs one entry per member, and those share everything but
    /// the member, version and row count: each such group goes in as one statement that
    /// expands a JSON array of `[member, version, rows]` (bound parameters per row would
    /// cost SQLite a scan of the statement's parameters for each one).
    pub async fn record_access(&self, entries: &[AccessLogEntry]) -> Result<()> {
        type Shared<'a> = (i64, i64, i64, &'a str, &'a str, String, String);
        type Member = (Option<i64>, Option<i64>, i64);
        let mut groups: BTreeMap<Shared<'_>, Vec<Member>> = BTreeMap::new();
        for e in entries {
            let shared = (e.at, e.subscriber_id.get(), e.connection_id.get(), e.purpose.as_str(), e.dataset.as_str(), str_of(e.action), str_of(e.decision));
            groups.entry(shared).or_default().push((e.member.map(MemberId::get), e.agreement_version, e.rows));
        }
        let sql = match self.backend {
            Backend::Sqlite => {
                "INSERT INTO access_log (at, member_uid, subscriber_id, connection_id, agreement_version, purpose, dataset, action, \
                 row_count, decision) SELECT $1, value->>0, $2, $3, value->>1, $4, $5, $6, value->>2, $7 FROM json_each($8)"
            }
            Backend::Postgres => {
                "INSERT INTO access_log (at, member_uid, subscriber_id, connection_id, agreement_version, purpose, dataset, action, \
                 row_count, decision) SELECT $1, (e->>0)::bigint, $2, $3, (e->>1)::bigint, $4, $5, $6, (e->>2)::bigint, $7 \
                 FROM jsonb_array_elements($8::jsonb) AS e"
            }
        };
        let mut tx = self.begin().await?;
        for ((at, subscriber, connection, purpose, dataset, action, decision), rows) in groups {
            sqlx::query(sql)
                .bind(at)
                .bind(subscriber)
                .bind(connection)
                .bind(purpose)
                .bind(dataset)
                .bind(action)
                .bind(decision)
                .bind(to_json(&rows))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A member's part of the access log, newest first.
    pub async fn access_log(&self, member: MemberId, limit: i64) -> Result<Vec<AccessLogEntry>> {
        self.access_log_where("member_uid", member.get(), limit).await
    }

    /// A connection's part of the access log (every member's, and refusals naming none),
    /// newest first: for the operator's audits and the isolation tests.
    pub async fn connection_access_log(&self, connection: ConnectionId, limit: i64) -> Result<Vec<AccessLogEntry>> {
        self.access_log_where("connection_id", connection.get(), limit).await
    }

    async fn access_log_where(&self, column: &'static str, value: i64, limit: i64) -> Result<Vec<AccessLogEntry>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT at, member_uid, subscriber_id, connection_id, agreement_version, purpose, dataset, action, \
             row_count, decision FROM access_log WHERE {column} = $1 ORDER BY seq DESC LIMIT $2"
        )))
        .bind(value)
        .bind(limit.clamp(1, 1_000_000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id = |col: &str| -> Result<i64> { Ok(row.try_get::<i64, _>(col)?) };
                let member: Option<i64> = row.try_get("member_uid")?;
                Ok(AccessLogEntry {
                    at: id("at")?,
                    member: member.map(MemberId::new).transpose().map_err(CatalogError::corrupt)?,
                    subscriber_id: SubscriberId::new(id("subscriber_id")?).map_err(CatalogError::corrupt)?,
                    connection_id: ConnectionId::new(id("connection_id")?).map_err(CatalogError::corrupt)?,
                    agreement_version: row.try_get("agreement_version")?,
                    purpose: row.try_get("purpose")?,
                    dataset: row.try_get("dataset")?,
                    action: match row.try_get::<String, _>("action")?.as_str() {
                        "write" => AccessAction::Write,
                        _ => AccessAction::Read,
                    },
                    rows: id("row_count")?,
                    decision: match row.try_get::<String, _>("decision")?.as_str() {
                        "allowed" => AccessDecision::Allowed,
                        _ => AccessDecision::Refused,
                    },
                })
            })
            .collect()
    }
}

async fn insert_dataset(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    d: &Dataset,
    builtin: bool,
    now: i64,
    skip_existing: bool,
) -> Result<()> {
    let q = if skip_existing {
        "INSERT INTO datasets (name, title, description, kind, environment, event_time_field, fields, builtin, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name) DO NOTHING"
    } else {
        "INSERT INTO datasets (name, title, description, kind, environment, event_time_field, fields, builtin, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    };
    sqlx::query(q)
        .bind(d.name.as_str())
        .bind(&d.title)
        .bind(&d.description)
        .bind(str_of(d.kind))
        .bind(str_of(d.environment))
        .bind(d.event_time_field.as_ref().map(|f| f.to_string()))
        .bind(to_json(&d.fields))
        .bind(i64::from(builtin))
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(unique_violation("dataset"))?;
    Ok(())
}

fn instance_from_row(row: &AnyRow) -> Result<MetadataInstance> {
    Ok(MetadataInstance {
        id: row.try_get("id")?,
        values: get_json(row, "field_values")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}
