//! The dataset catalogue, metadata instances and the access log.

use std::collections::{BTreeMap, HashSet};

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, Catalog, Result, get_json, to_json, unique_violation};
use crate::builtin;
use crate::error::CatalogError;
use crate::model::{
    AccessAction, AccessDecision, AccessLogEntry, AgreementVersion, ConnectionId, DataEnvironment, Dataset,
    DatasetEnvironment, DatasetName, MemberId, MetadataInstance, SubscriberId,
};

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

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
        let now = self.clock.now_ms();
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
        insert_dataset(&mut tx, &dataset, false, self.clock.now_ms(), false).await?;
        Self::bump_generation(&mut tx).await?;
        tx.commit().await?;
        self.dataset(&dataset.name).await
    }

    /// The operator promotes a sandbox dataset to production.
    pub async fn promote_dataset(&self, name: &DatasetName) -> Result<Dataset> {
        let mut tx = self.begin().await?;
        let done =
            sqlx::query("UPDATE datasets SET environment = 'production' WHERE name = $1 AND environment = 'sandbox'")
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
        let now = self.clock.now_ms();
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
        instance.updated_at = self.clock.now_ms();
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

    /// Appends entries to the access log, durably. A read across many members logs one entry
    /// per member, and those share everything but the member, version and row count: each
    /// such run is one event row, and its members go in after it, appended in event order.
    /// A member's first entry in a block of events also adds its row of the member index;
    /// this process remembers the rows of the newest block it stored, so a member read again
    /// in the same block costs no index probe (rows are never deleted, and a row another
    /// node added meanwhile is skipped by the insert).
    pub async fn record_access(&self, entries: &[AccessLogEntry]) -> Result<()> {
        self.record_access_runs(&[entries]).await
    }

    /// [`Catalog::record_access`] of entries held in several runs (a run per request), in one
    /// transaction. No event spans two runs.
    pub async fn record_access_runs(&self, runs: &[&[AccessLogEntry]]) -> Result<()> {
        let mut events = Vec::new();
        for mut rest in runs.iter().copied() {
            while !rest.is_empty() {
                let (event, after) = next_event(rest);
                events.push(event);
                rest = after;
            }
        }
        self.record_access_events(&events).await
    }

    /// Appends events to the access log in one transaction: what [`Catalog::record_access`]
    /// stores, for a caller that already holds its entries grouped (a minute of bulk writes
    /// across a million members is one event each, not a million entries).
    pub async fn record_access_events(&self, events: &[AccessEvent<'_>]) -> Result<()> {
        let insert_event = "INSERT INTO access_events (at, subscriber_id, connection_id, purpose, dataset, action, decision, \
                            agreement_version, row_count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq";
        let mut tx = self.begin().await?;
        // Index rows this transaction adds, kept apart until it commits. The work between
        // statements is one event's, so a large move never holds a runtime thread for long.
        let mut adding = KnownBlocks::default();
        for event in events {
            let e = event.shared;
            let own = |v| if event.members.is_empty() { v } else { None };
            let seq: i64 = sqlx::query_scalar(insert_event)
                .bind(e.at)
                .bind(e.subscriber_id.get())
                .bind(e.connection_id.get())
                .bind(e.purpose.as_str())
                .bind(e.dataset.as_str())
                .bind(str_of(e.action))
                .bind(str_of(e.decision))
                .bind(own(e.agreement_version.map(AgreementVersion::get)))
                .bind(own(Some(e.rows)))
                .fetch_one(&mut *tx)
                .await?;
            let insert = "access_event_members (event_seq, member_uid, agreement_version, row_count)";
            self.insert_rows(&mut tx, insert, 4, "", &event.members, |q, &(member, version, rows)| {
                q.bind(seq).bind(member.get()).bind(version.map(AgreementVersion::get)).bind(rows)
            })
            .await?;
            let block = seq / EVENTS_PER_BLOCK;
            let new: Vec<i64> = {
                let known = self.known_blocks.lock();
                event
                    .members
                    .iter()
                    .map(|m| m.0.get())
                    .filter(|&m| !known.has(m, block) && !adding.has(m, block))
                    .collect()
            };
            let insert = "access_member_blocks (member_uid, block)";
            self.insert_rows(&mut tx, insert, 2, " ON CONFLICT DO NOTHING", &new, |q, &member| {
                q.bind(member).bind(block)
            })
            .await?;
            adding.add(block, new);
        }
        tx.commit().await?;
        self.known_blocks.lock().merge(adding);
        Ok(())
    }

    /// Inserts `rows` into `into` (a table and its columns), `width` parameters a row that
    /// `bind` binds, in pieces of multi-row INSERTs (see [`ROWS_PER_INSERT`]); `tail` ends
    /// each statement (`ON CONFLICT ...`, `RETURNING ...`), and what they return is returned.
    pub(super) async fn insert_rows<'q, T>(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        into: &str,
        width: usize,
        tail: &str,
        rows: &'q [T],
        bind: impl Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q>,
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        let mut rest = rows.iter();
        let mut returned = Vec::new();
        for n in pieces(rows.len()) {
            let sql = self.multi_row_insert(into, width, n, tail);
            let insert = rest.by_ref().take(n).fold(sqlx::query(sqlx::AssertSqlSafe(sql)), &bind);
            returned.extend(insert.fetch_all(&mut **tx).await?);
        }
        Ok(returned)
    }

    /// `INSERT INTO <into> VALUES (...), ...` of `rows` rows of `width` parameters each, in
    /// the backend's placeholders: SQLite's anonymous `?` (a numbered one costs a lookup
    /// through every name of the statement when bound).
    fn multi_row_insert(&self, into: &str, width: usize, rows: usize, tail: &str) -> String {
        use std::fmt::Write;
        let mut sql = format!("INSERT INTO {into} VALUES ");
        let mut n = 0;
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for column in 0..width {
                sql.push_str(if column == 0 { "" } else { ", " });
                match self.backend {
                    Backend::Sqlite => sql.push('?'),
                    Backend::Postgres => {
                        n += 1;
                        write!(sql, "${n}").expect("a String takes writes");
                    }
                }
            }
            sql.push(')');
        }
        sql.push_str(tail);
        sql
    }

    /// A member's part of the access log, newest first: its blocks newest first, and in each
    /// its entries, until `limit`.
    pub async fn access_log(&self, member: MemberId, limit: i64) -> Result<Vec<AccessLogEntry>> {
        let limit = limit.clamp(1, 1_000_000) as usize;
        let mut log = Vec::new();
        let mut below = i64::MAX;
        while log.len() < limit {
            let blocks: Vec<i64> =
                sqlx::query_scalar("SELECT block FROM access_member_blocks WHERE member_uid = $1 AND block < $2 ORDER BY block DESC LIMIT 64")
                    .bind(member.get())
                    .bind(below)
                    .fetch_all(&self.pool)
                    .await?;
            let Some(&oldest) = blocks.last() else { break };
            below = oldest;
            for block in blocks {
                // Events first: each of the block's events is one probe of the member's row.
                let rows = sqlx::query(
                    "SELECT e.at, m.member_uid, e.subscriber_id, e.connection_id, m.agreement_version, e.purpose, e.dataset, \
                     e.action, m.row_count, e.decision FROM access_events e CROSS JOIN access_event_members m \
                     WHERE e.seq >= $1 AND e.seq < $2 AND m.event_seq = e.seq AND m.member_uid = $3 ORDER BY e.seq DESC LIMIT $4",
                )
                .bind(block * EVENTS_PER_BLOCK)
                .bind((block + 1) * EVENTS_PER_BLOCK)
                .bind(member.get())
                .bind((limit - log.len()) as i64)
                .fetch_all(&self.pool)
                .await?;
                for row in &rows {
                    log.push(entry_from_row(row)?);
                }
                if log.len() >= limit {
                    break;
                }
            }
        }
        Ok(log)
    }

    /// A connection's part of the access log (every member's, and refusals naming none),
    /// newest first: for the operator's audits and the isolation tests.
    pub async fn connection_access_log(&self, connection: ConnectionId, limit: i64) -> Result<Vec<AccessLogEntry>> {
        let rows = sqlx::query(
            "SELECT e.at, m.member_uid, e.subscriber_id, e.connection_id, COALESCE(m.agreement_version, e.agreement_version) \
             AS agreement_version, e.purpose, e.dataset, e.action, COALESCE(m.row_count, e.row_count) AS row_count, e.decision \
             FROM access_events e LEFT JOIN access_event_members m ON m.event_seq = e.seq \
             WHERE e.connection_id = $1 ORDER BY e.seq DESC, m.member_uid DESC LIMIT $2",
        )
        .bind(connection.get())
        .bind(limit.clamp(1, 1_000_000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_from_row).collect()
    }
}

