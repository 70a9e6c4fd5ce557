//! The sequencer: one thread that takes every queued write and read log, gives rows ids
//! and a version, appends the group to the WAL with one sync, then makes the rows visible in
//! the buffer in id order and answers each request. One writer, so ids and versions need no
//! lock and a group costs one fsync however many requests it holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use catalog::time::Clock;
use catalog::{DataEnvironment, DatasetName, MemberId};
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use tokio::sync::oneshot;

use super::record::{RecordHeader, encode_record};
use super::{Ingester, stop_on_panic};
use crate::IngestError;
use catalog::MemberMap;

use crate::buffer::Buffer;
use crate::idempotency::{Claim, Keys};
use crate::schema::{DatasetSchema, MEMBER_UID, ROW_ID, ROW_VERSION, int_column, member_runs};
use crate::wal::Segments;
use crate::writelog::WriteLog;

/// One write on its way to the sequencer.
pub(super) struct WriteOp {
    pub(super) header: RecordHeader,
    pub(super) schema: Arc<DatasetSchema>,
    /// Input columns, sorted by member.
    pub(super) batch: RecordBatch,
    /// Row ids for new versions of existing rows (an update); `None` gives new ids.
    pub(super) ids: Option<Vec<i64>>,
    pub(super) reply: oneshot::Sender<Result<Vec<i64>, IngestError>>,
}

/// Access-log entries of reads on their way to the WAL: durable before the read answers,
/// moved to the catalog with the segment that holds them.
pub(super) struct LogOp {
    pub(super) payload: Vec<u8>,
    pub(super) entries: Vec<catalog::AccessLogEntry>,
    pub(super) reply: oneshot::Sender<Result<(), IngestError>>,
}

/// What the sequencer is asked to do.
pub(super) enum Command {
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

/// Starts the sequencer thread (continuing the replayed counters).
pub(super) fn start(
    sequencer: Sequencer,
) -> std::io::Result<(std::sync::mpsc::Sender<Command>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel::<Command>();
    let thread = std::thread::Builder::new().name("trove-wal".into()).spawn(move || {
        let run = std::panic::AssertUnwindSafe(|| sequencer.run(rx));
        if std::panic::catch_unwind(run).is_err() {
            stop_on_panic("the WAL writer");
        }
    })?;
    Ok((tx, thread))
}

impl Ingester {
    /// Hands rows to the sequencer: returns once they are durable in the WAL and visible in
    /// the buffer, with the ids they were given (in member order, input order within a
    /// member). `ids` gives existing rows new versions; a claimed key is written with them.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send(
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
                connection,
                idempotency: claim.map(|c| (c.key().to_owned(), c.body_hash().to_owned())),
                at: self.catalog.clock().now_ms(),
                logged,
            },
            schema,
            batch,
            ids,
            reply,
        };
        let ids = self.sequenced(Command::Write(Box::new(op)), done).await?;
        metrics::counter!("trove_ingest_rows_total", "dataset" => op_dataset.to_string(), "result" => "accepted")
            .increment(rows as u64);
        Ok(ids)
    }
}

/// The last row id given per (environment, dataset) and member.
pub(super) type Counters = HashMap<(DataEnvironment, DatasetName), MemberMap<i64>>;

/// Sorts rows by member (stable: a member's rows keep their order, so their ids follow it).
fn sort_by_member(batch: RecordBatch) -> Result<RecordBatch, IngestError> {
    let members = int_column(&batch, MEMBER_UID)?.values();
    if members.windows(2).all(|w| w[0] <= w[1]) {
        return Ok(batch);
    }
    let mut order: Vec<u32> = (0..members.len() as u32).collect();
    order.sort_by_key(|&i| members[i as usize]);
    Ok(take_record_batch(&batch, &UInt32Array::from(order))?)
}

