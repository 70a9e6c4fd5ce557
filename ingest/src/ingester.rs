//! The write path as one service: a sequencer thread that assigns row ids, appends to the
//! WAL with group commit and makes rows visible in the buffer in id order; a flusher task
//! that writes due partitions to Parquet and drops WAL segments whose rows are all persisted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalog::{Catalog, DataEnvironment, DatasetName, MemberId, ParquetFile};
use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::ipc::writer::StreamWriter;
use futures::{FutureExt, StreamExt};
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use catalog::IdempotentWrite;

use crate::IngestError;
use crate::buffer::{Buffer, MemberMap, PartitionKey};
use crate::idempotency::{Claim, Decision, Keys};
use crate::writelog::WriteLog;
use crate::schema::DatasetSchema;
use crate::wal::{self, Durability, Segments};

/// Settings of the write path.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub wal_dir: PathBuf,
    pub durability: Durability,
    /// A WAL segment is closed past this size.
    pub segment_bytes: u64,
    /// Hard limit of buffered rows: above it writes are refused (429) before their body is read.
    pub buffer_bytes: usize,
    /// Above this the largest partitions are flushed first.
    pub buffer_soft_bytes: usize,
    /// A partition is flushed once its oldest row is this old ...
    pub flush_age: Duration,
    /// ... or once it holds this many bytes.
    pub flush_bytes: usize,
    /// How often the flusher looks for due partitions.
    pub flush_tick: Duration,
    /// Object-store put attempts per flush before the flush is retried later.
    pub put_attempts: u32,
    pub compaction: crate::compact::CompactionConfig,
    /// How often compaction looks for partitions with many small files.
    pub compact_interval: Duration,
}

/// What a WAL record says besides its rows.
#[derive(Debug, Serialize, Deserialize)]
struct RecordHeader {
    dataset: DatasetName,
    env: DataEnvironment,
    connection: i64,
    /// The write's `Idempotency-Key` and body hash, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency: Option<(String, String)>,
    /// Epoch milliseconds of the write.
    at: i64,
    /// The access log already has this write (the Mydex door logs it as it answers).
    #[serde(default)]
    logged: bool,
}

impl RecordHeader {
    fn idempotent_write(&self, accepted: usize) -> Option<IdempotentWrite> {
        let (key, body_hash) = self.idempotency.clone()?;
        Some(IdempotentWrite { connection: self.connection, key, body_hash, accepted: accepted as i64, at: self.at })
    }
}

/// An update of one stored row (`PUT` on the Mydex door).
#[derive(Debug)]
pub struct RowUpdate {
    pub key: PartitionKey,
    pub id: i64,
    pub connection: catalog::ConnectionId,
    /// One row of the dataset's input columns: the fields to set; a null keeps the stored value.
    pub fields: RecordBatch,
    /// Whether the update sets `instance` (which is never null, so the row cannot say).
    pub sets_instance: bool,
}

/// Updates of one row take turns on one of these locks (by a hash of the row), so that a
/// fixed few locks serve any number of rows.
const ROW_LOCKS: usize = 64;

fn row_stripe(key: &PartitionKey, id: i64) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    (BuildHasherDefault::<DefaultHasher>::default().hash_one((key, id)) % ROW_LOCKS as u64) as usize
}

/// `update` applied to `current` (a stored row): stored columns are read by name.
fn merge_row(schema: &DatasetSchema, current: &RecordBatch, update: &RowUpdate) -> Result<RecordBatch, IngestError> {
    use crate::schema::INSTANCE;
    use datafusion::arrow::array::Array;
    let columns = schema
        .input
        .fields()
        .iter()
        .zip(update.fields.columns())
        .map(|(field, given)| {
            let stored = current
                .column_by_name(field.name())
                .ok_or_else(|| IngestError::Internal(format!("a stored row without {}", field.name())))?;
            let keep = match field.name().as_str() {
                crate::schema::MEMBER_UID => true,
                INSTANCE => !update.sets_instance,
                _ => given.is_null(0),
            };
            Ok(if keep { stored.clone() } else { given.clone() })
        })
        .collect::<Result<Vec<ArrayRef>, IngestError>>()?;
    Ok(RecordBatch::try_new(schema.input.clone(), columns)?)
}

/// One write on its way to the sequencer.
struct WriteOp {
    header: RecordHeader,
    schema: Arc<DatasetSchema>,
    /// Input columns, sorted by member.
    batch: RecordBatch,
    /// Row ids for new versions of existing rows (an update); `None` gives new ids.
    ids: Option<Vec<i64>>,
    reply: oneshot::Sender<Result<Vec<i64>, IngestError>>,
}

/// The write path. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Ingester {
    config: IngestConfig,
    catalog: Catalog,
    store: Arc<dyn ObjectStore>,
    buffer: Arc<Buffer>,
    sequencer: Mutex<Option<std::sync::mpsc::Sender<Command>>>,
    sequencer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    current_segment: Arc<AtomicU64>,
    /// How far the read index has followed the manifest's change feed, and when it last did.
    manifest_seq: std::sync::atomic::AtomicI64,
    manifest_synced: Mutex<std::time::Instant>,
    /// When keys and access-log entries last moved from closed WAL segments to the catalog.
    catalog_moved: Mutex<Option<std::time::Instant>>,
    /// Set while flushes fail (object storage down): a full buffer then means 503, not 429.
    storage_failing: std::sync::atomic::AtomicBool,
    schemas: Mutex<HashMap<DatasetName, Arc<DatasetSchema>>>,
    /// See [`Ingester::update_row`].
    row_locks: Box<[tokio::sync::Mutex<()>]>,
    keys: Arc<Keys>,
    write_log: Arc<WriteLog>,
    compactor: crate::compact::Compactor,
    stop: tokio::sync::watch::Sender<bool>,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Access-log entries of reads on their way to the WAL: durable before the read answers,
