//! Domain types of the catalog.

mod connection;
mod dataset;
mod ids;
mod versions;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use connection::{
    Agreement, AgreementScope, AgreementStatus, Connection, ConnectionEnvironment, ConnectionStatus, ConnectionTerms,
    DatasetGrant, GdprDeclaration, LAWFUL_BASES, Revision, RevisionState,
};
pub use dataset::{Dataset, DatasetEnvironment, DatasetKind, Field, FieldType, MAX_TEXT_BYTES, RESERVED_FIELDS};
pub use ids::{
    AgreementVersion, ConId, ConnectionId, DatasetName, FieldName, IdError, MemberHasher, MemberId, MemberMap, Nid,
    SubscriberId,
};
pub use versions::MemberVersions;

/// A person who owns a personal data store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    pub uid: MemberId,
    pub mydexid: String,
    pub created_at: i64,
}

/// An organisation delivering data into PDSs or collecting it from them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Subscriber {
    pub id: SubscriberId,
    pub name: String,
    pub client_id: String,
    pub created_at: i64,
}

/// Which data a metadata instance or transactional row belongs to: sandbox connections see
/// only sandbox data, live ones only production data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DataEnvironment {
    Sandbox,
    Production,
}

impl DataEnvironment {
    pub fn as_str(self) -> &'static str {
        match self {
            DataEnvironment::Sandbox => "sandbox",
            DataEnvironment::Production => "production",
        }
    }

    /// The inverse of [`DataEnvironment::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sandbox" => Some(DataEnvironment::Sandbox),
            "production" => Some(DataEnvironment::Production),
            _ => None,
        }
    }
}

impl From<ConnectionEnvironment> for DataEnvironment {
    fn from(e: ConnectionEnvironment) -> Self {
        match e {
            ConnectionEnvironment::Sandbox => DataEnvironment::Sandbox,
            ConnectionEnvironment::Live => DataEnvironment::Production,
        }
    }
}

/// One instance of a metadata dataset held by a member (e.g. one of two bank accounts).
/// `id` starts at 1 per member and dataset; `instance_0` is id 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetadataInstance {
    pub id: i64,
    /// Values already checked against the dataset's field types.
    pub values: BTreeMap<String, serde_json::Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl MetadataInstance {
    /// The 0-based `instance` index Mydex calls use.
    pub fn index(&self) -> i64 {
        self.id - 1
    }
}

/// Whether an access was a read or a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AccessAction {
    Read,
    Write,
}

/// Whether an access was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AccessDecision {
    Allowed,
    Refused,
}

/// One entry of the access log: who touched what of a member, under which agreement. Never
/// holds values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccessLogEntry {
    pub at: i64,
    /// None for a refusal that named no member (an SQL query refused before planning).
    pub member: Option<MemberId>,
    pub subscriber_id: SubscriberId,
    pub connection_id: ConnectionId,
    pub agreement_version: Option<AgreementVersion>,
    pub purpose: String,
    pub dataset: String,
    pub action: AccessAction,
    pub rows: i64,
    pub decision: AccessDecision,
}

impl AccessLogEntry {
    /// Whether the two entries belong to one event: they differ at most in member, agreement
    /// version and rows (one request's read of one dataset across members).
    pub fn same_event(&self, other: &AccessLogEntry) -> bool {
        (self.at, self.subscriber_id, self.connection_id, &self.purpose, &self.dataset, self.action, self.decision)
            == (
                other.at,
                other.subscriber_id,
                other.connection_id,
                &other.purpose,
                &other.dataset,
                other.action,
                other.decision,
            )
    }
}

/// A Parquet file in object storage holding rows of one dataset: some of one member's
/// (a settled file, under the member's prefix), or, for at most the hot window, several
/// members' rows sorted by member (a hot file, under the dataset's hot prefix: a flush
/// writes one per dataset, and compaction settles them into per-member files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParquetFile {
    pub environment: DataEnvironment,
    pub dataset: DatasetName,
    /// Whose rows it holds; `None` for a hot file.
    pub member: Option<MemberId>,
    /// The object path, relative to the object store's root.
    pub path: String,
    pub rows: i64,
    pub size_bytes: i64,
    /// Event-time range (epoch seconds) and row-id range of the rows it holds (in a hot
    /// file, over all its members).
    pub min_event_time: i64,
    pub max_event_time: i64,
    pub min_id: i64,
    pub max_id: i64,
    /// The newest row version in the file.
    pub max_version: i64,
}
