//! The write path as one service, [`Ingester`]: the entries the doors call and the tasks
//! behind them, in the order a row meets them.
//!
//! - [`write`]: [`Ingester::ingest`] (new rows) and [`Ingester::update_row`] (a new version
//!   of one row): idempotency, decoding within the in-flight budget, grants, event times.
//! - `sequencer`: one thread that gives rows ids, appends them to the WAL with group commit
//!   and makes them visible in the buffer in id order.
//! - `record`: what a WAL record holds (a write's rows, or read access-log entries).
//! - `replay`: the WAL back into the buffer at start, skipping rows already in Parquet.
//! - `flush`: the flusher task: due partitions to Parquet, the manifest's changes into the
//!   read index, and WAL segments dropped once nothing needs them; and the compactor's task
//!   beside it (compaction rounds, the collector), so a long merge never holds up a flush.

mod flush;
pub(crate) mod record;
mod replay;
mod sequencer;
mod write;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use catalog::{Catalog, DatasetName, MemberId};
use object_store::ObjectStore;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::IngestError;
use crate::buffer::Buffer;
use crate::idempotency::Keys;
use crate::schema::DatasetSchema;
use crate::wal::{Durability, Segments};
use crate::writelog::WriteLog;
use sequencer::{Command, LogOp};

#[cfg(fuzzing)]
pub(crate) use record::decode_wal_record;
pub use write::{GrantOf, IdempotencyKey, InFlight, RowUpdate, Rows, WriteRequest, Written};