/// moved to the catalog with the segment that holds them.
struct LogOp {
    payload: Vec<u8>,
    entries: Vec<catalog::AccessLogEntry>,
    reply: oneshot::Sender<Result<(), IngestError>>,
}

/// What the sequencer is asked to do.
enum Command {
    Write(Box<WriteOp>),
    Log(Box<LogOp>),
    /// Close the current segment (the flusher asks once all its rows are in Parquet).
    Rotate,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Write(_) => "Write",
            Command::Log(_) => "Log",
            Command::Rotate => "Rotate",
        })
    }
}

fn encode_record(header: &RecordHeader, batch: &RecordBatch) -> Result<Vec<u8>, IngestError> {
    let head = serde_json::to_vec(header).map_err(|e| IngestError::Internal(e.to_string()))?;
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + head.len() + 8);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

/// The first four bytes of a record of read access-log entries (a rows record starts with
/// its header's length, which is never this).
const READS_RECORD: [u8; 4] = u32::MAX.to_le_bytes();

/// Read entries as the WAL keeps them: a read across many members logs entries that differ
/// only in member, version and rows, so those are stored once per group (a tenth of the
/// bytes of one object per entry).
#[derive(Debug, Serialize, Deserialize)]
struct ReadsGroup {
    /// An entry with everything shared (its member, version and rows are the first's).
    shared: catalog::AccessLogEntry,
    members: Vec<(Option<MemberId>, Option<i64>, i64)>,
}

fn encode_reads(entries: &[catalog::AccessLogEntry]) -> Result<Vec<u8>, IngestError> {
    let mut groups: Vec<ReadsGroup> = Vec::new();
    for e in entries {
        match groups.last_mut() {
            Some(g) if g.shared.same_event(e) => g.members.push((e.member, e.agreement_version, e.rows)),
            _ => groups.push(ReadsGroup { shared: e.clone(), members: vec![(e.member, e.agreement_version, e.rows)] }),
        }
    }
    // About 20 bytes a member: grown once, not doubled through its size.
    let mut out = Vec::with_capacity(READS_RECORD.len() + 256 + 24 * entries.len());
    out.extend_from_slice(&READS_RECORD);
    serde_json::to_writer(&mut out, &groups).map_err(|e| IngestError::Internal(e.to_string()))?;
    Ok(out)
}

/// The entries of a reads record, or `None` for a rows record.
fn decode_reads(payload: &[u8]) -> Result<Option<Vec<catalog::AccessLogEntry>>, IngestError> {
    let Some(json) = payload.strip_prefix(&READS_RECORD) else { return Ok(None) };
    let groups: Vec<ReadsGroup> =
        serde_json::from_slice(json).map_err(|_| IngestError::Internal("WAL record: bad access-log entries".into()))?;
    let entries = groups
        .into_iter()
        .flat_map(|g| {
            let shared = g.shared;
            g.members.into_iter().map(move |(member, agreement_version, rows)| catalog::AccessLogEntry {
                member,
                agreement_version,
                rows,
                ..shared.clone()
            })
        })
        .collect();
    Ok(Some(entries))
}

fn decode_record(payload: &[u8]) -> Result<(RecordHeader, Vec<RecordBatch>), IngestError> {
    let corrupt = |what: &str| IngestError::Internal(format!("WAL record: {what}"));
    let len = u32::from_le_bytes(payload.get(..4).ok_or_else(|| corrupt("short"))?.try_into().expect("4 bytes")) as usize;
    let head = payload.get(4..4 + len).ok_or_else(|| corrupt("short header"))?;
    let header: RecordHeader = serde_json::from_slice(head).map_err(|_| corrupt("bad header"))?;
    let (_, batches) = crate::decode::read_ipc(&payload[4 + len..]).map_err(corrupt)?;
    Ok((header, batches))
}

/// A WAL record's payload decoded as replay decodes it: the rows of a rows record, or the
/// entries of a reads record, which must also survive encoding again (for `fuzz/`).
#[cfg(fuzzing)]
pub(crate) fn decode_wal_record(payload: &[u8]) -> Result<usize, IngestError> {
    if let Some(entries) = decode_reads(payload)? {
        assert_eq!(decode_reads(&encode_reads(&entries)?)?.as_ref(), Some(&entries), "read entries round-trip");
        return Ok(entries.len());
    }
    let (_, batches) = decode_record(payload)?;
    Ok(batches.iter().map(RecordBatch::num_rows).sum())
}

/// Runs of equal member uids in a member-sorted batch: `(member, start, len)`.
fn member_runs(batch: &RecordBatch) -> Vec<(i64, usize, usize)> {
    let members = batch.column(0).as_primitive::<Int64Type>().values();
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=members.len() {
        if i == members.len() || members[i] != members[start] {
            runs.push((members[start], start, i - start));
            start = i;
        }
    }
    runs
}

/// `(member, rows)` of a member-sorted batch.
fn run_lengths(batch: &RecordBatch) -> Vec<(i64, usize)> {
    member_runs(batch).into_iter().map(|(m, _, n)| (m, n)).collect()
}

