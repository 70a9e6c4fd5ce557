//! From an agreement to what one dataset shows: fail-closed, so a dataset or field absent
//! from the agreement, a dataset not offered in the connection's environment, or a revoked
//! agreement yields nothing.

use catalog::{AgreementScope, AgreementStatus, DataEnvironment, Dataset, DatasetEnvironment, Field};

/// Why a read was refused.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The agreement does not grant reading this dataset or field.
    #[error("the agreement does not permit this read")]
    Forbidden,
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
    let env: DataEnvironment = scope.environment.into();
    if dataset.environment == DatasetEnvironment::Sandbox && env == DataEnvironment::Production {
        return Err(QueryError::Forbidden);
    }
    let grant = scope.grant(&dataset.name).ok_or(QueryError::Forbidden)?;
    let fields: Vec<_> = dataset.data_fields().filter(|f| grant.can_read(&f.name)).map(|f| (f, grant.can_write(&f.name))).collect();
    if fields.is_empty() {
        return Err(QueryError::Forbidden);
    }
    Ok(Readable { dataset, fields })
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::{
        Agreement, ConId, ConnectionEnvironment, ConnectionId, DatasetGrant, DatasetKind, FieldType, MemberId, SubscriberId,
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
                version: 1,
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
