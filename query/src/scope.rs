//! From agreements to what one dataset shows: fail-closed, so a dataset or field absent
//! from the agreement, a dataset not offered in the connection's environment, or a revoked
//! agreement yields nothing.

use std::collections::HashMap;
use std::sync::Arc;

use catalog::{
    AgreementScope, AgreementStatus, AgreementVersion, Connection, DataEnvironment, Dataset, DatasetGrant, Field,
    MemberId, MemberVersions,
};
use ingest::schema::{DatasetSchema, INSTANCE, MEMBER_UID, ROW_ID};

use crate::QueryError;

/// What one request may read of one transactional dataset: the columns its table shows
/// (`member_uid`, `instance`, `id` and the granted fields, the event time only if granted)
/// and the members whose rows it holds, each with the columns that member's agreement grants.
#[derive(Debug, Clone)]
pub struct TableScope {
    pub schema: Arc<DatasetSchema>,
    pub env: DataEnvironment,
    /// Stored-schema index of each visible column, in table order.
    pub columns: Vec<usize>,
    /// Members with an active agreement, and the revision each approved (shared with the
    /// authorization cache, not copied per request).
    members: Arc<MemberVersions>,
    /// Per approved revision, what it grants of the visible columns (a revision without an
    /// entry grants nothing).
    grants: HashMap<AgreementVersion, Access>,
}

/// What a member's agreement lets the table show of that member's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Nothing: the member's rows are not in the table.
    Hidden,
    /// Every visible column.
    All,
    /// The visible columns marked `true`; the others read as NULL for this member.
    Masked(Arc<[bool]>),
}

impl TableScope {
    /// Connection-wide (the SQL door): the columns of the connection's serving revision,
    /// over every member with an active agreement (`members`: member → approved version).
    /// `None` if the serving revision grants no field of the dataset or the dataset is not
    /// offered in the connection's environment.
    pub fn for_connection(
        connection: &Connection,
        members: Arc<MemberVersions>,
        schema: Arc<DatasetSchema>,
    ) -> Option<TableScope> {
        let env: DataEnvironment = connection.environment.into();
        let serving = connection.approved()?.terms.datasets.get(&schema.dataset.name)?;
        let columns = columns(&schema, &granted_fields(&schema.dataset, serving, env)?);
        let mut table = TableScope { schema, env, columns, members, grants: HashMap::new() };
        let grants = connection
            .revisions
            .iter()
            .map(|r| {
                (r.version, r.terms.datasets.get(&table.schema.dataset.name).map_or(Access::Hidden, |g| table.mask(g)))
            })
            .collect();
        table.grants = grants;
        Some(table)
    }

    /// One member under one agreement (the Mydex door): the columns that agreement grants.
    pub fn for_agreement(scope: &AgreementScope, schema: Arc<DatasetSchema>) -> Result<TableScope, QueryError> {
        let fields: Vec<&Field> = readable(scope, &schema.dataset)?.fields.into_iter().map(|(f, _)| f).collect();
        let columns = columns(&schema, &fields);
        let env: DataEnvironment = scope.environment.into();
        let version = scope.agreement.version;
        let members = Arc::new(MemberVersions::from_iter([(scope.agreement.member, version)]));
        Ok(TableScope { schema, env, columns, members, grants: HashMap::from([(version, Access::All)]) })
    }

    /// Whether the table holds `member`'s rows, and with which columns.
    pub fn access(&self, member: MemberId) -> Access {
        self.members.get(member).and_then(|version| self.grants.get(&version)).cloned().unwrap_or(Access::Hidden)
    }

    /// The members the table holds; `wanted` lists the only candidates when the query names
    /// its members.
    pub fn members(&self, wanted: Option<&std::collections::BTreeSet<i64>>) -> Vec<MemberId> {
        let held = |m: &MemberId| self.access(*m) != Access::Hidden;
        match wanted {
            Some(ids) => ids.iter().filter_map(|id| MemberId::new(*id).ok()).filter(held).collect(),
            None => self.members.members().filter(held).collect(),
        }
    }

    /// Which visible columns `grant` allows; [`Access::Hidden`] when it allows no data field.
    fn mask(&self, grant: &DatasetGrant) -> Access {
        let stored = &self.schema.stored;
        let mask: Vec<bool> = self
            .columns
            .iter()
            .enumerate()
            .map(|(position, &i)| position < 3 || grant.read.contains(stored.field(i).name()))
            .collect();
        if !mask.iter().skip(3).any(|m| *m) {
            Access::Hidden
        } else if mask.iter().all(|m| *m) {
            Access::All
        } else {
            Access::Masked(mask.into())
        }
    }

    /// The name of the event-time column, if the table shows it.
    pub fn event_time(&self) -> Option<&str> {
        let i = self.schema.event_time_stored;
        self.columns.contains(&i).then(|| self.schema.stored.field(i).name().as_str())
    }
}

