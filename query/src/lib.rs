//! # trove query
//!
//! Owns agreement-scoped reads: nothing outside a member's approved agreement with the
//! caller's connection is ever planned or returned. It does not own credentials or
//! agreements (the `catalog` crate resolves them, checked when the request starts) nor the
//! rows (`ingest` buffers them and indexes their files; this crate reads both).
//!
//! ```text
//!  request ─► ReadScope / AgreementScope (catalog, checked when the request starts)
//!           ─► TableScope: per dataset, the visible columns and the members (with masks)
//!           ─► QueryEngine: a session per request whose catalog holds only scoped tables
//!                 └─► ScopedTable (TableProvider): members and files picked by the filters,
//!                       one snapshot per member of ingest's buffer + file index,
//!                       cached decoded files (or blocks of many) / Parquet scans ∪ buffered rows
//!           ─► plan check (every leaf is this request's scan) ─► limited answer stream
//!  metadata datasets: scope::readable decides which fields of catalog instances show
//! ```
//!
//! ## Subsystems
//! - [`scope`]: agreements to visible columns and members, fail-closed.
//! - [`prune`]: which members and files a scan's filters rule out (DataFusion's `PruningPredicate`
//!   over the manifest's ranges).
//! - [`table`]: the scoped `TableProvider` and what each request read.
//! - [`cache`]: decoded small files, and blocks of many concatenated, in memory, least
//!   recently used out (moka).
//! - [`engine`]: sessions, the SQL sandbox, the plan check, memory/time/row limits.
//! - [`functions`]: the functions SQL may call, an allow-list; value-building ones capped.
//! - [`guard`]: caps on a statement's shape and plan, memory for functions and windows.
//! - [`mydex`]: the Connection API's `filters[...]` as typed expressions.

pub mod cache;
pub mod engine;
mod error;
pub mod functions;
pub mod guard;
pub mod mydex;
pub mod prune;
pub mod scope;
pub mod table;

pub use engine::{Admission, PlannedQuery, QueryConfig, QueryEngine, ReadScope};
pub use error::QueryError;
pub use scope::{Readable, TableScope};
pub use table::Reads;

pub type Result<T, E = QueryError> = std::result::Result<T, E>;
