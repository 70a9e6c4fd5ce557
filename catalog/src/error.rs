//! The catalog's one error type.

/// What kind of failure an error is, so the server can map it to a status in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Invalid,
    NotFound,
    Conflict,
    Unauthenticated,
    Forbidden,
    Internal,
}

/// Errors of the catalog. Messages never hold secrets or values of member data.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{what} not found")]
    NotFound { what: &'static str },

    #[error("{what} already exists")]
    AlreadyExists { what: &'static str },

    /// A lifecycle step not allowed from the current state.
    #[error("{reason}")]
    Conflict { reason: String },

    #[error("{reason}")]
    Invalid { reason: String },

    /// A credential that is wrong, expired, revoked or missing.
    #[error("invalid credentials")]
    Unauthenticated,

    /// A valid credential asking outside what it may do.
    #[error("not permitted")]
    Forbidden,

    #[error("catalog store: {0}")]
    Store(#[from] sqlx::Error),

    #[error("catalog migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    #[error("catalog data is corrupt: {0}")]
    Corrupt(String),
}

impl CatalogError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CatalogError::NotFound { .. } => ErrorKind::NotFound,
            CatalogError::AlreadyExists { .. } | CatalogError::Conflict { .. } => ErrorKind::Conflict,
            CatalogError::Invalid { .. } => ErrorKind::Invalid,
            CatalogError::Unauthenticated => ErrorKind::Unauthenticated,
            CatalogError::Forbidden => ErrorKind::Forbidden,
            CatalogError::Store(_) | CatalogError::Migrate(_) | CatalogError::Corrupt(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        CatalogError::Invalid { reason: reason.into() }
    }

    pub(crate) fn conflict(reason: impl Into<String>) -> Self {
        CatalogError::Conflict { reason: reason.into() }
    }

    pub(crate) fn corrupt(e: impl std::fmt::Display) -> Self {
        CatalogError::Corrupt(e.to_string())
    }
}
