//! One behaviour suite for every catalog backend: the unit tests run it against SQLite
//! and, when `TROVE_TEST_POSTGRES_URL` is set, against PostgreSQL.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{
    AccessAction, AccessDecision, AccessLogEntry, AgreementStatus, Bearer, Catalog, CatalogError, ConnectionStatus,
    ConnectionTerms, DataEnvironment, Dataset, DatasetEnvironment, DatasetGrant, DatasetKind, DatasetName, ErrorKind,
    Field, FieldType, GdprDeclaration, MemberId, ParquetFile, RevisionState, Secret, SubscriberId,
};

/// A PostgreSQL database of its own for one test, created on the server at `admin_url`.
pub async fn fresh_postgres_database(admin_url: &str) -> String {
    use sqlx::Executor;
    let name = format!("trove_test_{}", &Secret::generate().expose()[..16]);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(admin_url).await.expect("connect to PostgreSQL");
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("create test database");
    let (base, _) = admin_url.rsplit_once('/').expect("URL with a database");
    format!("{base}/{name}")
}

/// Terms granting read and write of every field of `datasets`.
pub fn terms(name: &str, datasets: &[&str]) -> ConnectionTerms {
    ConnectionTerms {
        name: name.into(),
        description: "test connection".into(),
        company_name: "Test Co".into(),
        contact_name: "Ann Test".into(),
        contact_email: "ann@test.example".into(),
        contact_phone: String::new(),
        logo_url: String::new(),
        callback_url: String::new(),
        datasets: datasets
            .iter()
            .map(|d| (d.parse().unwrap(), DatasetGrant { read: ["*".into()].into(), write: ["*".into()].into() }))
            .collect(),
        purposes: vec!["testing".into()],
        gdpr: GdprDeclaration { lawful_basis: "consent".into(), statement: "we test".into() },
    }
}

/// Agreement version `n`.
fn v(n: i64) -> crate::AgreementVersion {
    crate::AgreementVersion::new(n).unwrap()
}

fn kind<T: std::fmt::Debug>(r: Result<T, CatalogError>) -> ErrorKind {
    r.expect_err("expected a refusal").kind()
}

/// Runs every check against `catalog` (a fresh, empty store).
pub async fn run_all(catalog: &Catalog) {
    builtin_datasets(catalog).await;
    operator_datasets(catalog).await;
    admin_token(catalog).await;
    members_and_subscribers(catalog).await;
    connection_lifecycle(catalog).await;
    agreements(catalog).await;
    bulk_members_and_agreements(catalog).await;
    approvals_together(catalog).await;
    metadata_instances(catalog).await;
    access_log(catalog).await;
    manifest(catalog).await;
}

async fn builtin_datasets(c: &Catalog) {
    let all = c.datasets().await.unwrap();
    assert_eq!(all.len(), 61);
    let energy = c.dataset(&"ds_energy_consumption".parse().unwrap()).await.unwrap();
    assert_eq!(energy.kind, DatasetKind::Transactional);
    assert_eq!(energy.environment, DatasetEnvironment::Production);
    let home = c.dataset(&"ds_home".parse().unwrap()).await.unwrap();
    assert_eq!(home.kind, DatasetKind::Metadata);
    assert!(home.field("field_home_postcode").is_some());
    assert_eq!(kind(c.dataset(&"ds_nope".parse().unwrap()).await), ErrorKind::NotFound);
}

async fn operator_datasets(c: &Catalog) {
    let name: DatasetName = "ds_test_readings".parse().unwrap();
    let field = |n: &str, t: FieldType| Field {
        name: n.parse().unwrap(),
        title: n.into(),
        description: String::new(),
        documented_type: String::new(),
        data_type: t,
        max_bytes: 1024,
    };
    let mut d = Dataset {
        name: name.clone(),
        title: "Test readings".into(),
        description: "d".into(),
        kind: DatasetKind::Transactional,
        environment: DatasetEnvironment::Production,
        fields: vec![field("reading", FieldType::Float)],
        event_time_field: Some("reading_timestamp".parse().unwrap()),
    };
    assert_eq!(kind(c.create_dataset(d.clone()).await), ErrorKind::Invalid, "event time must be a field");
    d.fields.push(field("reading_timestamp", FieldType::Timestamp));
    let created = c.create_dataset(d.clone()).await.unwrap();
    assert_eq!(created.environment, DatasetEnvironment::Sandbox, "new datasets start in the sandbox");
    assert_eq!(kind(c.create_dataset(d).await), ErrorKind::Conflict);
    assert_eq!(c.promote_dataset(&name).await.unwrap().environment, DatasetEnvironment::Production);
    assert_eq!(kind(c.promote_dataset(&name).await), ErrorKind::Conflict);
}

