//! Component benches of the scoped read path (criterion): the query engine over ingest's
//! file index, without HTTP. The demo fixture of `test-helpers` (SQLite catalog, local object
//! store, 101 members, 100 of them with an agreement with energy-co) gets 7 days of 15-minute
//! energy readings for those 100 members (67,200 rows), written and flushed a day at a time:
//! one Parquet file per member and day. Then, as energy-co's connection-wide scope (what
//! `POST /v1/query` builds):
//!
//! - `plan/<query>`: `QueryEngine::plan_sql`: the SQL sandbox check, a session holding only
//!   the scoped tables, the scoped table provider's scan (members and files picked by the
//!   filters, small files taken from the engine's decoded-file cache, warm after the check
//!   run, as on a busy server) and the physical plan with its check. A plan runs no rows
//!   through, so these report time per plan only.
//! - `read/<query>`: the same plus running it to the last batch. Rows and bytes per
//!   iteration are the rows the scans read and the Parquet bytes of the files holding them,
//!   so criterion prints rows/s (as `elem/s`) and MiB/s.
//!
//! - `access_log/record/<n>_members`: `Catalog::record_access` of one read naming n members
//!   (1, and 10,000 as a Q3 of `benches/reads.rs` does), into the embedded catalog as it grows.
//!
//! The queries: `one_member_one_day` (member 42's 96 readings of one day) and
//! `100_members_one_day_avg` (the mean of every member's readings of one day: 9,600 rows).
//! Before timing, each answer is checked once.
//!
//! ```sh
//! cargo bench --bench query              # in full
//! cargo bench --bench query -- --quick   # short mode (see benches/ingest.rs)
//! ```

use std::sync::Arc;

use catalog::{AccessAction, AccessDecision, AccessLogEntry, ConnectionId, DataEnvironment, DatasetKind, MemberId};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use futures::TryStreamExt;
use ingest::decode::{Format, decode};
use query::{QueryConfig, QueryEngine, ReadScope};
use test_helpers::{Store, TestConfig, TestServer, now_secs};

// As the server binary: glibc's allocator refaults large Arrow buffers (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const E: &str = "ds_energy_consumption";
const MEMBERS: i64 = 100;
const DAYS: i64 = 7;
const DAY: i64 = 86_400;

/// One day of readings of every member, as one body's rows would arrive.
fn day_of_readings(schema: &ingest::schema::DatasetSchema, day: i64) -> RecordBatch {
    let mut body = String::new();
    for member in 1..=MEMBERS {
        for i in 0..96 {
            let t = day * DAY + i * 900;
            let v = ((member * 7 + i) % 1000) as f64 / 8.0;
            body.push_str(&format!(
                r#"{{"member_uid": {member}, "field_energy_reading_timestamp": {t}, "field_energy_reading_value": {v}, "field_energy_source_type": "CAD"}}"#
            ));
            body.push('\n');
        }
    }
    decode(schema, Format::Ndjson, body.as_bytes()).expect("NDJSON decodes")
}

/// Energy-co's connection-wide read scope, built as the `/v1/query` handler builds it.
async fn energy_co_scope(s: &TestServer) -> ReadScope {
    let id = ConnectionId::new(s.creds.subscribers[0].connection.id).expect("a connection id");
    let connection = Arc::new(s.catalog.connection(id).await.expect("energy-co's connection"));
    let members: catalog::MemberVersions =
        s.catalog.active_agreements(id).await.expect("agreements").into_iter().collect();
    assert_eq!(members.len(), MEMBERS as usize);
    let mut datasets = Vec::new();
    for name in connection.approved().expect("an approved connection").terms.datasets.keys() {
        let dataset = Arc::new(s.catalog.dataset(name).await.expect("a dataset"));
        if dataset.kind == DatasetKind::Transactional {
            datasets.push(s.ingester.schema(&dataset).expect("a transactional dataset"));
        }
    }
    ReadScope { connection, members: Arc::new(members), datasets }
}

/// Plans and runs `sql`: the answer, and the rows the scans read.
async fn read(engine: &QueryEngine, scope: &ReadScope, sql: &str) -> (Vec<RecordBatch>, i64) {
    let planned = engine.plan_sql(scope, sql).await.expect("plans");
    let batches: Vec<RecordBatch> = planned.execute().expect("runs").try_collect().await.expect("answers");
    (batches, planned.reads().rows().values().sum())
}