/// Settings of the write path.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub wal_dir: PathBuf,
    pub durability: Durability,
    /// A WAL segment is closed past this size.
    pub segment_bytes: u64,
    /// Hard limit of buffered rows: above it writes are refused (429) before their body is read.
    pub buffer_bytes: usize,
    /// Above this the largest datasets are flushed first.
    pub buffer_soft_bytes: usize,
    /// A dataset's buffered rows are flushed once the oldest is this old ...
    pub flush_age: Duration,
    /// ... or once they take this many bytes (and at most this much a flush).
    pub flush_bytes: usize,
    /// How often the flusher looks for due datasets.
    pub flush_tick: Duration,
    pub compaction: crate::compact::CompactionConfig,
    /// How often compaction looks for partitions with many small files.
    pub compact_interval: Duration,
    /// Bytes of write bodies and their decoded rows in flight at once ([`InFlight`]); past
    /// it a write is refused (429) rather than queued.
    pub inflight_bytes: usize,
    /// Most rows in one write (413 past it).
    pub max_rows_per_write: usize,
    /// Resident memory of the process, less what the read side holds and counts itself
    /// ([`Ingester::count_memory_elsewhere`]), that writes keep below: above it less
    /// `flush_bytes` (what a flush under way may still add), writes are refused (429) while
    /// the buffer is above its soft limit; `None`: only the buffer's own limits apply.
    pub memory_limit: Option<usize>,
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
    manifest_seq: AtomicI64,
    manifest_synced: Mutex<Instant>,
    /// When keys and access-log entries last moved from closed WAL segments to the catalog.
    catalog_moved: Mutex<Option<Instant>>,
    /// Set while flushes fail (object storage down): a full buffer then means 503, not 429.
    storage_failing: AtomicBool,
    schemas: Mutex<HashMap<DatasetName, Arc<DatasetSchema>>>,
    /// Bytes of write bodies in flight, in KiB permits (see [`InFlight`]).
    in_flight: Arc<tokio::sync::Semaphore>,
    /// See [`Ingester::update_row`].
    row_locks: Box<[tokio::sync::Mutex<()>]>,
    keys: Arc<Keys>,
    write_log: Arc<WriteLog>,
    auth: Arc<catalog::cache::AuthCache>,
    compactor: crate::compact::Compactor,
    /// Whether the buffer is above its soft limit: then background work runs at normal
    /// priority, below it at low priority (see `background`).
    pressure: crate::background::Pressure,
    resident: crate::resident::Resident,
    stop: tokio::sync::watch::Sender<bool>,
    /// The flusher's and the compactor's tasks.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Ingester {
    /// Opens the write path: replays the WAL into the buffer (skipping rows the manifest
    /// already holds), then starts the sequencer, the flusher and the compactor.
    pub async fn open(
        config: IngestConfig,
        catalog: Catalog,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Arc<Ingester>, IngestError> {
        let auth = Arc::new(catalog::cache::AuthCache::default());
        let replayed = replay::replay(&config.wal_dir, &catalog, &store, auth.clone()).await?;
        let segments = Segments::open(&config.wal_dir, config.segment_bytes, config.durability)?;
        let current_segment = Arc::new(AtomicU64::new(segments.current()));
        let (tx, thread) = sequencer::start(sequencer::Sequencer {
            segments,
            buffer: replayed.buffer.clone(),
            keys: replayed.keys.clone(),
            write_log: replayed.write_log.clone(),
            counters: replayed.counters,
            last_version: replayed.last_version,
            current: current_segment.clone(),
            clock: catalog.clock().clone(),
        })?;
        let (stop, _) = tokio::sync::watch::channel(false);
        let ingester = Arc::new(Ingester {
            config: config.clone(),
            catalog,
            store,
            buffer: replayed.buffer,
            sequencer: Mutex::new(Some(tx)),
            sequencer_thread: Mutex::new(Some(thread)),
            current_segment,
            manifest_seq: AtomicI64::new(replayed.manifest_seq),
            manifest_synced: Mutex::new(Instant::now()),
            catalog_moved: Mutex::new(None),
            storage_failing: AtomicBool::new(false),
            schemas: Mutex::new(replayed.schemas),
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.inflight_bytes / 1024)),
            row_locks: (0..write::ROW_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
            keys: replayed.keys,
            write_log: replayed.write_log,
            auth,
            compactor: crate::compact::Compactor::new(config.compaction.clone()),
            pressure: Default::default(),
            resident: crate::resident::Resident::new(),
            stop,
            tasks: Mutex::new(Vec::new()),
        });
        let tasks = vec![tokio::spawn(ingester.clone().flush_loop()), tokio::spawn(ingester.clone().compact_loop())];
        *ingester.tasks.lock() = tasks;
        Ok(ingester)
    }

    /// The Arrow view of a transactional dataset, parsed once per version of the dataset:
    /// callers pass the catalog's current one (a promotion changes its environment, which
    /// both read doors check through the schema).
    pub fn schema(&self, dataset: &Arc<catalog::Dataset>) -> Result<Arc<DatasetSchema>, IngestError> {
        let mut schemas = self.schemas.lock();
        match schemas.get(&dataset.name) {
            Some(s) if Arc::ptr_eq(&s.dataset, dataset) || *s.dataset == **dataset => Ok(s.clone()),
            _ => {
                let s = Arc::new(DatasetSchema::new(dataset.clone())?);
                schemas.insert(dataset.name.clone(), s.clone());
                Ok(s)
            }
        }
    }

    /// Refuses new writes while the buffer is over its hard limit, before a body is read:
    /// 429 when flushing is merely behind, 503 when object storage is failing. Until then
    /// writes keep being acknowledged into the WAL while storage is down.
    ///
    /// Also 429 while the buffer is above its soft limit and the process's resident memory
    /// is above [`IngestConfig::memory_limit`] less one flush's bytes: the buffer then
    /// yields what the rest of the process (the allocator's freed pages among it) took
    /// beyond its share. Below the soft limit the buffer is never refused for memory it does
    /// not hold.
    pub fn admit(&self) -> Result<(), IngestError> {
        let buffered = self.buffer.bytes();
        let pressed = buffered >= self.config.buffer_soft_bytes;
        self.pressure.set(pressed);
        let full = buffered >= self.config.buffer_bytes;
        // A flush under way still sorts and encodes up to `flush_bytes` outside the buffer,
        // whatever is refused now: the limit keeps room for it.
        let over_memory = pressed
            && !full
            && self
                .config
                .memory_limit
                .is_some_and(|limit| self.resident.own_bytes() + self.config.flush_bytes > limit);
        if !full && !over_memory {
            return Ok(());
        }
        if self.storage_failing.load(Ordering::Relaxed) {
            metrics::counter!("trove_ingest_refusals_total", "reason" => "storage_down").increment(1);
            return Err(IngestError::Unavailable(
                "object storage is failing; rows are safe in the WAL, retry later".into(),
            ));
        }
        let reason = if full { "buffer_full" } else { "memory" };
        metrics::counter!("trove_ingest_refusals_total", "reason" => reason).increment(1);
        Err(IngestError::Overloaded { retry_after_secs: 1 })
    }

    /// Tells the memory guard ([`IngestConfig::memory_limit`]) what other parts of the
    /// process hold and count themselves (the read side's file cache and running queries):
    /// it is left out of the resident memory compared with the limit.
    pub fn count_memory_elsewhere(&self, held: impl Fn() -> usize + Send + Sync + 'static) {
        self.resident.held_elsewhere(Box::new(held));
    }

    /// A share of `bytes` of the in-flight budget for a write about to read its body (its
    /// declared length, or 0 to grow as it arrives): 429 if that much is not free.
    pub fn in_flight(&self, bytes: usize) -> Result<InFlight, IngestError> {
        InFlight::take(&self.in_flight, bytes).ok_or(IngestError::Overloaded { retry_after_secs: 1 })
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
        let payload = record::encode_reads(&entries)?;
        let (reply, done) = oneshot::channel();
        self.sequenced(Command::Log(Box::new(LogOp { payload, entries, reply })), done).await
    }

    /// Hands `command` to the sequencer and waits for its answer on `done`.
    async fn sequenced<T>(
        &self,
        command: Command,
        done: oneshot::Receiver<Result<T, IngestError>>,
    ) -> Result<T, IngestError> {
        let stopped = || IngestError::Unavailable("the WAL writer stopped".into());
        {
            let sender = self.sequencer.lock();
            let sender =
                sender.as_ref().ok_or_else(|| IngestError::Unavailable("the server is shutting down".into()))?;
            sender.send(command).map_err(|_| stopped())?;
        }
        done.await.map_err(|_| stopped())?
    }

    /// The node's authorization cache. The server's requests and the write log share it, so
    /// each connection's agreements are held, and read, once a node.
    pub fn auth_cache(&self) -> Arc<catalog::cache::AuthCache> {
        self.auth.clone()
    }

    /// A member's read entries still in the WAL, not yet in the catalog's access log.
    pub fn pending_reads(&self, member: MemberId) -> Vec<catalog::AccessLogEntry> {
        self.write_log.pending_reads(member)
    }

    /// The buffer of acknowledged, not yet flushed rows (reads union them with the files).
    pub fn buffer(&self) -> &Arc<Buffer> {
        &self.buffer
    }

    /// Graceful shutdown: stop taking writes, let the sequencer finish, flush everything.
    pub async fn shutdown(&self) -> Result<(), IngestError> {
        self.sequencer.lock().take();
        let thread = self.sequencer_thread.lock().take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join()).await.ok();
        }
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
        for _ in 0..3 {
            if self.flush_round(true).await == 0 && self.buffer.bytes() == 0 {
                // Nothing is read any more: what compaction replaced goes now, not as garbage.
                self.compactor.delete_doomed(&self.store, true).await;
                return Ok(());
            }
        }
        Err(IngestError::Unavailable("some rows could not be flushed; they stay in the WAL for the next start".into()))
    }
}

/// A panic in the WAL writer, the flusher or the compactor leaves the write path's state
/// unknown: stop the process rather than serve on half-working (writes refused forever, or
/// acknowledged into a WAL nobody flushes). Nothing acknowledged is lost: the restart replays the WAL, as after a
/// crash. Panics in encoding work are not this: they fail that flush, which retries.
fn stop_on_panic(what: &str) -> ! {
    tracing::error!("{what} panicked; stopping so that a restart recovers from the WAL");
    std::process::abort()
}