async fn admin_token(c: &Catalog) {
    let first = c.ensure_admin_token(None).await.unwrap().expect("generated on first start");
    assert!(c.ensure_admin_token(None).await.unwrap().is_none(), "generated once");
    assert_eq!(c.bearer(first.expose()).await.unwrap().1, Some(Bearer::Operator));
    let configured = Secret::from_plaintext("operator-chosen-token-0123456789");
    c.ensure_admin_token(Some(&configured)).await.unwrap();
    assert_eq!(
        c.bearer(configured.expose()).await.unwrap(),
        (c.generation().await.unwrap(), Some(Bearer::Operator)),
        "TROVE_ADMIN_TOKEN wins"
    );
    assert_eq!(c.bearer(first.expose()).await.unwrap().1, None);
    assert!(c.is_initialized().await.unwrap());
}

async fn members_and_subscribers(c: &Catalog) {
    let (m, secret) = c.create_member("alice").await.unwrap();
    assert_eq!(c.bearer(secret.expose()).await.unwrap().1, Some(Bearer::Member(m.uid)));
    assert_eq!(c.bearer("wrong").await.unwrap().1, None);
    assert_eq!(kind(c.create_member("alice").await), ErrorKind::Conflict);
    assert_eq!(kind(c.create_member("bad name").await), ErrorKind::Invalid);

    let (s, creds) = c.create_subscriber("Acme Energy").await.unwrap();
    assert_eq!(kind(c.create_subscriber("Acme Energy").await), ErrorKind::Conflict);
    let hour = Duration::from_secs(3600);
    let token = c.issue_access_token(&creds.client_id, creds.client_secret.expose(), hour).await.unwrap();
    assert_eq!(c.authenticate_subscriber_token(token.expose()).await.unwrap(), s.id);
    assert!(
        matches!(c.bearer(token.expose()).await.unwrap().1, Some(Bearer::Subscriber { id, expires_at }) if id == s.id && expires_at > 0)
    );
    assert_eq!(kind(c.issue_access_token(&creds.client_id, "wrong", hour).await), ErrorKind::Unauthenticated);
    assert_eq!(
        kind(c.issue_access_token("nobody", creds.client_secret.expose(), hour).await),
        ErrorKind::Unauthenticated
    );
    let expired = c.issue_access_token(&creds.client_id, creds.client_secret.expose(), Duration::ZERO).await.unwrap();
    assert_eq!(kind(c.authenticate_subscriber_token(expired.expose()).await), ErrorKind::Unauthenticated);
    assert_eq!(c.bearer(expired.expose()).await.unwrap().1, None);
    assert_eq!(c.bearer(creds.client_secret.expose()).await.unwrap().1, None);
    assert_eq!(c.authenticate_api_key(creds.api_key.expose()).await.unwrap(), s.id);
    assert_eq!(kind(c.authenticate_api_key(creds.client_secret.expose()).await), ErrorKind::Unauthenticated);
}

async fn subscriber(c: &Catalog, name: &str) -> SubscriberId {
    c.create_subscriber(name).await.unwrap().0.id
}

