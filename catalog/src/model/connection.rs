//! Dedicated connections, their revisions and lifecycle, and members' agreements.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{AgreementVersion, ConId, ConnectionId, DatasetName, FieldName, MemberId, Nid, SubscriberId};

/// What one revision of a connection asks for: who, why, and which fields in which direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConnectionTerms {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub company_name: String,
    #[serde(default)]
    pub contact_name: String,
    pub contact_email: String,
    #[serde(default)]
    pub contact_phone: String,
    #[serde(default)]
    pub logo_url: String,
    #[serde(default)]
    pub callback_url: String,
    /// Datasets and fields, per direction. On input `"*"` stands for every field of the
    /// dataset; it is expanded when the terms are saved.
    pub datasets: BTreeMap<DatasetName, DatasetGrant>,
    /// Use cases (purposes) the data serves, as shown to members and in the access log.
    pub purposes: Vec<String>,
    pub gdpr: GdprDeclaration,
}

/// Fields of one dataset a connection may read (collection) and write (delivery).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DatasetGrant {
    #[serde(default)]
    pub read: BTreeSet<String>,
    #[serde(default)]
    pub write: BTreeSet<String>,
}

impl DatasetGrant {
    pub fn can_read(&self, field: &FieldName) -> bool {
        self.read.contains(field.as_str())
    }
    pub fn can_write(&self, field: &FieldName) -> bool {
        self.write.contains(field.as_str())
    }
}

/// The GDPR declaration of a connection: the lawful basis and what the subscriber declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GdprDeclaration {
    /// One of `consent`, `contract`, `legal_obligation`, `vital_interests`, `public_task`,
    /// `legitimate_interests` (GDPR art. 6(1)).
    pub lawful_basis: String,
    #[serde(default)]
    pub statement: String,
}

/// The lawful bases of GDPR art. 6(1).
pub const LAWFUL_BASES: [&str; 6] =
    ["consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests"];

/// State of one revision of a connection's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RevisionState {
    /// Being edited by the subscriber.
    Draft,
    /// Submitted for the operator's approval.
    Requested,
    /// Approved by the operator; the newest approved revision is the one that serves.
    Approved,
    /// An approved revision replaced by a newer approved one; members who approved it stay
    /// on it until they approve the newer one.
    Superseded,
}

impl RevisionState {
    pub fn as_str(self) -> &'static str {
        match self {
            RevisionState::Draft => "draft",
            RevisionState::Requested => "requested",
            RevisionState::Approved => "approved",
            RevisionState::Superseded => "superseded",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "draft" => RevisionState::Draft,
            "requested" => RevisionState::Requested,
            "approved" => RevisionState::Approved,
            "superseded" => RevisionState::Superseded,
            _ => return None,
        })
    }
}

/// The environment a connection serves in: approved connections are deployed on the sandbox
/// and see only sandbox data; live ones see only production data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ConnectionEnvironment {
    Sandbox,
    Live,
}

impl ConnectionEnvironment {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionEnvironment::Sandbox => "sandbox",
            ConnectionEnvironment::Live => "live",
        }
    }
}

/// The connection's lifecycle state as docs/api.md names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ConnectionStatus {
    Draft,
    Requested,
    Approved,
    Live,
}

/// One revision of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Revision {
    pub version: AgreementVersion,
    pub state: RevisionState,
    pub terms: ConnectionTerms,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A dedicated connection with all its revisions (the "one page" view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Connection {
    pub id: ConnectionId,
    pub subscriber_id: SubscriberId,
    pub status: ConnectionStatus,
    pub environment: ConnectionEnvironment,
    /// Issued at the first approval.
    pub nid: Option<Nid>,
    pub promote_requested: bool,
    /// The revision that serves (the newest approved one).
    pub approved_version: Option<AgreementVersion>,
    /// Oldest first.
    pub revisions: Vec<Revision>,
    pub created_at: i64,
}

impl Connection {
    pub fn revision(&self, version: AgreementVersion) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.version == version)
    }
    pub fn latest(&self) -> &Revision {
        self.revisions.last().expect("a connection always has a revision")
    }
    /// The serving revision, if the connection was ever approved.
    pub fn approved(&self) -> Option<&Revision> {
        self.approved_version.and_then(|v| self.revision(v))
    }
    /// A newer revision being prepared while the approved one serves.
    pub fn pending(&self) -> Option<&Revision> {
        let latest = self.latest();
        matches!(latest.state, RevisionState::Draft | RevisionState::Requested)
            .then_some(latest)
            .filter(|_| self.approved_version.is_some())
    }
}

/// Whether a member's consent is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AgreementStatus {
    Active,
    Revoked,
}

/// A member's data sharing agreement with one connection, at the version they approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Agreement {
    pub member: MemberId,
    pub connection_id: ConnectionId,
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "1-2"))]
    pub con_id: ConId,
    /// The connection revision the member approved; the terms in force.
    pub version: AgreementVersion,
    pub status: AgreementStatus,
    pub terms: ConnectionTerms,
    pub approved_at: i64,
    pub revoked_at: Option<i64>,
}

/// What a successful member-connection credential check yields: everything a request needs
/// to decide what it may touch, read once when the request starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgreementScope {
    pub agreement: Agreement,
    pub subscriber_id: SubscriberId,
    pub environment: ConnectionEnvironment,
}

impl AgreementScope {
    pub fn grant(&self, dataset: &DatasetName) -> Option<&DatasetGrant> {
        self.agreement.terms.datasets.get(dataset)
    }
    /// The purposes declared on the connection, joined for the access log.
    pub fn purpose(&self) -> String {
        self.agreement.terms.purposes.join("; ")
    }
}
