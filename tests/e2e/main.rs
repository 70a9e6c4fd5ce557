//! End-to-end tests: the real router over real HTTP with a real catalog (SQLite, and
//! PostgreSQL when `TROVE_TEST_POSTGRES_URL` is set), plus the real binary. One test binary
//! so the workspace links once.

mod abuse;
mod auth;
mod binary;
mod crash;
mod durability;
#[cfg(feature = "failpoints")]
mod faults;
mod ingest;
mod isolation;
mod lifecycle;
mod load;
mod operations;
mod overload;
mod pds;
mod query;

/// The real binary, for the suites that run it.
const TROVE: &str = env!("CARGO_BIN_EXE_trove");