async fn connection_lifecycle(c: &Catalog) {
    let sub = subscriber(c, "Lifecycle Ltd").await;
    let conn = c.create_connection(sub, terms("Meter feed", &["ds_energy_consumption"])).await.unwrap();
    assert_eq!(conn.status, ConnectionStatus::Draft);
    let grant = &conn.latest().terms.datasets[&"ds_energy_consumption".parse::<DatasetName>().unwrap()];
    assert!(grant.read.contains("field_energy_reading_value") && !grant.read.contains("*"), "* is expanded");
    assert!(!grant.read.contains("id"), "reserved names are not grantable fields");

    let mut bad = terms("x", &["ds_energy_consumption"]);
    bad.datasets.values_mut().next().unwrap().read.insert("no_such_field".into());
    assert_eq!(kind(c.create_connection(sub, bad).await), ErrorKind::Invalid);
    assert_eq!(kind(c.create_connection(sub, terms("x", &["ds_nope"])).await), ErrorKind::Invalid);

    // draft -> approve is refused; draft -> requested -> (edit) draft -> requested -> approved
    assert_eq!(kind(c.approve_connection(conn.id, None).await), ErrorKind::Conflict);
    assert_eq!(kind(c.request_promotion(conn.id).await), ErrorKind::Conflict);
    let conn = c.submit_connection(conn.id).await.unwrap();
    assert_eq!(conn.status, ConnectionStatus::Requested);
    assert_eq!(kind(c.submit_connection(conn.id).await), ErrorKind::Conflict);
    let conn = c.edit_connection(conn.id, terms("Meter feed v1b", &["ds_energy_consumption"])).await.unwrap();
    assert_eq!(conn.status, ConnectionStatus::Draft, "editing a requested connection returns it to draft");
    assert_eq!(
        (conn.revisions.len(), conn.latest().version),
        (1, v(2)),
        "under a new version: the operator reviewed version 1"
    );
    let conn = c.edit_connection(conn.id, terms("Meter feed v1b", &["ds_energy_consumption"])).await.unwrap();
    assert_eq!(conn.latest().version, v(2), "a draft is edited in place");
    c.submit_connection(conn.id).await.unwrap();
    assert_eq!(
        kind(c.approve_connection(conn.id, Some(v(1))).await),
        ErrorKind::Conflict,
        "the reviewed version was edited since"
    );
    let (conn, key) = c.approve_connection(conn.id, Some(v(2))).await.unwrap();
    assert_eq!(conn.status, ConnectionStatus::Approved);
    let (nid, key) = (conn.nid.expect("nid issued"), key.expect("key issued"));
    assert_eq!(c.authenticate_connection(nid, key.expose()).await.unwrap().id, conn.id);
    assert_eq!(kind(c.authenticate_connection(nid, "wrong").await), ErrorKind::Unauthenticated);
    assert_eq!(kind(c.approve_connection(conn.id, None).await), ErrorKind::Conflict);

    // Editing an approved connection opens a new draft revision; v1 keeps serving.
    let conn = c
        .edit_connection(conn.id, terms("Meter feed v2", &["ds_energy_consumption", "ds_browsing_history"]))
        .await
        .unwrap();
    assert_eq!((conn.status, conn.approved_version, conn.revisions.len()), (ConnectionStatus::Approved, Some(v(2)), 2));
    assert_eq!(conn.pending().unwrap().state, RevisionState::Draft);
    assert_eq!(conn.approved().unwrap().terms.name, "Meter feed v1b");
    c.submit_connection(conn.id).await.unwrap();
    let (conn, second_key) = c.approve_connection(conn.id, None).await.unwrap();
    assert!(second_key.is_none(), "later approvals keep the nid and key");
    assert_eq!((conn.approved_version, conn.nid), (Some(v(3)), Some(nid)));
    assert_eq!(conn.revision(v(2)).unwrap().state, RevisionState::Superseded);

    // approved -> (promote-request) -> live
    assert_eq!(kind(c.promote_connection(conn.id).await), ErrorKind::Conflict, "no request yet");
    assert!(c.request_promotion(conn.id).await.unwrap().promote_requested);
    let conn = c.promote_connection(conn.id).await.unwrap();
    assert_eq!(conn.status, ConnectionStatus::Live);
    assert_eq!(kind(c.promote_connection(conn.id).await), ErrorKind::Conflict);

    let copy = c.clone_connection(conn.id).await.unwrap();
    assert_eq!((copy.status, copy.nid, copy.subscriber_id), (ConnectionStatus::Draft, None, sub));
    assert_eq!(copy.latest().terms.datasets, conn.latest().terms.datasets);
    assert_eq!(c.connections(Some(sub)).await.unwrap().len(), 2);
}

async fn approved_connection(c: &Catalog, sub: SubscriberId, datasets: &[&str]) -> crate::Connection {
    let conn = c.create_connection(sub, terms("Feed", datasets)).await.unwrap();
    c.submit_connection(conn.id).await.unwrap();
    c.approve_connection(conn.id, None).await.unwrap().0
}

