//! # trove ingest
//!
//! Owns the write path of member data: a body arrives over HTTP, is validated against the
//! dataset's typed schema and the writers' agreements, made durable in a write-ahead log
//! (a 200 means durable), buffered in Arrow, written as Parquet into object storage (hot
//! files, one per dataset and flush, for the hot window), and settled under one prefix per
//! member and dataset. It does not own credentials or agreements (the
//! `catalog` crate does) nor reads (`query`), which union its buffer with the files.
//!
//! ```text
//!  a door (HTTP) ─► Ingester::ingest(WriteRequest) / Ingester::update_row(RowUpdate)
//!     idempotency ─► decode (NDJSON / JSON / CSV / Arrow IPC → typed Arrow, row-numbered
//!                   refusals, within the in-flight budget as the columns grow)
//!                 ─► validate (write grants per row and field, rows that set a field, event time)
//!                 ─► sequencer thread: row ids, WAL group commit (one fsync)
//!                        └─► buffer (per environment and dataset: each write's batch
//!                            kept whole, sorted by member; byte budget)
//!  flusher (a dataset by age or size, largest first above the soft limit)
//!        └─► every member's rows → persist: sort by member, event time → one hot Parquet
//!             file → object store (PutMode::Create)
//!             → manifest row in the catalog → file index (what reads see)
//!             → WAL segments below the oldest buffered row deleted (their keys and
//!               access-log entries moved to the catalog first)
//!  compaction: small hot files merged; hot files older than the hot window settled into
//!             one file per member; a member's small files merged by day, then by month
//!  collector: unrecorded objects older than a grace period deleted (hourly)
//!  metadata datasets: validate::check_values → catalog metadata instances
//! ```
//!
//! ## Modules, in data-path order
//! - [`Ingester`] (`ingester/`): the entries doors call ([`Ingester::ingest`],
//!   [`Ingester::update_row`], [`Ingester::log_access`]) and the sequencer, WAL records,
//!   replay and flusher behind them; each file opens with what it owns.
//! - [`idempotency`]: `Idempotency-Key`s, kept in the WAL with their batch, then in the catalog.
//! - [`schema`]: a dataset as Arrow columns.
//! - [`decode`]: request bodies to validated Arrow in one pass, within a [`decode::Budget`].
//! - `columns`: the column builders decoding fills and the buffer copies rows into.
//! - [`validate`]: values, event times, write grants; refusals name rows and fields, never values.
//! - [`wal`]: checksummed segment files, group commit, replay that cuts torn tails.
//! - [`partition`]: one member's rows of one dataset, and where its files live.
//! - [`buffer`]: acknowledged rows not yet in Parquet, per dataset and not split by member
//!   until they are flushed, under a byte budget, and the index of
//!   recorded files (kept by flushes, compaction and the manifest's change feed) that reads
//!   snapshot with them.
//! - [`persist`]: Parquet encoding (hot and per-member files) and the put-then-record commit.
//! - [`compact`]: hot files merged, then settled into per-member files after the hot window;
//!   small files of a member merged by day, then by month; each with an atomic swap.
//! - `collect`: objects the manifest does not name (left by a crash) deleted after a grace
//!   period, so the store holds exactly what the manifest names.
//! - `background`: flush and compaction work in short jobs, at most half the cores at once, at
//!   low priority unless a buffer is above its soft limit.
//! - `resident`: the process's resident memory, which writes are refused on past its limit
//!   while the buffer is above its soft limit (the allocator's share the buffer cannot see).
//! - [`writelog`]: bulk writes in the access log, aggregated per minute, counted from the WAL
//!   segments as they move to the catalog.

mod background;
pub mod buffer;
mod collect;
mod columns;
pub mod compact;
pub mod decode;
mod error;
pub mod idempotency;
mod ingester;
pub mod partition;
pub mod persist;
mod resident;
pub mod schema;
pub mod validate;
pub mod wal;
pub mod writelog;

pub use error::{ErrorKind, FieldProblem, IngestError};
pub use ingester::{GrantOf, IdempotencyKey, InFlight, IngestConfig, Ingester, RowUpdate, Rows, WriteRequest, Written};

pub type Result<T, E = IngestError> = std::result::Result<T, E>;

/// Entry points for the fuzz targets of `fuzz/`, which reach private decoders; only in
/// builds with `--cfg fuzzing` (what `cargo fuzz` passes), never in the server's API.
#[cfg(fuzzing)]
pub mod fuzzing {
    /// Decodes a WAL record's payload (without its length and checksum) as replay does:
    /// the rows or access-log entries it holds.
    pub fn decode_wal_record(payload: &[u8]) -> crate::Result<usize> {
        crate::ingester::decode_wal_record(payload)
    }
}