/// Inserts a stored (id-carrying, member-sorted) batch into the buffer, each member's rows
/// into its partition.
fn buffer_rows(buffer: &Buffer, schema: &Arc<DatasetSchema>, header: &RecordHeader, batch: &RecordBatch, segment: u64) {
    let runs: Vec<(MemberId, usize, usize)> =
        member_runs(batch).into_iter().filter_map(|(m, start, len)| Some((MemberId::new(m).ok()?, start, len))).collect();
    buffer.insert_runs(header.env, schema, batch, &runs, segment, batch.get_array_memory_size());
}

impl Ingester {
    /// Opens the write path: replays the WAL into the buffer (skipping rows the manifest
    /// already holds), then starts the sequencer and the flusher.
    pub async fn open(config: IngestConfig, catalog: Catalog, store: Arc<dyn ObjectStore>) -> Result<Arc<Ingester>, IngestError> {
        let buffer = Arc::new(Buffer::default());
        // The feed's position first: files committed while they load come again, harmlessly.
        let manifest_seq = catalog.manifest_seq().await?;
        buffer.load_files(catalog.all_parquet_files().await?);
        let mut counters: Counters = HashMap::new();
        let mut persisted: Counters = HashMap::new();
        let mut last_version = 0i64;
        for (env, dataset, member, max_id, max_version) in catalog.max_row_ids().await? {
            counters.entry((env, dataset.clone())).or_default().insert(member, max_id);
            persisted.entry((env, dataset)).or_default().insert(member, max_version);
            last_version = last_version.max(max_version);
        }
        let mut schemas: HashMap<DatasetName, Arc<DatasetSchema>> = HashMap::new();
        let wal_dir = config.wal_dir.clone();
        let records = tokio::task::spawn_blocking(move || wal::replay(&wal_dir))
            .await
            .map_err(|e| IngestError::Internal(e.to_string()))??;
        let mut replayed = 0usize;
        let keys = Arc::new(Keys::default());
        let write_log = Arc::new(WriteLog::default());
        for (segment, payload) in &records {
            if let Some(entries) = decode_reads(payload)? {
                write_log.reads(*segment, entries);
                continue;
            }
            let (header, batches) = decode_record(payload)?;
            if !header.logged {
                for b in &batches {
                    write_log.record(*segment, header.connection, &header.dataset, header.at, &run_lengths(b));
                }
            }
            if let Some(w) = header.idempotent_write(batches.iter().map(RecordBatch::num_rows).sum()) {
                keys.in_segment(*segment, w);
            }
            let schema = match schemas.get(&header.dataset) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(DatasetSchema::new(Arc::new(catalog.dataset(&header.dataset).await?)));
                    schemas.insert(header.dataset.clone(), s.clone());
                    s
                }
            };
            for batch in batches {
                // A member's slice shares the record's buffers: count its share of them, as a
                // live write does, not the whole record once per member.
                let record_bytes = batch.get_array_memory_size();
                let ids = batch.column(2).as_primitive::<Int64Type>();
                let versions = batch.column(3).as_primitive::<Int64Type>();
                last_version = last_version.max(datafusion::arrow::compute::max(versions).unwrap_or(0));
                for (member, start, len) in member_runs(&batch) {
                    let Ok(member) = MemberId::new(member) else { continue };
                    let key = PartitionKey { env: header.env, dataset: header.dataset.clone(), member };
                    let table = (header.env, header.dataset.clone());
                    let done = persisted.get(&table).and_then(|t| t.get(&member)).copied().unwrap_or(0);
                    let slice = batch.slice(start, len);
                    let max = datafusion::arrow::compute::max(&ids.slice(start, len)).unwrap_or(0);
                    let counter = counters.entry(table).or_default().entry(member).or_insert(0);
                    *counter = (*counter).max(max);
                    // Rows whose version is in a recorded file were flushed before the crash
                    // (a partition flushes its rows in the order they were sequenced).
                    let keep: datafusion::arrow::array::BooleanArray =
                        versions.slice(start, len).iter().map(|v| Some(v.unwrap_or(0) > done)).collect();
                    let fresh = datafusion::arrow::compute::filter_record_batch(&slice, &keep)?;
                    if fresh.num_rows() > 0 {
                        replayed += fresh.num_rows();
                        let bytes = record_bytes * fresh.num_rows() / batch.num_rows();
                        buffer.insert_runs(header.env, &schema, &fresh, &[(key.member, 0, fresh.num_rows())], *segment, bytes);
                    }
                }
            }
        }
        if replayed > 0 {
            tracing::info!(rows = replayed, records = records.len(), "replayed the WAL");
        }
        let segments = Segments::open(&config.wal_dir, config.segment_bytes, config.durability)?;
        let current_segment = Arc::new(AtomicU64::new(segments.current()));
        let (tx, rx) = std::sync::mpsc::channel::<Command>();
        let thread = {
            let (buffer, current, keys, log) = (buffer.clone(), current_segment.clone(), keys.clone(), write_log.clone());
            std::thread::Builder::new()
                .name("trove-wal".into())
                .spawn(move || {
                    let run = std::panic::AssertUnwindSafe(|| sequence(rx, segments, &buffer, &keys, &log, counters, last_version, &current));
                    if std::panic::catch_unwind(run).is_err() {
                        stop_on_panic("the WAL writer");
                    }
                })?
        };
        let (stop, _) = tokio::sync::watch::channel(false);
        let ingester = Arc::new(Ingester {
            config: config.clone(),
            catalog,
            store,
            buffer,
            sequencer: Mutex::new(Some(tx)),
            sequencer_thread: Mutex::new(Some(thread)),
            current_segment,
            manifest_seq: std::sync::atomic::AtomicI64::new(manifest_seq),
            manifest_synced: Mutex::new(std::time::Instant::now()),
            catalog_moved: Mutex::new(None),
            storage_failing: std::sync::atomic::AtomicBool::new(false),
            schemas: Mutex::new(schemas),
            row_locks: (0..ROW_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
            keys,
            write_log,
            compactor: crate::compact::Compactor::new(config.compaction.clone()),
            stop,
            flusher: Mutex::new(None),
        });
        let flusher = tokio::spawn(ingester.clone().flush_loop());
        *ingester.flusher.lock().expect("not poisoned") = Some(flusher);
        Ok(ingester)
    }

    /// The Arrow view of a transactional dataset, parsed once per version of the dataset:
    /// callers pass the catalog's current one (a promotion changes its environment, which
    /// both read doors check through the schema).
    pub fn schema(&self, dataset: &Arc<catalog::Dataset>) -> Arc<DatasetSchema> {
        let mut schemas = self.schemas.lock().unwrap_or_else(|p| p.into_inner());
        match schemas.get(&dataset.name) {
            Some(s) if Arc::ptr_eq(&s.dataset, dataset) || *s.dataset == **dataset => s.clone(),
            _ => {
                let s = Arc::new(DatasetSchema::new(dataset.clone()));
                schemas.insert(dataset.name.clone(), s.clone());
                s
            }
        }
    }

    /// Refuses new writes while the buffer is over its hard limit, before a body is read:
    /// 429 when flushing is merely behind, 503 when object storage is failing. Until then
    /// writes keep being acknowledged into the WAL while storage is down.
    pub fn admit(&self) -> Result<(), IngestError> {
        if self.buffer.bytes() < self.config.buffer_bytes {
            return Ok(());
        }
        if self.storage_failing.load(Ordering::Relaxed) {
            metrics::counter!("trove_ingest_refusals_total", "reason" => "storage_down").increment(1);
            return Err(IngestError::Unavailable("object storage is failing; rows are safe in the WAL, retry later".into()));
        }
        metrics::counter!("trove_ingest_refusals_total", "reason" => "buffer_full").increment(1);
        Err(IngestError::Overloaded { retry_after_secs: 1 })
    }

    /// Checks an `Idempotency-Key` of `connection` before its write.
    pub async fn idempotency(&self, connection: catalog::ConnectionId, key: &str, body_hash: &str) -> Result<Decision, IngestError> {
        self.keys.begin(&self.catalog, connection.get(), key, body_hash, now_ms()).await
    }

    /// Stores validated rows: returns once they are durable in the WAL and visible in the
    /// buffer, with the ids they were given (in member order, input order within a member).
    /// A claimed `Idempotency-Key` is written with the rows.
    pub async fn write(
        &self,
        schema: Arc<DatasetSchema>,
        env: DataEnvironment,
        connection: catalog::ConnectionId,
        batch: RecordBatch,
        claim: Option<&Claim>,
        logged: bool,
    ) -> Result<Vec<i64>, IngestError> {
        self.send(schema, env, connection, batch, claim, logged, None).await
    }

    /// Stores a new version of row `update.id` with the fields the update sets replaced and
    /// the others kept: readers keep the newest version of each id. Updates of one row take
    /// turns, each merged onto the version the one before stored, so that concurrent updates
    /// naming different fields all land (on this node: rows another node buffers are not
    /// seen here until it flushes them).
    pub async fn update_row(&self, schema: Arc<DatasetSchema>, update: RowUpdate, now_secs: i64) -> Result<(), IngestError> {
        let _turn = self.row_locks[row_stripe(&update.key, update.id)].lock().await;
        let current = self.current_row(&update.key, update.id).await?.ok_or(IngestError::NoSuchRow)?;
        let merged = merge_row(&schema, &current, &update)?;
        let merged = crate::validate::check_event_time(&schema, merged, now_secs)?;
        self.send(schema, update.key.env, update.connection, merged, None, true, Some(vec![update.id])).await.map(|_| ())
    }

    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        schema: Arc<DatasetSchema>,
        env: DataEnvironment,
        connection: catalog::ConnectionId,
        batch: RecordBatch,
        claim: Option<&Claim>,
        logged: bool,
        ids: Option<Vec<i64>>,
    ) -> Result<Vec<i64>, IngestError> {
        let batch = if ids.is_some() { batch } else { sort_by_member(batch)? };
        let rows = batch.num_rows();
        let op_dataset = schema.dataset.name.clone();
        let (reply, done) = oneshot::channel();
        let op = WriteOp {
            header: RecordHeader {
                dataset: schema.dataset.name.clone(),
                env,
                connection: connection.get(),
                idempotency: claim.map(|c| (c.key().to_owned(), c.body_hash().to_owned())),
                at: now_ms(),
                logged,
            },
            schema,
            batch,
            ids,
            reply,
        };
        let ids = self.sequenced(Command::Write(Box::new(op)), done).await?;
        metrics::counter!("trove_ingest_rows_total", "dataset" => op_dataset.to_string(), "result" => "accepted").increment(rows as u64);
        Ok(ids)
    }

    /// Makes access-log entries durable (in the WAL, with group commit) before the request
    /// answers; they move to the catalog's access log with their WAL segment. A read across
    /// 10,000 members logs 10,000 entries: one WAL append instead of a catalog transaction
    /// that large; a loop of refused requests costs appends grouped with the others, not a
    /// synchronous catalog write each competing with approvals and revocations.
    pub async fn log_access(&self, entries: Vec<catalog::AccessLogEntry>) -> Result<(), IngestError> {
        if entries.is_empty() {
            return Ok(());
        }
        let payload = encode_reads(&entries)?;
        let (reply, done) = oneshot::channel();
        self.sequenced(Command::Log(Box::new(LogOp { payload, entries, reply })), done).await
    }

    /// Hands `command` to the sequencer and waits for its answer on `done`.
    async fn sequenced<T>(&self, command: Command, done: oneshot::Receiver<Result<T, IngestError>>) -> Result<T, IngestError> {
        let stopped = || IngestError::Unavailable("the WAL writer stopped".into());
        {
            let sender = self.sequencer.lock().unwrap_or_else(|p| p.into_inner());
            let sender = sender.as_ref().ok_or_else(|| IngestError::Unavailable("the server is shutting down".into()))?;
            sender.send(command).map_err(|_| stopped())?;
        }
        done.await.map_err(|_| stopped())?
    }

    /// A member's read entries still in the WAL, not yet in the catalog's access log.
    pub fn pending_reads(&self, member: MemberId) -> Vec<catalog::AccessLogEntry> {
        self.write_log.pending_reads(member)
    }

    /// The newest version of row `id` of a partition (stored columns, one row), from the
    /// buffer or else the files that may hold it.
    pub async fn current_row(&self, key: &PartitionKey, id: i64) -> Result<Option<RecordBatch>, IngestError> {
        let snapshot = self.buffer.snapshot(key.env, &key.dataset, [key.member]).pop().map(|(_, s)| s).unwrap_or_default();
        let mut candidates = snapshot.rows;
        for f in snapshot.files.iter() {
            if f.min_id <= id && id <= f.max_id {
                candidates.extend(crate::persist::read_file(&self.store, &f.path).await?);
            }
        }
        let mut best: Option<(i64, RecordBatch)> = None;
        for b in &candidates {
            let ids = b.column(2).as_primitive::<Int64Type>();
            let versions = b.column(3).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                if ids.value(i) == id && best.as_ref().is_none_or(|(v, _)| versions.value(i) > *v) {
                    best = Some((versions.value(i), b.slice(i, 1)));
                }
            }
        }
        Ok(best.map(|(_, row)| row))
    }

    /// The buffer of acknowledged, not yet flushed rows (reads union them with the files).
    pub fn buffer(&self) -> &Arc<Buffer> {
        &self.buffer
    }

    async fn flush_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut last_compaction = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.flush_tick) => {},
                _ = stop.changed() => return,
            }
            let round = async {
                self.flush_round(false).await;
                if let Err(e) = self.follow_manifest().await {
                    tracing::warn!(error = %e, "could not read the manifest's changes; retrying");
                }
                metrics::gauge!("trove_ingest_buffer_bytes").set(self.buffer.bytes() as f64);
                metrics::gauge!("trove_ingest_files").set(self.buffer.file_count() as f64);
                if last_compaction.elapsed() >= self.config.compact_interval {
                    last_compaction = std::time::Instant::now();
                    if let Err(e) = self.compact_round().await {
                        tracing::warn!(error = %e, "compaction failed; it retries on its next round");
                    }
                }
            };
            if std::panic::AssertUnwindSafe(round).catch_unwind().await.is_err() {
                stop_on_panic("the flusher");
            }
        }
    }

    /// Brings the read index up to the manifest: files other nodes flushed or compacted.
    /// Runs on the flusher task, after this node's own flushes and compactions have updated
    /// the index, so their changes come back only as repeats.
    pub async fn follow_manifest(&self) -> Result<(), IngestError> {
        let behind = self.manifest_synced.lock().unwrap_or_else(|p| p.into_inner()).elapsed() > MANIFEST_RELOAD_AFTER;
        if behind {
            // Tombstones this node has not seen may be purged: reload the whole manifest.
            let seq = self.catalog.manifest_seq().await?;
            self.buffer.replace_files(self.catalog.all_parquet_files().await?);
            self.manifest_seq.store(seq, Ordering::Release);
            tracing::info!("reloaded the file index from the manifest");
        } else {
            let since = self.manifest_seq.load(Ordering::Acquire);
            let changes = self.catalog.manifest_changes(since).await?;
            if changes.latest != since {
                self.buffer.apply_manifest(changes.added, &changes.removed);
                self.manifest_seq.store(changes.latest, Ordering::Release);
            }
        }
        *self.manifest_synced.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        Ok(())
    }

    /// One compaction pass; returns how many files were merged away.
    pub async fn compact_round(&self) -> Result<usize, IngestError> {
        self.compactor.run(&self.catalog, &self.store, &self.buffer, &|d| self.schema(d), now_ms() / 1000).await
    }

    /// Flushes due partitions (or all), then deletes WAL segments no buffered row needs.
    /// Returns how many partitions failed to flush.
    pub async fn flush_round(&self, all: bool) -> usize {
        let keys = if all {
            self.buffer.keys()
        } else {
            self.buffer.due(self.config.flush_age, self.config.flush_bytes, self.config.buffer_soft_bytes)
        };
        // Files are written concurrently, then recorded together: one catalog commit per
        // round (in chunks), not one per member.
        let flushes: Vec<crate::buffer::FlushBatch> = keys.iter().filter_map(|k| self.buffer.begin_flush(k)).collect();
        let written: Vec<(crate::buffer::FlushBatch, Result<ParquetFile, IngestError>)> = futures::stream::iter(flushes)
            .map(|flush| async move {
                let result =
                    crate::persist::write_file(
                        &self.store,
                        &flush.key,
                        &flush.schema,
                        flush.batches.clone(),
                        crate::persist::Codec::Flush,
                        self.config.put_attempts,
                    ).await;
                (flush, result)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut failed = 0;
        let mut ready = Vec::new();
        for (flush, result) in written {
            match result {
                Ok(file) => ready.push((flush, file)),
                Err(e) => {
                    failed += 1;
                    tracing::warn!(error = %e, "flush failed; the rows stay buffered and in the WAL");
                    self.buffer.end_flush(&flush, None);
                }
            }
        }
        for chunk in ready.chunks(1000) {
            let files: Vec<ParquetFile> = chunk.iter().map(|(_, f)| f.clone()).collect();
            self.buffer.claim(files.iter().map(|f| f.path.clone()));
            let committed = match crate::persist::commit(&self.store, &self.catalog, &files, &[]).await {
                Ok(()) => true,
                Err(e) => {
                    self.buffer.release(files.iter().map(|f| &f.path));
                    tracing::warn!(error = %e, "recording flushed files failed; the rows stay buffered and in the WAL");
                    failed += chunk.len();
                    false
                }
            };
            for (flush, file) in chunk {
                self.buffer.end_flush(flush, committed.then_some(file));
            }
            if committed {
                metrics::counter!("trove_ingest_flushes_total", "result" => "success").increment(chunk.len() as u64);
            }
        }
        metrics::counter!("trove_ingest_flushes_total", "result" => "error").increment(failed as u64);
        self.storage_failing.store(failed > 0, Ordering::Relaxed);
        // Read the writer's segment before the buffer's oldest: rows are buffered before the
        // writer moves to a newer segment, so no needed segment can slip between the reads.
        let current = self.current_segment.load(Ordering::Acquire);
        let keep_from = self.buffer.min_segment().map_or(current, |m| m.min(current));
        // Keys and access-log entries of the records about to go must be in the catalog first.
        // They move about once a second, not every round: the access log's member index
        // takes a page write per member read, so a second of reads across the same members
        // costs about what one read does.
        {
            let mut moved = self.catalog_moved.lock().unwrap_or_else(|p| p.into_inner());
            // The first round after a start moves at once: a server restarted often must
            // still trim the WAL it replayed.
            if !all && moved.is_some_and(|at| at.elapsed() < CATALOG_MOVE_EVERY) {
                return failed;
            }
            *moved = Some(std::time::Instant::now());
        }
        if let Err(e) = self.keys.persist_below(&self.catalog, keep_from, now_ms()).await {
            tracing::warn!(error = %e, "could not save idempotency keys; keeping the WAL segments");
            return failed;
        }
        if let Err(e) = self.write_log.persist_below(&self.catalog, keep_from).await {
            tracing::warn!(error = %e, "could not write the access log; keeping the WAL segments");
            return failed;
        }
        let dir = self.config.wal_dir.clone();
        match tokio::task::spawn_blocking(move || wal::remove_below(&dir, keep_from)).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(removed = n, "dropped persisted WAL segments"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not drop WAL segments"),
            _ => {}
        }
        // Everything acknowledged is in Parquet: close the segment so the next round can
        // drop it (and move its access-log entries and keys to the catalog).
        if self.buffer.min_segment().is_none()
            && let Some(tx) = self.sequencer.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                let _ = tx.send(Command::Rotate);
            }
        failed
    }

    /// Graceful shutdown: stop taking writes, let the sequencer finish, flush everything.
    pub async fn shutdown(&self) -> Result<(), IngestError> {
        self.sequencer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.sequencer_thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join()).await.ok();
        }
        let _ = self.stop.send(true);
        let flusher = self.flusher.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(flusher) = flusher {
            let _ = flusher.await;
        }
        for _ in 0..3 {
            if self.flush_round(true).await == 0 && self.buffer.bytes() == 0 {
                return Ok(());
            }
        }
        Err(IngestError::Unavailable("some rows could not be flushed; they stay in the WAL for the next start".into()))
    }
}

