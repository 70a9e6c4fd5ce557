//! The one error type of the read path. Messages never carry paths, member ids or values:
//! execution failures are reported by kind, and the details go to the server log only.

/// Why a read failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The agreement does not grant reading this dataset or field.
    #[error("the agreement does not permit this read")]
    Forbidden,
    /// The statement is not a read the SQL door allows (DDL, DML, COPY, SET, EXPLAIN, ...).
    #[error("{0}")]
    NotAllowed(String),
    /// The SQL does not parse or plan (unknown tables and columns included), or a Mydex
    /// filter is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The query needs more memory than its limit.
    #[error("the query needs more memory than its limit ({0} MiB)")]
    MemoryLimit(usize),
    /// The query ran longer than its limit.
    #[error("the query ran longer than its limit ({0} s)")]
    Timeout(u64),
    /// The answer is larger than the cap on rows or bytes.
    #[error("the answer is larger than its limit ({0}); narrow the query or aggregate")]
    TooLarge(String),
    /// The query is past one of the caps on its shape or on what its functions build
    /// (the message names the cap, never a value).
    #[error("{0}")]
    Limit(String),
    /// The subscriber has as many queries running as it may.
    #[error("too many concurrent queries for this subscriber")]
    Busy,
    /// The server runs as many queries as it may, over all subscribers.
    #[error("the server is running as many queries as it may; retry shortly")]
    Overloaded,
    /// Anything else: storage or an internal fault. Logged in full, shown by kind.
    #[error("the query failed while reading data")]
    Internal(String),
}

impl QueryError {
    /// Sorts a DataFusion error into what the caller may be told.
    pub fn from_datafusion(e: datafusion::error::DataFusionError, memory_limit: usize) -> QueryError {
        use datafusion::error::DataFusionError as E;
        match e.find_root() {
            E::ResourcesExhausted(_) => QueryError::MemoryLimit(memory_limit >> 20),
            E::SQL(..) | E::Plan(_) | E::SchemaError(..) | E::NotImplemented(_) => {
                QueryError::Invalid(first_line(&e.strip_backtrace()))
            }
            // Cast, arithmetic and function errors may quote a value: say what kind failed.
            E::Execution(_) | E::ArrowError(..) => {
                QueryError::Invalid("the query could not be evaluated: a cast, arithmetic or function error".into())
            }
            E::External(inner) => match inner.downcast_ref::<QueryError>() {
                Some(QueryError::Timeout(s)) => QueryError::Timeout(*s),
                Some(QueryError::TooLarge(what)) => QueryError::TooLarge(what.clone()),
                Some(QueryError::Limit(what)) => QueryError::Limit(what.clone()),
                _ => QueryError::Internal(e.to_string()),
            },
            _ => QueryError::Internal(e.to_string()),
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(400).collect()
}
