//! The write entries every door calls: [`Ingester::ingest`] stores new rows,
//! [`Ingester::update_row`] a new version of one row. A door parses its request into a
//! [`WriteRequest`] or [`RowUpdate`] and maps the typed result to its answer; what a write
//! must pass (its `Idempotency-Key`, decoding within the in-flight budget, the grant of each
//! member's agreement, event times) is decided here, the same for `/v1/ingest`, the Mydex
//! door and any later one.

use std::sync::Arc;

use bytes::Bytes;
use catalog::{ConnectionId, DataEnvironment, Dataset, DatasetGrant, MemberId};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use serde_json::{Map, Value};

use super::Ingester;
use crate::IngestError;
use crate::decode::{self, Budget, Format};
use crate::idempotency::{Claim, Decision};
use crate::partition::PartitionKey;
use crate::schema::{DatasetSchema, INSTANCE, MEMBER_UID, ROW_ID, ROW_VERSION};
use crate::validate;

/// Rows as a door received them.
#[derive(Debug)]
pub enum Rows {
    /// A body in one of the delivery formats (`/v1/ingest`).
    Body { format: Format, bytes: Bytes },
    /// JSON objects, one a row (the Mydex door).
    Objects(Vec<Map<String, Value>>),
}

/// The grant of the agreement in force for a member, if any: a row of a member without
/// one that writes is refused.
pub type GrantOf<'a> = &'a (dyn Fn(MemberId) -> Option<&'a DatasetGrant> + Sync);

/// An `Idempotency-Key` and what makes two bodies the same besides their bytes.
#[derive(Debug)]
pub struct IdempotencyKey {
    pub key: String,
    /// The body's `Content-Type`, as sent.
    pub content_type: String,
}

/// New rows of one dataset from one connection.
pub struct WriteRequest<'a> {
    pub connection: ConnectionId,
    pub env: DataEnvironment,
    /// The catalog's current definition of a transactional dataset.
    pub dataset: Arc<Dataset>,
    pub rows: Rows,
    pub grant_of: GrantOf<'a>,
    /// Only with [`Rows::Body`]: a retry with the same key and body gets the first answer.
    pub idempotency: Option<IdempotencyKey>,
    /// The request's share of the in-flight budget ([`Ingester::in_flight`]); decoding grows
    /// it, and it is held until the write is answered.
    pub memory: InFlight,
    /// The door writes the access-log entry itself (the Mydex door answers with it); else
    /// the write is aggregated into the bulk write log.
    pub logged: bool,
}

impl std::fmt::Debug for WriteRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteRequest")
            .field("connection", &self.connection)
            .field("env", &self.env)
            .field("dataset", &self.dataset.name)
            .field("idempotency", &self.idempotency)
            .field("logged", &self.logged)
            .finish_non_exhaustive()
    }
}

/// What a write stored.
#[derive(Debug, PartialEq, Eq)]
pub struct Written {
    /// Rows the write accepted.
    pub accepted: usize,
    /// Their ids, in member order (input order within a member); empty for a retry answered
    /// as the first time (that write's ids are not kept).
    pub ids: Vec<i64>,
}

/// An update of one stored row (`PUT` on the Mydex door).
#[derive(Debug)]
pub struct RowUpdate<'a> {
    pub dataset: Arc<Dataset>,
    pub env: DataEnvironment,
    pub member: MemberId,
    pub id: i64,
    pub connection: ConnectionId,
    /// The fields to set (not `member_uid`); a field left out keeps its stored value.
    pub fields: Map<String, Value>,
    /// The grant of the member's agreement: it must write every field the update sets.
    pub grant: &'a DatasetGrant,
}

/// Updates of one row take turns on one of these locks (by a hash of the row), so that a
/// fixed few locks serve any number of rows.
pub(super) const ROW_LOCKS: usize = 64;

fn row_stripe(key: &PartitionKey, id: i64) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    (BuildHasherDefault::<DefaultHasher>::default().hash_one((key, id)) % ROW_LOCKS as u64) as usize
}