async fn agreements(c: &Catalog) {
    let sub = subscriber(c, "Agreements Ltd").await;
    let other = subscriber(c, "Someone Else").await;
    let (member, _) = c.create_member("bob").await.unwrap();
    let draft = c.create_connection(sub, terms("Draft", &["ds_home"])).await.unwrap();
    assert_eq!(kind(c.approve_agreement(member.uid, draft.id).await), ErrorKind::Conflict, "a draft cannot be agreed");

    let conn = approved_connection(c, sub, &["ds_home"]).await;
    let (agreement, key) = c.approve_agreement(member.uid, conn.id).await.unwrap();
    assert_eq!((agreement.version, agreement.status), (v(1), AgreementStatus::Active));
    let con_id = agreement.con_id;
    assert_eq!(con_id.to_string(), format!("{}-{}", member.uid, conn.nid.unwrap()));
    let scope = c.agreement_scope(sub, con_id, key.expose()).await.unwrap();
    assert!(scope.grant(&"ds_home".parse().unwrap()).is_some());
    assert_eq!(kind(c.agreement_scope(sub, con_id, "wrong").await), ErrorKind::Unauthenticated);
    assert_eq!(
        kind(c.agreement_scope(other, con_id, key.expose()).await),
        ErrorKind::Unauthenticated,
        "forged by another subscriber"
    );

    // A new revision does not widen access until the member approves it.
    c.edit_connection(conn.id, terms("Feed v2", &["ds_home", "ds_passport"])).await.unwrap();
    c.submit_connection(conn.id).await.unwrap();
    c.approve_connection(conn.id, None).await.unwrap();
    let scope = c.agreement_scope(sub, con_id, key.expose()).await.unwrap();
    assert_eq!(scope.agreement.version, v(1));
    assert!(scope.grant(&"ds_passport".parse().unwrap()).is_none());
    let (agreement, new_key) = c.approve_agreement(member.uid, conn.id).await.unwrap();
    assert_eq!(agreement.version, v(2));
    assert_eq!(
        kind(c.agreement_scope(sub, con_id, key.expose()).await),
        ErrorKind::Unauthenticated,
        "old key replaced"
    );
    let scope = c.agreement_scope(sub, con_id, new_key.expose()).await.unwrap();
    assert!(scope.grant(&"ds_passport".parse().unwrap()).is_some());

    // Revocation stops the key at once, and moves the generation caches check.
    let generation = c.generation().await.unwrap();
    assert_eq!(c.revoke_agreement(member.uid, conn.id).await.unwrap().status, AgreementStatus::Revoked);
    assert!(c.generation().await.unwrap() > generation);
    assert_eq!(kind(c.agreement_scope(sub, con_id, new_key.expose()).await), ErrorKind::Unauthenticated);
    assert_eq!(kind(c.revoke_agreement(member.uid, conn.id).await), ErrorKind::NotFound);
    let listed = c.agreements(member.uid).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0.status, AgreementStatus::Revoked);
}

