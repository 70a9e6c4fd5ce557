//! # trove query
//!
//! Owns agreement-scoped reads: nothing outside a member's approved agreement with the
//! caller's connection is ever planned or returned. It does not own credentials or
//! agreements (the `catalog` crate resolves them into an [`catalog::AgreementScope`]) nor
//! writes (`ingest`).
//!
//! ```text
//!  request ──► AgreementScope (catalog, checked when the request starts)
//!                 └─► scope::readable ──► the fields of one dataset the caller may see
//!                        ├─ metadata datasets: instances from the catalog
//!                        └─ transactional datasets: a DataFusion TableProvider per
//!                           request over the member's Parquet files and buffered rows
//! ```
//!
//! ## Subsystems
//! - [`scope`]: turns an agreement into the allow-list of one dataset's fields, fail-closed.
//!
//! The DataFusion half of the diagram is the scoped-reads issue's (#4).

pub mod scope;

pub use scope::{QueryError, Readable};

pub type Result<T, E = QueryError> = std::result::Result<T, E>;