impl Ingester {
    /// Stores new rows: returns once they are durable in the WAL and visible to reads.
    /// Nothing is stored unless every row passes (decoding, the grant of its member's
    /// agreement for every field it sets, a field set, its event time).
    pub async fn ingest(&self, request: WriteRequest<'_>) -> Result<Written, IngestError> {
        let WriteRequest { connection, env, dataset, rows, grant_of, idempotency, mut memory, logged } = request;
        let schema = self.schema(&dataset)?;
        let claim = match (&rows, idempotency) {
            (Rows::Body { bytes, .. }, Some(key)) => {
                let hash = crate::idempotency::body_hash(&dataset.name, &key.content_type, bytes);
                match self.keys.begin(&self.catalog, connection, &key.key, &hash, self.catalog.clock().now_ms()).await?
                {
                    Decision::Replay { accepted } => {
                        return Ok(Written { accepted: accepted as usize, ids: Vec::new() });
                    }
                    Decision::Proceed(claim) => Some(claim),
                }
            }
            _ => None,
        };
        let max_rows = self.config.max_rows_per_write;
        // The decoded columns count into the request's share as they grow.
        let (batch, _memory) = match rows {
            Rows::Body { format, bytes } => {
                let schema = schema.clone();
                tokio::task::spawn_blocking(move || {
                    let mut budget = Budget { max_rows, memory: &mut |b| memory.decoded(b) };
                    (decode::decode_within(&schema, format, &bytes, &mut budget), memory)
                })
                .await
                .map_err(|e| IngestError::Internal(e.to_string()))?
            }
            Rows::Objects(rows) => {
                let mut budget = Budget { max_rows, memory: &mut |b| memory.decoded(b) };
                (decode::decode_objects(&schema, &rows, &mut budget), memory)
            }
        };
        let batch = batch?;
        let rows = batch.num_rows();
        if rows == 0 {
            complete(claim, 0, self.catalog.clock().now_ms());
            return Ok(Written { accepted: 0, ids: Vec::new() });
        }
        let batch = validate::check_new_rows(&schema, batch, grant_of, self.catalog.clock().now_secs()).inspect_err(|_| {
            metrics::counter!("trove_ingest_rows_total", "dataset" => dataset.name.to_string(), "result" => "refused")
                .increment(rows as u64);
        })?;
        metrics::histogram!("trove_ingest_batch_rows").record(rows as f64);
        let ids = self.send(schema, env, connection, batch, claim.as_ref(), logged, None).await?;
        complete(claim, rows, self.catalog.clock().now_ms());
        Ok(Written { accepted: rows, ids })
    }

    /// Stores already validated rows (decoded against `schema`, authorized), for tools that
    /// build batches themselves (benches, bulk loads); doors call [`Ingester::ingest`].
    pub async fn write(
        &self,
        schema: Arc<DatasetSchema>,
        env: DataEnvironment,
        connection: ConnectionId,
        batch: RecordBatch,
    ) -> Result<Vec<i64>, IngestError> {
        self.send(schema, env, connection, batch, None, false, None).await
    }

    /// Stores a new version of row `update.id` with the fields the update sets replaced and
    /// the others kept: readers keep the newest version of each id. Updates of one row take
    /// turns, each merged onto the version the one before stored, so that concurrent updates
    /// naming different fields all land (on this node: rows another node buffers are not
    /// seen here until it flushes them).
    pub async fn update_row(&self, update: RowUpdate<'_>) -> Result<(), IngestError> {
        let RowUpdate { dataset, env, member, id, connection, mut fields, grant } = update;
        let schema = self.schema(&dataset)?;
        let sets_instance = fields.contains_key(INSTANCE);
        fields.insert(MEMBER_UID.into(), Value::from(member.get()));
        let given = {
            let mut one_row = Budget { max_rows: 1, memory: &mut |_| true };
            decode::decode_objects(&schema, std::slice::from_ref(&fields), &mut one_row)?
        };
        validate::authorize_rows(&schema, &given, |m| (m == member).then_some(grant))?;
        let key = PartitionKey { env, dataset: dataset.name.clone(), member };
        let _turn = self.row_locks[row_stripe(&key, id)].lock().await;
        let current = self.current_row(&key, id).await?.ok_or(IngestError::NoSuchRow)?;
        let merged = merge_row(&schema, &current, &given, sets_instance)?;
        let merged = validate::check_event_time(&schema, merged, self.catalog.clock().now_secs())?;
        self.send(schema, env, connection, merged, None, true, Some(vec![id])).await.map(|_| ())
    }