/// The data fields of `dataset` that `grant` lets read in `env`; none (fail closed) when
/// the dataset is not offered there or the grant reads none of its fields.
fn granted_fields<'a>(dataset: &'a Dataset, grant: &DatasetGrant, env: DataEnvironment) -> Option<Vec<&'a Field>> {
    if !ingest::validate::dataset_offered(dataset, env) {
        return None;
    }
    let fields: Vec<&Field> = dataset.data_fields().filter(|f| grant.can_read(&f.name)).collect();
    (!fields.is_empty()).then_some(fields)
}

/// Stored-schema indexes of `member_uid`, `instance`, `id`, then of `fields`.
fn columns(schema: &DatasetSchema, fields: &[&Field]) -> Vec<usize> {
    let stored = &schema.stored;
    let index = |name: &str| stored.index_of(name).expect("a stored column");
    [MEMBER_UID, INSTANCE, ROW_ID].into_iter().map(index).chain(fields.iter().map(|f| index(f.name.as_str()))).collect()
}

/// The fields of one dataset a caller may read, each with whether it may also write it.
#[derive(Debug)]
pub struct Readable<'a> {
    pub dataset: &'a Dataset,
    pub fields: Vec<(&'a Field, bool)>,
}

/// What `scope` lets its connection read of `dataset`, in the dataset's field order.
pub fn readable<'a>(scope: &AgreementScope, dataset: &'a Dataset) -> Result<Readable<'a>, QueryError> {
    if scope.agreement.status != AgreementStatus::Active {
        return Err(QueryError::Forbidden);
    }
    let grant = scope.grant(&dataset.name).ok_or(QueryError::Forbidden)?;
    let fields = granted_fields(dataset, grant, scope.environment.into()).ok_or(QueryError::Forbidden)?;
    Ok(Readable { dataset, fields: fields.into_iter().map(|f| (f, grant.can_write(&f.name))).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::{
        Agreement, ConId, ConnectionEnvironment, ConnectionId, DatasetEnvironment, DatasetGrant, DatasetKind,
        FieldType, MemberId, SubscriberId,
    };

    fn dataset(env: DatasetEnvironment) -> Dataset {
        let field = |n: &str| Field {
            name: n.parse().unwrap(),
            title: n.into(),
            description: String::new(),
            documented_type: String::new(),
            data_type: FieldType::Text,
            max_bytes: 10,
        };
        Dataset {
            name: "ds_home".parse().unwrap(),
            title: "Home".into(),
            description: String::new(),
            kind: DatasetKind::Metadata,
            environment: env,
            fields: vec![field("a"), field("b"), field("c")],
            event_time_field: None,
        }
    }

    fn scope(read: &[&str], write: &[&str], status: AgreementStatus, env: ConnectionEnvironment) -> AgreementScope {
        let mut terms = catalog::conformance::terms("t", &[]);
        let grant = DatasetGrant {
            read: read.iter().map(|s| s.to_string()).collect(),
            write: write.iter().map(|s| s.to_string()).collect(),
        };
        terms.datasets.insert("ds_home".parse().unwrap(), grant);
        let member = MemberId::new(1).unwrap();
        AgreementScope {
            agreement: Agreement {
                member,
                connection_id: ConnectionId::new(1).unwrap(),
                con_id: ConId { member, nid: catalog::Nid::new(1).unwrap() },
                version: catalog::AgreementVersion::FIRST,
                status,
                terms,
                approved_at: 0,
                revoked_at: None,
            },
            subscriber_id: SubscriberId::new(1).unwrap(),
            environment: env,
        }
    }

    #[test]
    fn only_granted_fields_are_readable() {
        let d = dataset(DatasetEnvironment::Production);
        let s = scope(&["a", "c"], &["c"], AgreementStatus::Active, ConnectionEnvironment::Live);
        let r = readable(&s, &d).unwrap();
        let names: Vec<_> = r.fields.iter().map(|(f, w)| (f.name.as_str(), *w)).collect();
        assert_eq!(names, [("a", false), ("c", true)]);
    }

    #[test]
    fn fails_closed() {
        let live = ConnectionEnvironment::Live;
        let d = dataset(DatasetEnvironment::Production);
        assert!(readable(&scope(&[], &["a"], AgreementStatus::Active, live), &d).is_err(), "write-only");
        assert!(readable(&scope(&["a"], &[], AgreementStatus::Revoked, live), &d).is_err(), "revoked");
        let sandbox_only = dataset(DatasetEnvironment::Sandbox);
        assert!(readable(&scope(&["a"], &[], AgreementStatus::Active, live), &sandbox_only).is_err());
        let s = scope(&["a"], &[], AgreementStatus::Active, ConnectionEnvironment::Sandbox);
        assert!(readable(&s, &sandbox_only).is_ok());
        let mut other = dataset(DatasetEnvironment::Production);
        other.name = "ds_passport".parse().unwrap();
        assert!(readable(&scope(&["a"], &[], AgreementStatus::Active, live), &other).is_err(), "ungranted dataset");
    }
}