async fn bulk_members_and_agreements(c: &Catalog) {
    // More than one multi-row INSERT's worth, so the pieces and their order are exercised.
    let names: Vec<String> = (0..2_500).map(|i| format!("bulk{i}")).collect();
    let created = c.create_members(&names).await.unwrap();
    assert_eq!(created.iter().map(|(m, _)| m.mydexid.as_str()).collect::<Vec<_>>(), names, "in the order given");
    for (m, secret) in [&created[0], &created[1_234], &created[2_499]] {
        assert_eq!(c.bearer(secret.expose()).await.unwrap().1, Some(Bearer::Member(m.uid)));
    }
    let before = c.members().await.unwrap().len();
    for refused in [vec!["fresh1".to_owned(), "bulk7".to_owned()], vec!["twice".to_owned(), "twice".to_owned()]] {
        assert_eq!(kind(c.create_members(&refused).await), ErrorKind::Conflict);
    }
    assert_eq!(kind(c.create_members(&["ok".to_owned(), "not ok".to_owned()]).await), ErrorKind::Invalid);
    assert_eq!(c.members().await.unwrap().len(), before, "all or none");

    let sub = subscriber(c, "Bulk Ltd").await;
    let conn = approved_connection(c, sub, &["ds_home"]).await;
    let uids: Vec<MemberId> = created.iter().map(|(m, _)| m.uid).collect();
    let generation = c.generation().await.unwrap();
    let approved = c.approve_agreements(&uids, conn.id).await.unwrap();
    assert_eq!(c.generation().await.unwrap(), generation + 1, "one bump for them all");
    assert_eq!(approved.len(), uids.len());
    let (agreement, key) = &approved[1_000];
    assert_eq!((agreement.member, agreement.version), (uids[1_000], v(1)));
    let scope = c.agreement_scope(sub, agreement.con_id, key.expose()).await.unwrap();
    assert_eq!(scope.agreement.member, uids[1_000]);
    assert_eq!(c.active_agreements(conn.id).await.unwrap().len(), uids.len());
    let missing = MemberId::new(9_999_999).unwrap();
    assert_eq!(kind(c.approve_agreements(&[uids[0], missing], conn.id).await), ErrorKind::NotFound);

    // What changed after a generation: only the rows changed, each as it stands now.
    let since = c.generation().await.unwrap();
    assert_eq!(c.agreement_changes(conn.id, since).await.unwrap(), [], "nothing yet");
    c.revoke_agreement(uids[7], conn.id).await.unwrap();
    c.approve_agreements(&uids[2_000..2_002], conn.id).await.unwrap();
    let mut changes = c.agreement_changes(conn.id, since).await.unwrap();
    changes.sort();
    assert_eq!(changes, [(uids[7], None), (uids[2_000], Some(v(1))), (uids[2_001], Some(v(1)))]);
    assert_eq!(c.agreement_changes(conn.id, c.generation().await.unwrap()).await.unwrap(), []);
}

/// Approvals made at once commit together (`store/approvals.rs`) and answer as if alone.
async fn approvals_together(c: &Catalog) {
    let names: Vec<String> = (0..40).map(|i| format!("together{i}")).collect();
    let members: Vec<MemberId> = c.create_members(&names).await.unwrap().into_iter().map(|(m, _)| m.uid).collect();
    let sub = subscriber(c, "Together Ltd").await;
    let conn = approved_connection(c, sub, &["ds_home"]).await;
    let missing = MemberId::new(9_999_998).unwrap();
    let approvals: Vec<_> = members
        .iter()
        .chain([&missing])
        .map(|m| {
            let (c, m, id) = (c.clone(), *m, conn.id);
            tokio::spawn(async move { c.approve_agreement(m, id).await })
        })
        .collect();
    let mut answers = Vec::new();
    for approval in approvals {
        answers.push(approval.await.unwrap());
    }
    let refused: Vec<ErrorKind> = answers.iter().filter_map(|a| a.as_ref().err().map(CatalogError::kind)).collect();
    assert_eq!(refused, [ErrorKind::NotFound], "only the member that does not exist is refused");
    for (member, (agreement, key)) in members.iter().zip(answers.iter().flatten()) {
        assert_eq!(agreement.member, *member, "each answer is its own member's");
        let scope = c.agreement_scope(sub, agreement.con_id, key.expose()).await.unwrap();
        assert_eq!(scope.agreement.member, *member, "and its key works");
    }
    assert_eq!(c.active_agreements(conn.id).await.unwrap().len(), members.len());
}

async fn metadata_instances(c: &Catalog) {
    let (member, _) = c.create_member("carol").await.unwrap();
    let ds: DatasetName = "ds_bank_account".parse().unwrap();
    let prod = DataEnvironment::Production;
    let values = |name: &str| BTreeMap::from([("field_ba_account_name".to_string(), serde_json::json!(name))]);
    let first = c.create_metadata_instance(member.uid, &ds, prod, values("Current")).await.unwrap();
    let second = c.create_metadata_instance(member.uid, &ds, prod, values("Savings")).await.unwrap();
    assert_eq!((first.id, second.id, second.index()), (1, 2, 1));
    let mut update = values("Joint");
    update.insert("field_ba_sort_code".into(), serde_json::json!("01-02-03"));
    let updated = c.update_metadata_instance(member.uid, &ds, prod, 1, update).await.unwrap();
    assert_eq!(updated.values.len(), 2);
    let all = c.metadata_instances(member.uid, &ds, prod).await.unwrap();
    assert_eq!(all[0].values["field_ba_account_name"], "Joint");
    assert_eq!(all[1].values["field_ba_account_name"], "Savings");
    assert_eq!(kind(c.update_metadata_instance(member.uid, &ds, prod, 9, values("x")).await), ErrorKind::NotFound);
    assert!(
        c.metadata_instances(member.uid, &ds, DataEnvironment::Sandbox).await.unwrap().is_empty(),
        "sandbox is separate"
    );
}