    /// The newest version of row `id` of a partition (stored columns, one row), from the
    /// buffer, the member's files and the dataset's hot files that may hold it.
    async fn current_row(&self, key: &PartitionKey, id: i64) -> Result<Option<RecordBatch>, IngestError> {
        let snapshot = self.buffer.snapshot(key.env, &key.dataset, [key.member]);
        let mut candidates = snapshot.rows(&[key.member])?;
        let files = snapshot.members.first().map(|(_, s)| s.files.clone()).unwrap_or_default();
        for f in files.iter() {
            if f.min_id <= id && id <= f.max_id {
                candidates.extend(crate::persist::read_file(&self.store, &f.path).await?);
            }
        }
        // A hot file holds every member's rows, ids overlapping: only this member's count.
        for f in snapshot.hot.iter().filter(|f| f.min_id <= id && id <= f.max_id) {
            candidates.extend(crate::persist::read_member_rows(&self.store, &f.path, key.member).await?);
        }
        let mut best: Option<(i64, RecordBatch)> = None;
        for b in &candidates {
            let (Some(ids), Some(versions)) = (b.column_by_name(ROW_ID), b.column_by_name(ROW_VERSION)) else {
                return Err(IngestError::Internal("a stored batch without row ids".into()));
            };
            let (ids, versions) = (ids.as_primitive::<Int64Type>(), versions.as_primitive::<Int64Type>());
            for i in 0..b.num_rows() {
                if ids.value(i) == id && best.as_ref().is_none_or(|(v, _)| versions.value(i) > *v) {
                    best = Some((versions.value(i), b.slice(i, 1)));
                }
            }
        }
        Ok(best.map(|(_, row)| row))
    }
}

fn complete(claim: Option<Claim>, accepted: usize, now_ms: i64) {
    if let Some(claim) = claim {
        claim.complete(accepted as i64, now_ms);
    }
}

/// `given` (one row of input columns) applied to `current` (a stored row): a null keeps the
/// stored value, `member_uid` never changes, `instance` (never null) changes only when set.
fn merge_row(
    schema: &DatasetSchema,
    current: &RecordBatch,
    given: &RecordBatch,
    sets_instance: bool,
) -> Result<RecordBatch, IngestError> {
    let columns = schema
        .input
        .fields()
        .iter()
        .zip(given.columns())
        .map(|(field, given)| {
            let stored = current
                .column_by_name(field.name())
                .ok_or_else(|| IngestError::Internal(format!("a stored row without {}", field.name())))?;
            let keep = match field.name().as_str() {
                MEMBER_UID => true,
                INSTANCE => !sets_instance,
                _ => given.is_null(0),
            };
            Ok(if keep { stored.clone() } else { given.clone() })
        })
        .collect::<Result<Vec<ArrayRef>, IngestError>>()?;
    Ok(RecordBatch::try_new(schema.input.clone(), columns)?)
}

/// A write's share of the bytes of write bodies in flight (in KiB permits of the
/// ingester's budget): what its body and its decoded rows take. Growing past what is free
/// refuses the write (429) rather than waiting.
#[derive(Debug)]
pub struct InFlight {
    budget: Arc<tokio::sync::Semaphore>,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Bytes held for the body itself; decoding asks for more on top.
    body: usize,
}

impl InFlight {
    /// A share of `bytes` now, or `None` if the budget has not that much free.
    pub(super) fn take(budget: &Arc<tokio::sync::Semaphore>, bytes: usize) -> Option<InFlight> {
        let mut share = InFlight { budget: budget.clone(), held: None, body: bytes };
        share.grow_to(bytes).then_some(share)
    }

    /// Holds at least `bytes` in all; false if the budget has not the rest free.
    fn grow_to(&mut self, bytes: usize) -> bool {
        let held = self.held.as_ref().map_or(0, |p| p.num_permits());
        let want = bytes.div_ceil(1024);
        if want <= held {
            return true;
        }
        let Ok(more) = u32::try_from(want - held) else { return false };
        match self.budget.clone().try_acquire_many_owned(more) {
            Ok(permit) => {
                match &mut self.held {
                    Some(p) => p.merge(permit),
                    None => self.held = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }

    /// For a body of unknown length: it has now sent `bytes`; false if the budget has not
    /// that much free.
    pub fn body_at(&mut self, bytes: usize) -> bool {
        self.body = self.body.max(bytes);
        self.grow_to(bytes)
    }

    /// Decoding asks: the decoded columns hold `bytes`, besides the body.
    fn decoded(&mut self, bytes: usize) -> bool {
        self.grow_to(self.body + bytes)
    }
}