/// The access log's member index names, per member, the blocks of this many events that
/// name it (see the migration `access_events`).
const EVENTS_PER_BLOCK: i64 = 64;

/// Rows per multi-row INSERT into the access log: at most 4,096 parameters, under SQLite's
/// 32,766 and PostgreSQL's 65,535. Fewer rows go in power-of-two pieces, so that a dozen
/// statements cover every count and each stays prepared.
const ROWS_PER_INSERT: usize = 1024;

/// Splits `n` rows into pieces of [`ROWS_PER_INSERT`] and then powers of two.
fn pieces(n: usize) -> impl Iterator<Item = usize> {
    let whole = std::iter::repeat_n(ROWS_PER_INSERT, n / ROWS_PER_INSERT);
    let rest = n % ROWS_PER_INSERT;
    whole.chain((0..usize::BITS).rev().map(|bit| 1usize << bit).filter(move |p| rest & p != 0))
}

/// The member index rows (member, block) known to be stored: those of the newest block.
/// Hashed as member maps are: a move of a million members' writes looks each one up.
#[derive(Debug, Default)]
pub(super) struct KnownBlocks {
    block: i64,
    members: HashSet<i64, std::hash::BuildHasherDefault<crate::model::MemberHasher>>,
}

impl KnownBlocks {
    fn has(&self, member: i64, block: i64) -> bool {
        block == self.block && self.members.contains(&member)
    }

