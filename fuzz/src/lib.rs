//! Shared setup of trove's fuzz targets (`fuzz_targets/`, run by `scripts/fuzz.sh`): what
//! each target does with its bytes, the promises it checks, and the seeded store the read
//! targets run against. Every target may refuse its input; none may panic.
//!
//! ```text
//!  decode_*        bytes ─► ingest::decode, for three datasets ─► a batch keeps the promises
//!  wal_record      bytes ─► a segment file ─► wal::replay (twice: the torn tail is cut once)
//!                  bytes and each record ─► ingest::fuzzing::decode_wal_record
//!  mydex_filter    bytes ─► query pairs ─► parse_filters ─► Filter::expr per dataset
//!  sql_front_door  bytes ─► QueryEngine::plan_sql: sandbox parse, plan, verify; never run
//! ```
//!
//! The read targets share one [`Fixture`] per process: a SQLite catalog with one approved
//! connection, Parquet files and buffered rows, resolved into scopes as a request would be.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use catalog::{
    Catalog, ConnectionId, ConnectionTerms, DataEnvironment, DatasetGrant, DatasetKind, FieldType, GdprDeclaration,
    MemberVersions,
};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type};
use ingest::decode::{Budget, DecodeError, Format};
use ingest::schema::DatasetSchema;
use ingest::{IngestConfig, Ingester};
use query::{QueryConfig, QueryEngine, ReadScope, TableScope};

/// The decoders' datasets: integers, floats and text; decimals; JSON text.
const DATASETS: [&str; 3] = ["ds_energy_consumption", "ds_bank_account_transactions", "ds_referrals"];

fn schemas() -> &'static [Arc<DatasetSchema>] {
    static SCHEMAS: OnceLock<Vec<Arc<DatasetSchema>>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let builtin = catalog::builtin_datasets();
        DATASETS
            .iter()
            .map(|name| {
                let dataset = builtin.iter().find(|d| d.name.as_str() == *name).expect("a built-in dataset").clone();
                Arc::new(DatasetSchema::new(Arc::new(dataset)).expect("a transactional dataset"))
            })
            .collect()
    })
}

/// Decodes `body` as `format` for each dataset; a batch that decodes must keep the promises
/// of a validated one.
pub fn decode(format: Format, body: &[u8]) {
    for schema in schemas() {
        let decoded = ingest::decode::decode(schema, format, body);
        if let Ok(batch) = &decoded {
            check_batch(schema, format, body, batch);
        }
        if matches!(format, Format::Ndjson | Format::JsonArray) {
            agrees_with_serde_json(schema, format, body, &decoded);
        }
    }
}

/// ingest reads JSON bodies by hand; serde_json (built here with `float_roundtrip`, so both
/// round floats correctly) is the reference: a body one refuses as malformed the other
/// refuses too, and what both read decodes to what the Mydex door makes of the same objects.
fn agrees_with_serde_json(
    schema: &DatasetSchema,
    format: Format,
    body: &[u8],
    decoded: &Result<RecordBatch, DecodeError>,
) {
    type Object = serde_json::Map<String, serde_json::Value>;
    let objects: Result<Vec<Object>, String> = match format {
        Format::Ndjson => std::str::from_utf8(body).map_err(|e| e.to_string()).and_then(|text| {
            text.split('\n')
                .filter(|line| !line.bytes().all(|b| b.is_ascii_whitespace()))
                .map(|line| serde_json::from_str::<Object>(line).map_err(|e| e.to_string()))
                .collect()
        }),
        _ => serde_json::from_slice::<Vec<Object>>(body).map_err(|e| e.to_string()),
    };
    let objects = match objects {
        Ok(objects) => objects,
        // ingest hands nested values to serde_json a level down, so its limit is a level deeper.
        Err(e) if e.contains("recursion limit") => return,
        Err(e) => {
            assert!(
                matches!(decoded, Err(DecodeError::Malformed(_))),
                "serde_json refuses ({e}), ingest read {decoded:?}"
            );
            return;
        }
    };
    let expected =
        ingest::decode::decode_objects(schema, &objects, &mut Budget { max_rows: usize::MAX, memory: &mut |_| true });
    match (decoded, &expected) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the same rows"),
        // A name given twice is refused (or, unknown, refused twice); a map keeps the last.
        (Err(DecodeError::Rows(rows)), _)
            if rows.iter().enumerate().any(|(i, r)| {
                r.reason == "given twice" || rows[..i].iter().any(|o| (o.row, &o.field) == (r.row, &r.field))
            }) => {}
        (Err(DecodeError::Rows(a)), Err(DecodeError::Rows(b))) => assert_eq!(a, b, "the same refusals"),
        (a, b) => panic!("ingest {a:?}, the same objects {b:?}"),
    }
}