/// The sequencer thread's state: the WAL it appends to and what it hands rows to.
pub(super) struct Sequencer {
    pub(super) segments: Segments,
    pub(super) buffer: Arc<Buffer>,
    pub(super) keys: Arc<Keys>,
    pub(super) write_log: Arc<WriteLog>,
    pub(super) counters: Counters,
    /// The last version given: versions only increase, across restarts.
    pub(super) last_version: i64,
    /// The segment being written, for the flusher.
    pub(super) current: Arc<AtomicU64>,
    pub(super) clock: Arc<dyn Clock>,
}

impl Sequencer {
    /// Takes every queued write, gives rows ids, appends the group to the WAL with one sync,
    /// then makes the rows visible in id order and answers each request.
    fn run(self, rx: std::sync::mpsc::Receiver<Command>) {
        let Sequencer { mut segments, buffer, keys, write_log, mut counters, mut last_version, current, clock } = self;
        let (buffer, keys, write_log, current) = (&*buffer, &*keys, &*write_log, &*current);
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
                last_version = (last_version + 1).max(clock.now_ms() * 1000);
                let sequenced = (|| -> Result<(Vec<u8>, Stored), IngestError> {
                    fail::fail_point!("sequencer-encode", |_| Err(IngestError::Internal(
                        "failpoint sequencer-encode".into()
                    )));
                    let stored = assign_ids(&op, &mut counters, last_version)?;
                    Ok((encode_record(&op.header, &stored.batch)?, stored))
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
            let payloads: Vec<&[u8]> = prepared
                .iter()
                .map(|(_, _, p)| p.as_slice())
                .chain(logs.iter().map(|l| l.payload.as_slice()))
                .collect();
            match segments.write_group(&payloads) {
                Ok(segment) => {
                    metrics::histogram!("trove_ingest_wal_append_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!("trove_ingest_wal_group_size").record(prepared.len() as f64);
                    for (op, stored, _) in prepared {
                        if let Some(w) = op.header.idempotent_write(stored.batch.num_rows()) {
                            keys.in_segment(segment, w);
                        }
                        buffer_rows(buffer, &op.schema, &op.header, &stored, segment);
                        let _ = op.reply.send(Ok(stored.ids));
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
}

/// A write's rows as stored: the input columns with row ids and the batch's version
/// inserted after `instance`, the ids, and the runs of each member's rows.
struct Stored {
    batch: RecordBatch,
    ids: Vec<i64>,
    /// `(member, start, len)`, in order.
    runs: Vec<(i64, usize, usize)>,
}

/// Gives a write's rows their ids and version. New ids continue each (environment,
/// dataset, member) counter; failed appends leave gaps, never reuse.
fn assign_ids(op: &WriteOp, counters: &mut Counters, version: i64) -> Result<Stored, IngestError> {
    let runs = member_runs(&op.batch)?;
    let ids = match &op.ids {
        Some(ids) => ids.clone(),
        None => {
            let mut ids = Vec::with_capacity(op.batch.num_rows());
            let table = counters.entry((op.header.env, op.header.dataset.clone())).or_default();
            for &(member, _, len) in &runs {
                let member = MemberId::new(member).map_err(|e| IngestError::Internal(e.to_string()))?;
                let next = table.entry(member).or_insert(0);
                ids.extend((*next + 1)..=(*next + len as i64));
                *next += len as i64;
            }
            ids
        }
    };
    let mut columns: Vec<ArrayRef> = op.batch.columns().to_vec();
    let schema = &op.schema.stored;
    columns.insert(schema.index_of(ROW_ID)?, Arc::new(Int64Array::from(ids.clone())));
    columns.insert(schema.index_of(ROW_VERSION)?, Arc::new(Int64Array::from(vec![version; op.batch.num_rows()])));
    Ok(Stored { batch: RecordBatch::try_new(schema.clone(), columns)?, ids, runs })
}

/// Inserts a stored (member-sorted) write into the buffer, each member's rows into its
/// partition.
fn buffer_rows(buffer: &Buffer, schema: &Arc<DatasetSchema>, header: &RecordHeader, stored: &Stored, segment: u64) {
    let batch = &stored.batch;
    buffer.insert_runs(header.env, schema, batch, &stored.runs, segment, batch.get_array_memory_size());
}
