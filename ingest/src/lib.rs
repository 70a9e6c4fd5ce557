//! # trove ingest
//!
//! Owns the write path of member data: a body arrives over HTTP, is validated against the
//! dataset's typed schema and the writer's agreement, and is stored. It does not own
//! credentials or agreements (the `catalog` crate does) nor reads (`query`).
//!
//! ```text
//!  HTTP body ──► validate (types, sizes, unknown and reserved fields, write grants)
//!                  ├─ metadata datasets ──► catalog metadata instances
//!                  └─ transactional rows ─► WAL (group commit) → Arrow buffer →
//!                                           Parquet → object store → compaction
//! ```
//!
//! ## Subsystems
//! - [`validate`]: values checked and converted to their field's type once, at the edge;
//!   a refusal names the field and the reason, never the value.
//!
//! The transactional half of the diagram (WAL, buffers, Parquet, compaction) is the
//! durable-ingest issue's (#3).

pub mod validate;

pub use validate::{FieldProblem, IngestError};

pub type Result<T, E = IngestError> = std::result::Result<T, E>;