async fn access_log(c: &Catalog) {
    let sub = subscriber(c, "Log Readers").await;
    let conn = approved_connection(c, sub, &["ds_home"]).await;
    let (member, _) = c.create_member("dave").await.unwrap();
    let entry = |decision| AccessLogEntry {
        at: 1,
        member: Some(member.uid),
        subscriber_id: sub,
        connection_id: conn.id,
        agreement_version: Some(v(1)),
        purpose: "testing".into(),
        dataset: "ds_home".into(),
        action: AccessAction::Read,
        rows: 1,
        decision,
    };
    c.record_access(&[entry(AccessDecision::Allowed), entry(AccessDecision::Refused)]).await.unwrap();
    let log = c.access_log(member.uid, 100).await.unwrap();
    assert_eq!(log, vec![entry(AccessDecision::Refused), entry(AccessDecision::Allowed)], "newest first");
    let no_member = AccessLogEntry { member: None, ..entry(AccessDecision::Refused) };
    let many: Vec<AccessLogEntry> =
        (0..2500).map(|_| entry(AccessDecision::Allowed)).chain([no_member.clone()]).collect();
    c.record_access(&many).await.unwrap();
    assert_eq!(c.access_log(member.uid, 10_000).await.unwrap().len(), 2502, "multi-row inserts past one chunk");
    assert_eq!(c.access_log(member.uid, 100).await.unwrap().len(), 100, "the limit holds across blocks of events");
    let by_connection = c.connection_access_log(conn.id, 1).await.unwrap();
    assert_eq!(by_connection, vec![no_member], "a refusal naming no member is kept with its connection");
    // One request's read across members is stored once: each member sees only its own entry.
    let (other, _) = c.create_member("erin").await.unwrap();
    let wide = [member.uid, other.uid].map(|m| AccessLogEntry {
        at: 2,
        member: Some(m),
        rows: m.get(),
        ..entry(AccessDecision::Allowed)
    });
    c.record_access(&wide).await.unwrap();
    assert_eq!(c.access_log(other.uid, 10).await.unwrap(), vec![wide[1].clone()]);
    assert_eq!(c.access_log(member.uid, 1).await.unwrap(), vec![wide[0].clone()]);
    assert_eq!(c.connection_access_log(conn.id, 2).await.unwrap(), vec![wide[1].clone(), wide[0].clone()]);
    // A read across more members than one INSERT takes, twice in one block: the second
    // adds no index rows, and each member still finds both.
    let crowd = |at| -> Vec<AccessLogEntry> {
        (1..=1500)
            .map(|m| AccessLogEntry {
                at,
                member: Some(MemberId::new(1_000_000 + m).unwrap()),
                rows: m,
                ..entry(AccessDecision::Allowed)
            })
            .collect()
    };
    c.record_access(&crowd(3)).await.unwrap();
    c.record_access(&crowd(4)).await.unwrap();
    let last = MemberId::new(1_001_500).unwrap();
    assert_eq!(c.access_log(last, 10).await.unwrap(), vec![crowd(4)[1499].clone(), crowd(3)[1499].clone()]);
    let newest: Vec<AccessLogEntry> = crowd(4).into_iter().rev().collect();
    assert_eq!(c.connection_access_log(conn.id, 1500).await.unwrap(), newest);
}