/// A panic in the WAL writer or the flusher leaves the write path's state unknown: stop the
/// process rather than serve on half-working (writes refused forever, or acknowledged into a
/// WAL nobody flushes). Nothing acknowledged is lost: the restart replays the WAL, as after a
/// crash. Panics in encoding work are not this: they fail that flush, which retries.
fn stop_on_panic(what: &str) -> ! {
    tracing::error!("{what} panicked; stopping so that a restart recovers from the WAL");
    std::process::abort()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A node that has not followed the manifest's change feed for this long reloads the whole
/// manifest, because tombstones are purged after [`crate::compact::TOMBSTONES_KEPT_MS`].
const MANIFEST_RELOAD_AFTER: Duration = Duration::from_secs(3600);

/// How often flush rounds move keys and access-log entries of closed WAL segments to the
/// catalog (and drop those segments); a forced round always does.
const CATALOG_MOVE_EVERY: Duration = Duration::from_secs(1);

/// The last row id given per (environment, dataset) and member.
type Counters = HashMap<(DataEnvironment, DatasetName), MemberMap<i64>>;

/// Sorts rows by member (stable: a member's rows keep their order, so their ids follow it).
fn sort_by_member(batch: RecordBatch) -> Result<RecordBatch, IngestError> {
    let members = batch.column(0).as_primitive::<Int64Type>().values();
    if members.windows(2).all(|w| w[0] <= w[1]) {
        return Ok(batch);
    }
    let mut order: Vec<u32> = (0..members.len() as u32).collect();
    order.sort_by_key(|&i| members[i as usize]);
    Ok(take_record_batch(&batch, &datafusion::arrow::array::UInt32Array::from(order))?)
}

/// The sequencer: takes every queued write, gives rows ids, appends the group to the WAL
/// with one sync, then makes the rows visible in id order and answers each request.
fn sequence(
    rx: std::sync::mpsc::Receiver<Command>,
    mut segments: Segments,
    buffer: &Buffer,
    keys: &Keys,
    write_log: &WriteLog,
    mut counters: Counters,
    mut last_version: i64,
    current: &AtomicU64,
) {
    const GROUP_BYTES: usize = 32 << 20;
    while let Ok(first) = rx.recv() {
        let mut group: Vec<Box<WriteOp>> = Vec::new();
        let mut logs: Vec<Box<LogOp>> = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Write(op) => {
                    bytes += op.batch.get_array_memory_size();
                    group.push(op);
                }
                Command::Log(op) => {
                    bytes += op.payload.len();
                    logs.push(op);
                }
                // Rotation happens at an idle moment (a group of its own); within a group it
                // waits, and the flusher asks again.
                Command::Rotate if group.is_empty() && logs.is_empty() => {
                    match segments.rotate_if_used() {
                        Ok(()) => current.store(segments.current(), Ordering::Release),
                        Err(e) => tracing::warn!(error = %e, "could not close the WAL segment"),
                    }
                    break;
                }
                Command::Rotate => {}
            }
            if bytes < GROUP_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if group.is_empty() && logs.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let mut prepared = Vec::with_capacity(group.len());
        for op in group {
            // Versions increase with every batch sequenced, across restarts (wall-clock
            // microseconds, never below the last one seen).
            last_version = (last_version + 1).max(now_ms() * 1000);
            let sequenced = (|| -> Result<(Vec<u8>, RecordBatch), IngestError> {
                fail::fail_point!("sequencer-encode", |_| Err(IngestError::Internal("failpoint sequencer-encode".into())));
                let stored = assign_ids(&op, &mut counters, last_version)?;
                Ok((encode_record(&op.header, &stored)?, stored))
            })();
            match sequenced {
                Ok((payload, stored)) => prepared.push((op, stored, payload)),
                Err(e) => {
                    // A fault, not pressure: the writer must not be told to retry.
                    tracing::error!(error = %e, "a write could not be sequenced");
                    let _ = op.reply.send(Err(IngestError::Internal(e.to_string())));
                }
            }
        }
        let payloads: Vec<&[u8]> =
            prepared.iter().map(|(_, _, p)| p.as_slice()).chain(logs.iter().map(|l| l.payload.as_slice())).collect();
        match segments.write_group(&payloads) {
            Ok(segment) => {
                metrics::histogram!("trove_ingest_wal_append_duration_seconds").record(started.elapsed().as_secs_f64());
                metrics::histogram!("trove_ingest_wal_group_size").record(prepared.len() as f64);
                for (op, stored, _) in prepared {
                    if let Some(w) = op.header.idempotent_write(stored.num_rows()) {
                        keys.in_segment(segment, w);
                    }
                    if !op.header.logged {
                        write_log.record(segment, op.header.connection, &op.header.dataset, op.header.at, &run_lengths(&stored));
                    }
                    buffer_rows(buffer, &op.schema, &op.header, &stored, segment);
                    let ids = stored.column(2).as_primitive::<Int64Type>().values().to_vec();
                    let _ = op.reply.send(Ok(ids));
                }
                for op in logs {
                    write_log.reads(segment, op.entries);
                    let _ = op.reply.send(Ok(()));
                }
                current.store(segments.current(), Ordering::Release);
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL append failed");
                // The disk refused the append (full, failing): storage, which may come back.
                let failed = || IngestError::Unavailable(format!("the write-ahead log failed: {e}"));
                for (op, _, _) in prepared {
                    let _ = op.reply.send(Err(failed()));
                }
                for op in logs {
                    let _ = op.reply.send(Err(failed()));
                }
            }
        }
    }
}

