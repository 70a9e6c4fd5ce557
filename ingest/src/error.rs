//! The ingest crate's one error type.

use crate::decode::RowError;

/// What kind of failure an error is, so the server maps it to a status in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body is not what it claims to be (400).
    Malformed,
    /// Rows or values that do not fit the schema (422).
    Invalid,
    /// The agreement does not permit this write (403).
    Forbidden,
    /// The row to update does not exist (404).
    NotFound,
    /// The body is past a size limit (413).
    TooLarge,
    /// The same `Idempotency-Key` is still being written (409).
    Conflict,
    /// Under pressure: retry later (429/503 with `Retry-After`).
    Overloaded,
    /// Storage is failing or the server is stopping (503).
    Unavailable,
    Internal,
}

/// One refused field of a metadata write: which, and why. Never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: String,
    pub reason: String,
}

/// Errors of the write path. Messages never hold row values.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Malformed(String),
    /// Values that do not fit the schema; nothing was stored.
    #[error("{} field(s) refused", problems.len())]
    Invalid { problems: Vec<FieldProblem> },
    /// Rows that do not fit the schema or the agreement; nothing was stored.
    #[error("{} row(s) refused; nothing was stored", rows.len())]
    Rows { rows: Vec<RowError>, forbidden: bool },
    #[error("the agreement does not permit this write")]
    Forbidden,
    #[error("no such row")]
    NoSuchRow,
    #[error("{0}")]
    TooLarge(String),
    #[error("a write with this Idempotency-Key is still in flight")]
    InFlight,
    #[error("this Idempotency-Key was used with another body")]
    KeyReused,
    #[error("the write buffer is full; retry in {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error("WAL: {0}")]
    Io(#[from] std::io::Error),
}

impl IngestError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            IngestError::Malformed(_) => ErrorKind::Malformed,
            IngestError::Invalid { .. } | IngestError::KeyReused => ErrorKind::Invalid,
            IngestError::InFlight => ErrorKind::Conflict,
            IngestError::NoSuchRow => ErrorKind::NotFound,
            IngestError::TooLarge(_) => ErrorKind::TooLarge,
            IngestError::Rows { forbidden: false, .. } => ErrorKind::Invalid,
            IngestError::Rows { forbidden: true, .. } | IngestError::Forbidden => ErrorKind::Forbidden,
            IngestError::Overloaded { .. } => ErrorKind::Overloaded,
            IngestError::Unavailable(_) | IngestError::ObjectStore(_) | IngestError::Io(_) => ErrorKind::Unavailable,
            IngestError::Internal(_) | IngestError::Arrow(_) | IngestError::Parquet(_) | IngestError::Catalog(_) => {
                ErrorKind::Internal
            }
        }
    }
}

impl From<crate::decode::DecodeError> for IngestError {
    fn from(e: crate::decode::DecodeError) -> Self {
        match e {
            crate::decode::DecodeError::Malformed(m) => IngestError::Malformed(m),
            crate::decode::DecodeError::Rows(rows) => IngestError::Rows { rows, forbidden: false },
            crate::decode::DecodeError::TooManyRows(most) => IngestError::TooLarge(format!(
                "the body holds more than {most} rows; send at most that many in one request"
            )),
            crate::decode::DecodeError::OverBudget => IngestError::Overloaded { retry_after_secs: 1 },
        }
    }
}