async fn manifest(c: &Catalog) {
    let ds: DatasetName = "ds_energy_consumption".parse().unwrap();
    let member = MemberId::new(42).unwrap();
    let file = |path: &str, min_id: i64, max_id: i64, t: i64| ParquetFile {
        environment: DataEnvironment::Production,
        dataset: ds.clone(),
        member: Some(member),
        path: path.into(),
        rows: max_id - min_id + 1,
        size_bytes: 1000,
        min_event_time: t,
        max_event_time: t + 10,
        min_id,
        max_id,
        max_version: max_id,
    };
    let start = c.manifest_seq().await.unwrap();
    c.commit_parquet_files(&[file("b", 11, 20, 200), file("a", 1, 10, 100)], &[]).await.unwrap();
    let first = c.manifest_changes(start).await.unwrap();
    assert_eq!((first.latest, first.added.len(), first.removed.len()), (start + 1, 2, 0));
    let files = c.parquet_files(DataEnvironment::Production, &ds, member).await.unwrap();
    assert_eq!(files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["a", "b"], "oldest events first");
    assert!(c.parquet_files(DataEnvironment::Sandbox, &ds, member).await.unwrap().is_empty());
    assert_eq!(c.max_row_ids().await.unwrap(), vec![(DataEnvironment::Production, ds.clone(), Some(member), 20, 20)]);
    // Compaction's swap: the merged file replaces both in one transaction.
    c.commit_parquet_files(&[file("ab", 1, 20, 100)], &["a".into(), "b".into()]).await.unwrap();
    let files = c.parquet_files(DataEnvironment::Production, &ds, member).await.unwrap();
    assert_eq!(files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["ab"]);
    // The change feed: the swap as one commit, after the first; nothing new is nothing.
    let swap = c.manifest_changes(first.latest).await.unwrap();
    assert_eq!(swap.added.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["ab"]);
    assert_eq!(swap.removed, ["a", "b"]);
    assert_eq!(swap.latest, first.latest + 1);
    let none = c.manifest_changes(swap.latest).await.unwrap();
    assert!(none.added.is_empty() && none.removed.is_empty());
    let mut replaced = c.replaced_since(0).await.unwrap();
    replaced.sort();
    assert_eq!(replaced, ["a", "b"], "what was replaced, while the tombstones last");
    assert!(c.replaced_since(i64::MAX).await.unwrap().is_empty());
    assert_eq!(c.purge_manifest_tombstones(0).await.unwrap(), 0, "young tombstones stay");
    assert_eq!(c.purge_manifest_tombstones(i64::MAX).await.unwrap(), 2);
    assert!(c.manifest_changes(first.latest).await.unwrap().removed.is_empty());
    assert_eq!(
        kind(c.commit_parquet_files(&[file("ab", 1, 20, 100)], &[]).await),
        ErrorKind::Internal,
        "paths are unique"
    );
    // A second compactor replacing the same files loses, and adds nothing.
    assert_eq!(kind(c.commit_parquet_files(&[file("ab2", 1, 20, 100)], &["a".into()]).await), ErrorKind::Conflict);
    assert_eq!(c.parquet_files(DataEnvironment::Production, &ds, member).await.unwrap().len(), 1);
    c.commit_parquet_files(&[file("c", 21, 21, 300), file("d", 22, 22, 300)], &[]).await.unwrap();
    assert_eq!(
        c.compaction_candidates(2000, 3, 10).await.unwrap(),
        vec![((DataEnvironment::Production, ds.clone(), member), 3)]
    );
    assert!(c.compaction_candidates(2000, 4, 10).await.unwrap().is_empty());
    // Hot files (several members' rows): in the feed and the id maxima (as one row), never compaction's
    // per-member work, and found by age for settling.
    let hot = |path: &str, max_version: i64| ParquetFile { member: None, max_version, ..file(path, 1, 5, 400) };
    let before_hot = c.manifest_seq().await.unwrap();
    c.commit_parquet_files(&[hot("h1", 500), hot("h2", 600), hot("h3", 700)], &[]).await.unwrap();
    let feed = c.manifest_changes(before_hot).await.unwrap();
    assert_eq!(
        feed.added.iter().map(|f| (f.path.as_str(), f.member)).collect::<Vec<_>>(),
        [("h1", None), ("h2", None), ("h3", None)]
    );
    assert!(
        c.max_row_ids().await.unwrap().contains(&(DataEnvironment::Production, ds.clone(), None, 5, 700)),
        "the hot files, as one row without a member"
    );
    assert_eq!(c.compaction_candidates(2000, 3, 10).await.unwrap().len(), 1, "hot files are not a member's");
    let found = c.hot_files_before(i64::MAX).await.unwrap();
    assert_eq!(found.iter().map(|(f, _)| f.path.as_str()).collect::<Vec<_>>(), ["h1", "h2", "h3"]);
    assert!(c.hot_files_before(found[0].1).await.unwrap().is_empty(), "younger than the cut-off");
    assert!(
        c.parquet_files(DataEnvironment::Production, &ds, member).await.unwrap().iter().all(|f| f.member.is_some())
    );
}