    /// Notes `members` stored in `block`; an older block than the one held is not kept.
    fn add(&mut self, block: i64, members: impl IntoIterator<Item = i64>) {
        if block > self.block {
            self.block = block;
            self.members.clear();
        }
        if block == self.block {
            self.members.extend(members);
        }
    }

    fn merge(&mut self, other: KnownBlocks) {
        self.add(other.block, other.members);
    }
}

/// Access-log entries as the catalog stores them: one event for entries that share
/// everything but the member, its version and rows (a request's read of one dataset, a
/// minute of one connection's writes), each member once.
#[derive(Debug)]
pub struct AccessEvent<'a> {
    /// What the entries share (its own member, version and rows count only when `members`
    /// is empty).
    pub shared: &'a AccessLogEntry,
    /// (member, agreement version, rows); empty for an entry naming no member. No member twice.
    pub members: Vec<(MemberId, Option<AgreementVersion>, i64)>,
}

/// The first event of `entries`, and the entries after it.
fn next_event(entries: &[AccessLogEntry]) -> (AccessEvent<'_>, &[AccessLogEntry]) {
    let first = &entries[0];
    let Some(member) = first.member else {
        return (AccessEvent { shared: first, members: Vec::new() }, &entries[1..]);
    };
    let mut members = vec![(member, first.agreement_version, first.rows)];
    let mut seen: HashSet<i64> = HashSet::from([member.get()]);
    let mut end = 1;
    for e in &entries[1..] {
        match e.member {
            Some(m) if first.same_event(e) && seen.insert(m.get()) => members.push((m, e.agreement_version, e.rows)),
            _ => break,
        }
        end += 1;
    }
    (AccessEvent { shared: first, members }, &entries[end..])
}

fn entry_from_row(row: &AnyRow) -> Result<AccessLogEntry> {
    let id = |col: &str| -> Result<i64> { Ok(row.try_get::<i64, _>(col)?) };
    let member: Option<i64> = row.try_get("member_uid")?;
    Ok(AccessLogEntry {
        at: id("at")?,
        member: member.map(MemberId::new).transpose().map_err(CatalogError::corrupt)?,
        subscriber_id: SubscriberId::new(id("subscriber_id")?).map_err(CatalogError::corrupt)?,
        connection_id: ConnectionId::new(id("connection_id")?).map_err(CatalogError::corrupt)?,
        agreement_version: row
            .try_get::<Option<i64>, _>("agreement_version")?
            .map(AgreementVersion::new)
            .transpose()
            .map_err(CatalogError::corrupt)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_every_count_in_few_sizes() {
        for n in [0, 1, 2, 3, 1023, 1024, 1025, 10_000] {
            let p: Vec<usize> = pieces(n).collect();
            assert_eq!(p.iter().sum::<usize>(), n);
            assert!(p.iter().all(|x| *x <= ROWS_PER_INSERT && x.is_power_of_two()), "{n}: {p:?}");
        }
    }

    #[test]
    fn known_blocks_hold_the_newest_block_only() {
        let mut known = KnownBlocks::default();
        known.add(3, vec![1, 2]);
        known.add(2, vec![1]);
        assert!(known.has(1, 3) && known.has(2, 3));
        assert!(!known.has(1, 2), "an older block is not remembered: its insert is retried");
        let mut newer = KnownBlocks::default();
        newer.add(4, vec![3]);
        known.merge(newer);
        assert!(known.has(3, 4) && !known.has(1, 3));
        known.add(3, vec![1]);
        assert!(!known.has(1, 3) && known.has(3, 4));
    }
}