fn bench_query(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut config = TestConfig::new(Store::Sqlite);
    // The fixture's last member has no agreement with energy-co.
    config.members = MEMBERS as u32 + 1;
    let s = runtime.block_on(TestServer::start(config));
    let first = now_secs() / DAY - DAYS;
    let scope = runtime.block_on(async {
        let dataset = Arc::new(s.catalog.dataset(&E.parse().expect("a dataset name")).await.expect("the dataset"));
        let schema = s.ingester.schema(&dataset).expect("a transactional dataset");
        let connection = ConnectionId::new(s.creds.subscribers[0].connection.id).expect("a connection id");
        let env: DataEnvironment = s.creds.subscribers[0].connection.environment.into();
        for day in first..first + DAYS {
            s.ingester.write(schema.clone(), env, connection, day_of_readings(&schema, day)).await.expect("write");
            s.settle().await;
        }
        energy_co_scope(&s).await
    });
    let engine =
        QueryEngine::new(QueryConfig::default(), s.ingester.buffer().clone(), s.objects.clone()).expect("query engine");
    let files = runtime.block_on(s.catalog.all_parquet_files()).expect("manifest");
    assert_eq!(files.len() as i64, MEMBERS * DAYS, "one file per member and day");

    let day = first + 3;
    let (from, to) = (day * DAY, (day + 1) * DAY);
    let queries = [
        (
            "one_member_one_day",
            format!(
                "SELECT * FROM {E} WHERE member_uid = 42 AND field_energy_reading_timestamp >= {from} AND field_energy_reading_timestamp < {to}"
            ),
            96,
        ),
        (
            "100_members_one_day_avg",
            format!(
                "SELECT member_uid, avg(field_energy_reading_value) AS mean FROM {E} \
                 WHERE field_energy_reading_timestamp >= {from} AND field_energy_reading_timestamp < {to} GROUP BY member_uid"
            ),
            MEMBERS as usize,
        ),
    ];
    let mut plan = c.benchmark_group("plan");
    for (name, sql, _) in &queries {
        runtime.block_on(engine.plan_sql(&scope, sql)).expect("plans");
        plan.bench_function(*name, |b| b.iter(|| runtime.block_on(engine.plan_sql(&scope, sql)).expect("plans")));
    }
    plan.finish();

    let mut g = c.benchmark_group("read");
    for (name, sql, answer_rows) in &queries {
        let (batches, rows) = runtime.block_on(read(&engine, &scope, sql));
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), *answer_rows, "{name}");
        let members: Vec<i64> =
            batches.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect();
        let read_members: std::collections::BTreeSet<i64> = members.iter().copied().collect();
        assert_eq!(read_members.len(), if *answer_rows == 96 { 1 } else { MEMBERS as usize }, "{name}");
        assert_eq!(rows, 96 * read_members.len() as i64, "{name}: the scans read the day's rows of those members");
        // The files holding the day of those members.
        let bytes: i64 = files
            .iter()
            .filter(|f| {
                f.member.is_some_and(|m| read_members.contains(&m.get()))
                    && f.min_event_time >= from
                    && f.max_event_time < to
            })
            .map(|f| f.size_bytes)
            .sum();
        g.throughput(Throughput::ElementsAndBytes { elements: rows as u64, bytes: bytes as u64 });
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| runtime.block_on(read(&engine, &scope, sql)))
        });
    }
    g.finish();

    // What the access log costs a read across many members: the catalog stores one entry per
    // member read (docs/api.md, "Storage layout"), moved there from the WAL once a second.
    let mut log = c.benchmark_group("access_log");
    let (subscriber, connection) = (scope.connection.subscriber_id, scope.connection.id);
    for members in [1i64, 10_000] {
        let mut at = 0;
        let mut entries = move || {
            at += 1;
            (1..=members)
                .map(|m| AccessLogEntry {
                    at,
                    member: Some(MemberId::new(m).expect("a member id")),
                    subscriber_id: subscriber,
                    connection_id: connection,
                    agreement_version: Some(catalog::AgreementVersion::FIRST),
                    purpose: "energy advice".into(),
                    dataset: E.into(),
                    action: AccessAction::Read,
                    rows: 96,
                    decision: AccessDecision::Allowed,
                })
                .collect::<Vec<_>>()
        };
        log.throughput(Throughput::Elements(members as u64));
        log.bench_function(BenchmarkId::new("record", format!("{members}_members")), |b| {
            b.iter_batched(
                &mut entries,
                |e| runtime.block_on(s.catalog.record_access(&e)).expect("recorded"),
                BatchSize::LargeInput,
            )
        });
    }
    log.finish();
    runtime.block_on(s.stop());
}

criterion_group!(benches, bench_query);
criterion_main!(benches);
