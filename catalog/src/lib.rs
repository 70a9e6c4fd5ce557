//! # trove catalog
//!
//! Owns everything about trove that is not a transactional row: the dataset catalogue
//! (metadata and transactional datasets with typed field schemas, sandbox and production),
//! members, subscribers, dedicated connections with their revisions and lifecycle, members'
//! data sharing agreements, hashed keys and tokens, metadata dataset instances, and the
//! access log. It does not own transactional rows (the `ingest` and `query` crates do) nor
//! HTTP (the server maps [`CatalogError::kind`] to statuses).
//!
//! ```text
//!  operator ──► datasets, members, subscribers, approve/promote connections
//!  subscriber ─► connection terms (draft → requested → approved → live; edits open revisions)
//!  member ─────► agreement (approve / revoke a connection's serving revision) ──► key issued
//!                                   │
//!        every data request ──► agreement_scope(subscriber, con_id, key) ──► AgreementScope
//!                                   │
//!                              access log (durable before the answer)
//! ```
//!
//! ## Subsystems
//! - [`model`]: domain types ([`MemberId`], [`ConId`], [`DatasetName`], [`Connection`],
//!   [`Agreement`], ...), parsed at the edge.
//! - [`Catalog`]: the store, on SQLite (embedded default, WAL mode) or PostgreSQL, one code
//!   path over `sqlx::Any` with one migration folder per dialect.
//! - built-in datasets: the 61 datasets of the Mydex catalogue, with trove's definitions for
//!   the fields the public catalogue does not list (`datasets/`).
//! - [`cache::AuthCache`]: authorization state cached per node, checked against one
//!   generation number per request so it is never stale.
//! - [`Secret`]: keys are random (192 bits), stored as SHA-256, compared in constant time.
//! - [`time`]: the one clock every crate reads, held by the [`Catalog`] (a test sets it).

mod builtin;
pub mod cache;
mod error;
pub mod model;
mod secret;
mod store;
pub mod time;

#[cfg(any(test, feature = "test-utils"))]
pub mod conformance;

pub use builtin::{DEFAULT_EVENT_TIME_FIELD, datasets as builtin_datasets};
pub use error::{CatalogError, ErrorKind};
pub use model::*;
pub use secret::{Secret, SecretHash};
pub use store::accounts::{Bearer, SubscriberCredentials};
pub use store::manifest::{IdempotentWrite, ManifestChanges};
pub use store::{AccessEvent, Backend, Catalog, normalize_terms};

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;