fn check_batch(schema: &DatasetSchema, format: Format, body: &[u8], batch: &RecordBatch) {
    assert_eq!(batch.schema(), schema.input, "the dataset's input columns");
    // A row takes a line, an object or a record of the body; in Arrow IPC (uncompressed) at
    // least its member uid's 8 bytes.
    let most = match format {
        Format::Ndjson => body.split(|b| *b == b'\n').count(),
        Format::JsonArray => body.len() / 2,
        Format::Csv => body.iter().filter(|b| matches!(b, b'\n' | b'\r')).count() + 1,
        Format::ArrowIpc => body.len() / 8,
    };
    assert!(batch.num_rows() <= most, "{} rows from {} bytes", batch.num_rows(), body.len());
    let members = batch.column(0).as_primitive::<Int64Type>();
    assert!(members.null_count() == 0 && members.values().iter().all(|m| *m > 0), "positive member uids");
    let instances = batch.column(1).as_primitive::<Int64Type>();
    assert!(instances.null_count() == 0 && instances.values().iter().all(|i| *i >= 0), "instances of 0 or more");
    for (i, column) in batch.columns().iter().enumerate().skip(2) {
        let field = schema.field(i).expect("a data field");
        match column.data_type() {
            DataType::Float64 => {
                assert!(
                    column.as_primitive::<Float64Type>().iter().flatten().all(f64::is_finite),
                    "{}: finite floats",
                    field.name
                )
            }
            DataType::Decimal128(precision, _) => {
                let decimals = column.as_primitive::<Decimal128Type>();
                assert!(
                    decimals.validate_decimal_precision(*precision).is_ok(),
                    "{}: decimals within precision",
                    field.name
                )
            }
            DataType::Utf8 => {
                for v in column.as_string::<i32>().iter().flatten() {
                    assert!(v.len() <= field.max_bytes as usize, "{}: at most {} bytes", field.name, field.max_bytes);
                    if field.data_type == FieldType::Json {
                        let json = serde_json::from_str::<serde_json::Value>(v);
                        assert!(
                            matches!(json, Ok(serde_json::Value::Object(_) | serde_json::Value::Array(_))),
                            "{}: JSON",
                            field.name
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

/// For targets whose code catches panics of its own (ingest's Arrow IPC reader catches
/// arrow-ipc's): libfuzzer-sys's panic hook aborts on every panic, caught or not, so it is
/// replaced by one that only says where. A panic nobody catches still ends the run, in
/// libfuzzer-sys's wrapper.
pub fn allow_caught_panics() {
    std::panic::set_hook(Box::new(|info| eprintln!("panic, fatal unless caught: {info}")));
}

/// `bytes` as a WAL segment: replay keeps the whole records and cuts the rest, so a second
/// replay finds the same records and nothing to cut. Each record, and `bytes` as one
/// record's payload, then go through the record decoder.
pub fn wal_segment(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let segment = dir.path().join(format!("{:020}.wal", 1));
    std::fs::write(&segment, bytes).expect("a segment file");
    let records = ingest::wal::replay(dir.path()).expect("replay reads a segment");
    let kept = std::fs::metadata(&segment).expect("the segment").len() as usize;
    assert_eq!(
        kept,
        records.iter().map(|(_, p)| 8 + p.len()).sum::<usize>(),
        "the segment is cut after its last whole record"
    );
    assert_eq!(std::fs::read(&segment).expect("the segment"), bytes[..kept], "what is kept is the segment's start");
    assert_eq!(
        ingest::wal::replay(dir.path()).expect("replay reads a segment"),
        records,
        "a second replay finds the same"
    );
    for (_, payload) in &records {
        let _ = ingest::fuzzing::decode_wal_record(payload);
    }
    let _ = ingest::fuzzing::decode_wal_record(bytes);
}

/// The Mydex door's filters from a query string: each filter on a dataset either names a
/// column member 1's agreement lets the caller read, or is refused or ignored.
pub fn mydex_filters(query_string: &[u8]) {
    let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(query_string) else { return };
    let Ok(filters) = query::mydex::parse_filters(&pairs) else { return };
    for table in &fixture().tables {
        for filter in &filters {
            let Ok(Some(expr)) = filter.expr(table) else { continue };
            for column in expr.column_refs() {
                let index = table.schema.stored.index_of(column.name()).expect("a stored column");
                assert!(table.columns.contains(&index), "{}: a filter reads only visible columns", column.name());
            }
        }
    }
}

/// Plans `sql` through the SQL door as the connection-wide scope: anything that plans has
/// passed the plan check, and its scans read only members with an agreement.
pub fn plan_sql(sql: &str) {
    let f = fixture();
    // On a thread with the stack the server's planning threads have.
    let planned = std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(query::guard::PLANNING_STACK_BYTES)
            .spawn_scoped(s, || f.runtime.block_on(f.engine.plan_sql(&f.scope, sql)))
            .expect("a planning thread")
            .join()
            .expect("planning does not panic")
    });
    let Ok(planned) = planned else { return };
    for (dataset, member) in planned.reads().rows().keys() {
        assert!(f.scope.members.contains(*member), "{dataset}: member {member} has no agreement");
    }
}

/// The read side of a seeded store, as the server resolves it when a request starts.
#[derive(Debug)]
pub struct Fixture {
    runtime: tokio::runtime::Runtime,
    engine: QueryEngine,
    /// energy-co's connection-wide scope (the SQL door).
    scope: ReadScope,
    /// Member 1's agreement with energy-co, per transactional dataset (the Mydex door).
    tables: Vec<TableScope>,
}

/// Members 1 to 3 approve energy-co's connection; member 4 does not, but has rows too.
const MEMBERS: i64 = 4;
const DAY: i64 = 86_400;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let (engine, scope, tables) = runtime.block_on(seed());
        Fixture { runtime, engine, scope, tables }
    })
}

async fn seed() -> (QueryEngine, ReadScope, Vec<TableScope>) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let catalog = Catalog::connect(&Catalog::sqlite_url(&dir.path().join("catalog.db"))).await.expect("a catalog");
    let (subscriber, _) = catalog.create_subscriber("energy-co").await.expect("a subscriber");
    let id: ConnectionId = catalog.create_connection(subscriber.id, terms()).await.expect("a connection").id;
    catalog.submit_connection(id).await.expect("submitted");
    catalog.approve_connection(id, None).await.expect("approved");
    catalog.request_promotion(id).await.expect("promotion requested");
    catalog.promote_connection(id).await.expect("live");
    let mut agreement = None;
    for i in 1..=MEMBERS {
        let (member, _) = catalog.create_member(&format!("member{i}")).await.expect("a member");
        if i < MEMBERS {
            let (a, key) = catalog.approve_agreement(member.uid, id).await.expect("an agreement");
            agreement.get_or_insert((a.con_id, key));
        }
    }
    let (con_id, key) = agreement.expect("member 1's agreement");
    let member_scope = catalog.agreement_scope(subscriber.id, con_id, key.expose()).await.expect("member 1's scope");
    let connection = Arc::new(catalog.connection(id).await.expect("the connection"));
    let members: MemberVersions = catalog.active_agreements(id).await.expect("agreements").into_iter().collect();

    // Long ticks: nothing runs in the background while targets plan.
    let config = IngestConfig {
        wal_dir: dir.path().join("wal"),
        durability: ingest::wal::Durability::Process,
        segment_bytes: 1 << 20,
        buffer_bytes: 64 << 20,
        buffer_soft_bytes: 32 << 20,
        flush_age: Duration::from_secs(86_400),
        flush_bytes: 8 << 20,
        flush_tick: Duration::from_secs(86_400),
        compaction: ingest::compact::CompactionConfig::default(),
        compact_interval: Duration::from_secs(86_400),
        inflight_bytes: 64 << 20,
        max_rows_per_write: 1_000_000,
        memory_limit: None,
    };
    let objects: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let ingester = Ingester::open(config, catalog.clone(), objects.clone()).await.expect("an ingester");
    let mut datasets = Vec::new();
    for name in connection.approved().expect("approved").terms.datasets.keys() {
        let dataset = Arc::new(catalog.dataset(name).await.expect("a dataset"));
        if dataset.kind == DatasetKind::Transactional {
            datasets.push(ingester.schema(&dataset).expect("a transactional dataset"));
        }
    }

    // Yesterday's rows in Parquet files, today's in the buffer: scans read both.
    let env: DataEnvironment = connection.environment.into();
    let today =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs() as i64 / DAY
            * DAY;
    for (day, flush) in [(today - DAY, true), (today, false)] {
        for schema in &datasets {
            let body = rows(schema.dataset.name.as_str(), day);
            let batch = ingest::decode::decode(schema, Format::Ndjson, body.as_bytes())
                .unwrap_or_else(|e| panic!("seed rows: {e:?}"));
            ingester.write(schema.clone(), env, id, batch).await.expect("written");
        }
        if flush {
            assert_eq!(ingester.flush_round(true).await, 0, "flushed");
        }
    }
    let engine = QueryEngine::new(
        QueryConfig { timeout: Duration::from_secs(10), target_partitions: 2, ..QueryConfig::default() },
        ingester.buffer().clone(),
        objects,
    )
    .expect("a query engine");
    let tables = datasets
        .iter()
        .map(|s| TableScope::for_agreement(&member_scope, s.clone()).expect("member 1's table"))
        .collect();
    // libFuzzer exits without running destructors: remove the directory now. Nothing opens
    // it again (the buffer and files are in memory, the ticks are a day away).
    drop(dir);
    (engine, ReadScope { connection, members: Arc::new(members), datasets }, tables)
}

/// energy-co's terms: every energy field; bank transactions without their description.
fn terms() -> ConnectionTerms {
    let grant = |read: &[&str]| DatasetGrant {
        read: read.iter().map(|f| f.to_string()).collect(),
        write: ["*".to_string()].into_iter().collect(),
    };
    let bank_fields = [
        "ba_transaction_date",
        "ba_transaction_type",
        "ba_transaction_value",
        "ba_transaction_value_currency_code",
        "source",
        "created_timestamp",
    ];
    ConnectionTerms {
        name: "energy-co".into(),
        description: "Energy Co's fuzzing connection".into(),
        company_name: "Energy Co".into(),
        contact_name: String::new(),
        contact_email: "privacy@energy-co.example".into(),
        contact_phone: String::new(),
        logo_url: String::new(),
        callback_url: String::new(),
        datasets: [
            ("ds_energy_consumption".parse().expect("a dataset name"), grant(&["*"])),
            ("ds_bank_account_transactions".parse().expect("a dataset name"), grant(&bank_fields)),
        ]
        .into_iter()
        .collect(),
        purposes: vec!["Show members their energy use and bills".into()],
        gdpr: GdprDeclaration { lawful_basis: "consent".into(), statement: "With the member's consent.".into() },
    }
}

/// A day of rows of every member for `dataset`, as NDJSON.
fn rows(dataset: &str, day: i64) -> String {
    let mut out = String::new();
    for member in 1..=MEMBERS {
        for i in 0..4 {
            let t = day + i * 900;
            let row = match dataset {
                "ds_energy_consumption" => format!(
                    r#"{{"member_uid": {member}, "field_energy_reading_timestamp": {t}, "field_energy_reading_value": {i}.5, "field_energy_source_type": "CAD"}}"#
                ),
                _ => format!(
                    r#"{{"member_uid": {member}, "created_timestamp": {t}, "ba_transaction_value": "-{i}.25", "ba_transaction_description": "Coffee", "ba_transaction_value_currency_code": "GBP"}}"#
                ),
            };
            out.push_str(&row);
            out.push('\n');
        }
    }
    out
}