/// The stored batch: the input columns with row ids and the batch's version inserted after
/// `instance`. New ids continue each (environment, dataset, member) counter; failed
/// appends leave gaps, never reuse.
fn assign_ids(op: &WriteOp, counters: &mut Counters, version: i64) -> Result<RecordBatch, IngestError> {
    let ids = match &op.ids {
        Some(ids) => ids.clone(),
        None => {
            let mut ids = Vec::with_capacity(op.batch.num_rows());
            let table = counters.entry((op.header.env, op.header.dataset.clone())).or_default();
            for (member, _, len) in member_runs(&op.batch) {
                let member = MemberId::new(member).map_err(|e| IngestError::Internal(e.to_string()))?;
                let next = table.entry(member).or_insert(0);
                ids.extend((*next + 1)..=(*next + len as i64));
                *next += len as i64;
            }
            ids
        }
    };
    let mut columns: Vec<ArrayRef> = op.batch.columns().to_vec();
    columns.insert(2, Arc::new(Int64Array::from(ids)));
    columns.insert(3, Arc::new(Int64Array::from(vec![version; op.batch.num_rows()])));
    Ok(RecordBatch::try_new(op.schema.stored.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::{AccessAction, AccessDecision, AccessLogEntry, ConnectionId, SubscriberId};

    /// An allowed read of `rows` of member `member`'s energy readings by connection 3.
    fn read_entry(at: i64, member: i64, rows: i64) -> AccessLogEntry {
        AccessLogEntry {
            at,
            member: Some(MemberId::new(member).unwrap()),
            subscriber_id: SubscriberId::new(2).unwrap(),
            connection_id: ConnectionId::new(3).unwrap(),
            agreement_version: Some(1),
            purpose: "billing".into(),
            dataset: "ds_energy_consumption".into(),
            action: AccessAction::Read,
            rows,
            decision: AccessDecision::Allowed,
        }
    }

    /// Torn WAL: the tail of a segment written as the sequencer writes it (groups of rows and
    /// reads records), truncated, bit-flipped or overwritten with garbage at random offsets.
    /// Replay never fails, keeps exactly the records wholly before the damage (every one
    /// decodes to what was written), cuts the rest, and appends after the cut.
    #[test]
    fn a_torn_or_corrupt_wal_tail_loses_only_the_records_after_it() {
        use datafusion::arrow::array::StringArray;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("member_uid", DataType::Int64, false), Field::new("v", DataType::Utf8, true)]));
        let mut seed = 0x2545f4914f6cdd1du64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        for r in 0..40i64 {
            let n = 1 + rand(40) as usize;
            let payload = if r % 7 == 3 {
                encode_reads(&[read_entry(r, 1 + r, n as i64)]).unwrap()
            } else {
                let members = Int64Array::from_iter_values((0..n as i64).map(|i| 1 + i % 5));
                let values = StringArray::from_iter_values((0..n).map(|i| format!("row {r}.{i}")));
                let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(members), Arc::new(values)]).unwrap();
                let header = RecordHeader {
                    dataset: "ds_energy_consumption".parse().unwrap(),
                    env: DataEnvironment::Production,
                    connection: 3,
                    idempotency: Some((format!("key-{r}"), "hash".into())),
                    at: r,
                    logged: false,
                };
                encode_record(&header, &batch).unwrap()
            };
            payloads.push(payload);
        }
        let written = tempfile::tempdir().unwrap();
        let mut segments = Segments::open(written.path(), 1 << 30, Durability::Fsync).unwrap();
        let mut at = 0;
        while at < payloads.len() {
            let group = (1 + rand(3) as usize).min(payloads.len() - at);
            let refs: Vec<&[u8]> = payloads[at..at + group].iter().map(Vec::as_slice).collect();
            segments.write_group(&refs).unwrap();
            at += group;
        }
        let name = format!("{:020}.wal", segments.current());
        drop(segments);
        let full = std::fs::read(written.path().join(&name)).unwrap();
        // Where each record ends: an 8-byte header, then its payload.
        let ends: Vec<usize> = payloads.iter().scan(0, |end, p| {
            *end += 8 + p.len();
            Some(*end)
        }).collect();
        assert_eq!(*ends.last().unwrap(), full.len());

        let trials = 1500;
        for trial in 0..trials {
            let damage = rand(full.len() as u64) as usize;
            let mut bytes = full.clone();
            match trial % 3 {
                0 => bytes.truncate(damage),
                1 => bytes[damage] ^= 1 + rand(255) as u8,
                _ => {
                    let end = (damage + 1 + rand(4096) as usize).min(bytes.len());
                    for b in &mut bytes[damage..end] {
                        *b ^= 1 + rand(255) as u8;
                    }
                }
            }
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(&name), &bytes).unwrap();
            let records = wal::replay(dir.path()).unwrap();
            let whole = ends.iter().filter(|e| **e <= damage).count();
            assert_eq!(records.len(), whole, "trial {trial}: damage at byte {damage}");
            for (i, (_, payload)) in records.iter().enumerate() {
                assert_eq!(payload, &payloads[i], "trial {trial}: record {i} replays as written");
                if decode_reads(payload).unwrap().is_none() {
                    decode_record(payload).unwrap();
                }
            }
            let kept = if whole == 0 { 0 } else { ends[whole - 1] };
            assert_eq!(std::fs::metadata(dir.path().join(&name)).unwrap().len() as usize, kept, "trial {trial}: the damaged tail is cut");
            // Appends go on after the cut: a second replay has the same records and the new one.
            Segments::open(dir.path(), 1 << 30, Durability::Fsync).unwrap().write_group(&[b"after"]).unwrap();
            let again = wal::replay(dir.path()).unwrap();
            assert_eq!(again.len(), whole + 1);
            assert_eq!(again.last().unwrap().1, b"after");
        }
        println!("torn WAL: {trials} damaged tails (truncated, bit-flipped, overwritten), 0 violations");
    }

    #[test]
    fn read_entries_round_trip_through_a_wal_record() {
        let entry = |m: i64| read_entry(1, m, 96);
        let mut other = entry(3);
        other.dataset = "ds_browsing_history".into();
        let entries = vec![entry(1), entry(2), other];
        let payload = encode_reads(&entries).unwrap();
        assert_eq!(decode_reads(&payload).unwrap(), Some(entries));
        let header = RecordHeader {
            dataset: "ds_energy_consumption".parse().unwrap(),
            env: DataEnvironment::Production,
            connection: 3,
            idempotency: None,
            at: 1,
            logged: false,
        };
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![datafusion::arrow::datatypes::Field::new(
            "a",
            datafusion::arrow::datatypes::DataType::Int64,
            false,
        )]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
        let rows = encode_record(&header, &batch).unwrap();
        assert_eq!(decode_reads(&rows).unwrap(), None, "a rows record is not taken for a reads record");
        assert_eq!(decode_record(&rows).unwrap().1[0], batch);
    }

    /// Found by `fuzz/` (wal_record): Arrow lengths past the end of a record were allocated
    /// as claimed (2 GiB here) before the read failed.
    #[test]
    fn a_record_claiming_more_than_it_holds_is_corrupt() {
        let head = br#"{"dataset": "ds_energy_consumption", "env": "production", "connection": 3, "at": 1}"#;
        let mut payload = (head.len() as u32).to_le_bytes().to_vec();
        payload.extend_from_slice(head);
        payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(decode_record(&payload), Err(IngestError::Internal(_))));
    }
}
