//! `POST /v1/ingest/{dataset}`: every format lands in Parquet files that independent readers
//! open; refusals store nothing; overload is refused cleanly.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int64Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use object_store::{ObjectStore, ObjectStoreExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_helpers::{Store, TestConfig, TestServer, backends, now_secs, stores};

const ENERGY: &str = "ds_energy_consumption";

/// `n` energy readings for members `1..=members`, one every 15 minutes.
fn readings(n: usize, members: i64, start: i64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"member_uid": 1 + (i as i64 % members), "field_energy_reading_timestamp": start + 900 * i as i64,
                   "field_energy_reading_value": (i % 1000) as f64 / 4.0, "field_energy_source_type": "CAD"})
        })
        .collect()
}

fn ndjson(rows: &[Value]) -> Vec<u8> {
    rows.iter().map(|r| format!("{r}\n")).collect::<String>().into_bytes()
}

/// Every row of every recorded file, read straight from the Parquet files.
async fn stored_rows(catalog: &catalog::Catalog, objects: &Arc<dyn ObjectStore>) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for f in catalog.all_parquet_files().await.unwrap() {
        let bytes = objects.get(&object_store::path::Path::from(f.path.as_str())).await.unwrap().bytes().await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
        for b in reader {
            out.push(b.unwrap());
        }
    }
    out
}

/// (member, id) → reading value, and checks ids are 1..n per member.
fn by_member(batches: &[RecordBatch]) -> BTreeMap<i64, Vec<(i64, f64)>> {
    let mut out: BTreeMap<i64, Vec<(i64, f64)>> = BTreeMap::new();
    for b in batches {
        let m = b.column_by_name("member_uid").unwrap().as_primitive::<Int64Type>();
        let id = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
        let v = b.column_by_name("field_energy_reading_value").unwrap().as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            out.entry(m.value(i)).or_default().push((id.value(i), v.value(i)));
        }
    }
    for rows in out.values_mut() {
        rows.sort_by_key(|(id, _)| *id);
    }
    out
}

#[tokio::test]
async fn every_format_lands_in_parquet_exactly_once() {
    for (store, objects) in backends() {
        let s = TestServer::start(TestConfig { objects, ..TestConfig::new(store) }).await;
        let start = now_secs() - 10 * 86_400;
        let rows = readings(400, 9, start);
        let (status, body) = s.ingest(ENERGY, "application/x-ndjson", ndjson(&rows[..100])).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"accepted": 100})));
        let (status, _) = s.ingest(ENERGY, "application/json", serde_json::to_vec(&rows[100..200]).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let mut csv = String::from(
            "member_uid,field_energy_reading_timestamp,field_energy_reading_value,field_energy_source_type\n",
        );
        for r in &rows[200..300] {
            csv += &format!(
                "{},{},{},{}\n",
                r["member_uid"], r["field_energy_reading_timestamp"], r["field_energy_reading_value"], "CAD"
            );
        }
        let (status, _) = s.ingest(ENERGY, "text/csv", csv.into_bytes()).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = s.ingest(ENERGY, "application/vnd.apache.arrow.stream", arrow_ipc(&rows[300..])).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"accepted": 100})));

        // Mid-way flush, then more rows, then a graceful stop flushes the rest.
        s.flush().await;
        let more = readings(90, 9, start + 400 * 900);
        assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&more)).await.0, StatusCode::OK);
        let (catalog, objects, _dir) = s.stop().await;
        let batches = stored_rows(&catalog, &objects).await;
        let stored = by_member(&batches);
        let mut want: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for r in rows.iter().chain(&more) {
            want.entry(r["member_uid"].as_i64().unwrap())
                .or_default()
                .push(r["field_energy_reading_value"].as_f64().unwrap());
        }
        assert_eq!(stored.len(), 9);
        for (member, values) in &want {
            let got = &stored[member];
            let ids: Vec<i64> = got.iter().map(|(id, _)| *id).collect();
            assert_eq!(ids, (1..=values.len() as i64).collect::<Vec<_>>(), "member {member}: ids 1..n, each row once");
            assert_eq!(
                got.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
                *values,
                "member {member}: values in arrival order"
            );
        }
        // Files live under <environment>/<dataset>/<member>/ (settled) or the dataset's hot
        // prefix (several members' rows), and the manifest knows them.
        let files = catalog.all_parquet_files().await.unwrap();
        assert!(files.iter().all(|f| match f.member {
            Some(m) => f.path.starts_with(&format!("production/{ENERGY}/{m}/")),
            None => f.path.starts_with(&format!("production/{ENERGY}/hot/")),
        }));
        assert_eq!(files.iter().map(|f| f.rows).sum::<i64>(), 490);
        if objects_kind_is_local(&_dir) {
            independent_reader_agrees(
                &_dir.path().join("objects"),
                490,
                rows.iter().chain(&more).map(|r| r["field_energy_reading_value"].as_f64().unwrap()).sum(),
            );
        }
    }
}

/// This process's resident set (the server runs in it).
fn rss_bytes() -> u64 {
    test_helpers::rss_bytes(std::process::id()).expect("VmRSS in /proc/self/status")
}

/// Whether the run wrote to the local directory (pyarrow reads it there).
fn objects_kind_is_local(dir: &tempfile::TempDir) -> bool {
    dir.path().join("objects").exists()
}

fn arrow_ipc(rows: &[Value]) -> Vec<u8> {
    use datafusion::arrow::array::{Float64Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("member_uid", DataType::Int64, false),
        Field::new("field_energy_reading_timestamp", DataType::Int64, true),
        Field::new("field_energy_reading_value", DataType::Float64, true),
    ]));
    let col = |k: &str| rows.iter().map(|r| r[k].as_i64().unwrap()).collect::<Vec<_>>();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(col("member_uid"))),
            Arc::new(Int64Array::from(col("field_energy_reading_timestamp"))),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r["field_energy_reading_value"].as_f64().unwrap()).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut w = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    drop(w);
    buf
}

/// pyarrow, installed by `.ci/run`, opens the files and counts and sums the same values.
fn independent_reader_agrees(objects: &std::path::Path, rows: i64, sum: f64) {
    let script = "import sys, pyarrow.dataset as ds\n\
        t = ds.dataset(sys.argv[1], format='parquet').to_table(columns=['field_energy_reading_value'])\n\
        print(t.num_rows, sum(v for v in t.column(0).to_pylist() if v is not None))";
    if let Some(text) = test_helpers::python(script, &[objects.as_os_str()]) {
        let mut parts = text.split_whitespace();
        assert_eq!(parts.next().unwrap().parse::<i64>().unwrap(), rows);
        let got: f64 = parts.next().unwrap().parse().unwrap();
        assert!((got - sum).abs() < 1e-6, "pyarrow sums {got}, expected {sum}");
    }
}

#[tokio::test]
async fn refused_batches_store_nothing_and_say_which_rows() {
    let s = TestServer::spawn(Store::Sqlite).await;
    let t = now_secs() - 3600;
    let ok = |m: i64| json!({"member_uid": m, "field_energy_reading_timestamp": t, "field_energy_reading_value": 1.5});
    let send = |rows: Vec<Value>| s.ingest(ENERGY, "application/x-ndjson", ndjson(&rows));

    // Member 10 has no agreement with energy-co; member 99999 does not exist: the same refusal.
    let (status, body) = send(vec![ok(1), ok(10), ok(2), ok(99_999)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let rows: Vec<i64> = body["errors"].as_array().unwrap().iter().map(|e| e["row"].as_i64().unwrap()).collect();
    assert_eq!(rows, [2, 4]);
    assert_eq!(body["errors"][0]["reason"], body["errors"][1]["reason"]);

    let mut bad_type = ok(1);
    bad_type["field_energy_reading_value"] = json!("canary-value");
    let mut unknown = ok(1);
    unknown["surprise"] = json!(1);
    let mut future = ok(1);
    future["field_energy_reading_timestamp"] = json!(now_secs() + 3 * 86_400);
    let mut no_time = ok(1);
    no_time.as_object_mut().unwrap().remove("field_energy_reading_timestamp");
    let mut with_id = ok(1);
    with_id["id"] = json!(5);
    let resp = s
        .ingest_request(ENERGY, "application/x-ndjson", ndjson(&[ok(1), bad_type, unknown, with_id]))
        .send()
        .await
        .unwrap();
    let (status, text) = (resp.status(), resp.text().await.unwrap());
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!text.contains("canary"), "refusals never echo values: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let errs: Vec<(i64, &str)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["row"].as_i64().unwrap(), e["field"].as_str().unwrap()))
        .collect();
    assert_eq!(errs, [(2, "field_energy_reading_value"), (3, "surprise"), (4, "id")]);
    for (rows, field) in
        [(vec![ok(1), future], "field_energy_reading_timestamp"), (vec![no_time], "field_energy_reading_timestamp")]
    {
        let (status, body) = send(rows).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["errors"][0]["field"], field);
    }
    assert_eq!(
        s.ingest(ENERGY, "application/x-ndjson", b"{\"member_uid\": 1,".to_vec()).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(s.ingest(ENERGY, "application/xml", b"<x/>".to_vec()).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(s.ingest("ds_no_such", "application/x-ndjson", ndjson(&[ok(1)])).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        s.ingest("ds_referrals", "application/x-ndjson", ndjson(&[ok(1)])).await.0,
        StatusCode::FORBIDDEN,
        "not in the agreement"
    );
    assert_eq!(
        s.ingest("ds_personal_details", "application/x-ndjson", ndjson(&[ok(1)])).await.0,
        StatusCode::BAD_REQUEST
    );

    // Wrong credentials: 401; insight-ltd reads energy but may not write it: 403.
    let resp = s
        .client
        .post(s.url(&format!("/v1/ingest/{ENERGY}")))
        .bearer_auth("1:wrong")
        .body(ndjson(&[ok(1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let insight = &s.creds.subscribers[1].connection;
    let resp = s
        .client
        .post(s.url(&format!("/v1/ingest/{ENERGY}")))
        .bearer_auth(format!("{}:{}", insight.nid, insight.key))
        .header("content-type", "application/x-ndjson")
        .body(ndjson(&[ok(1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // A subscriber token naming its connection works too.
    let token = s.subscriber_token("energy-co").await;
    let resp = s
        .client
        .post(s.url(&format!("/v1/ingest/{ENERGY}")))
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .body(ndjson(&[ok(3)]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let (_, metrics) = s.call_text(reqwest::Method::GET, "/metrics", None, None).await;
    for series in [
        "trove_ingest_rows_total{dataset=\"ds_energy_consumption\",result=\"accepted\"} 1",
        "trove_ingest_rows_total{dataset=\"ds_energy_consumption\",result=\"refused\"}",
        "trove_ingest_wal_append_duration_seconds_bucket",
        "trove_ingest_wal_group_size",
        "trove_ingest_batch_rows",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }

    let (catalog, objects, _dir) = s.stop().await;
    let stored = by_member(&stored_rows(&catalog, &objects).await);
    assert_eq!(stored.keys().copied().collect::<Vec<_>>(), [3], "only the one accepted row was stored");
}

#[tokio::test]
async fn a_field_outside_the_agreement_refuses_the_row() {
    let s = TestServer::spawn(Store::Sqlite).await;
    let care = s.subscriber_token("care-services").await;
    let mut terms = test_helpers::terms("Meter readings only", &[ENERGY]);
    terms["datasets"][ENERGY]["write"] = json!(["field_energy_reading_timestamp", "field_energy_reading_value"]);
    let c = s.new_connection(&care, terms, false).await;
    s.agree(2, c.id).await;
    let auth = c.bearer();
    let post = |row: Value| {
        s.client
            .post(s.url(&format!("/v1/ingest/{ENERGY}")))
            .bearer_auth(&auth)
            .header("content-type", "application/x-ndjson")
            .body(ndjson(&[row]))
            .send()
    };
    let t = now_secs() - 60;
    let good = json!({"member_uid": 2, "field_energy_reading_timestamp": t, "field_energy_reading_value": 2.0});
    assert_eq!(post(good.clone()).await.unwrap().status(), StatusCode::OK);
    let mut extra = good.clone();
    extra["field_energy_source_name"] = json!("Kettle");
    let resp = post(extra).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "field_energy_source_name");
    // A sandbox connection writes sandbox data, under its own prefix.
    let (catalog, _, _dir) = s.stop().await;
    let files = catalog.all_parquet_files().await.unwrap();
    assert_eq!(files.len(), 1);
    assert!(files[0].path.starts_with("sandbox/"));
}

#[tokio::test]
async fn overload_is_refused_with_retry_after_and_accepted_rows_stay() {
    let mut config = TestConfig::new(Store::Sqlite);
    config.buffer_bytes = 64 * 1024;
    let s = TestServer::start(config).await;
    let rss_before = rss_bytes();
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..200 {
        let rows = readings(200, 9, now_secs() - 400 * 86_400 + i * 200 * 900);
        let (status, body) = {
            let resp = s.ingest_request(ENERGY, "application/x-ndjson", ndjson(&rows)).send().await.unwrap();
            let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (resp.status(), (resp.json::<Value>().await.unwrap(), retry))
        };
        match status {
            StatusCode::OK => accepted += body.0["accepted"].as_i64().unwrap(),
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(body.1.is_some(), "429 carries Retry-After");
                assert_eq!(body.0["status"], 429);
                refused = Some(i);
                break;
            }
            other => panic!("unexpected {other}: {:?}", body.0),
        }
    }
    assert!(refused.is_some(), "a flood over the buffer budget is refused");
    assert!(s.ingester.buffer().bytes() < 64 * 1024 * 4, "the buffer stays near its budget");
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 128 << 20, "RSS grew by {grown} bytes under the flood");
    let (catalog, objects, _dir) = s.stop().await;
    let stored: usize = by_member(&stored_rows(&catalog, &objects).await).values().map(Vec::len).sum();
    assert_eq!(stored as i64, accepted, "every accepted row is stored");
}

#[tokio::test]
async fn writes_yield_once_the_buffer_is_half_full_and_the_process_over_its_memory_limit() {
    const BUFFER: usize = 1 << 20;
    let mut config = TestConfig::new(Store::Sqlite);
    config.buffer_bytes = BUFFER;
    // Every process holds more than a byte: past half its budget the buffer must yield.
    config.memory_limit = Some(1);
    let s = TestServer::start(config).await;
    let mut accepted = 0;
    let write = |i: i64| {
        let rows = readings(200, 9, now_secs() - 400 * 86_400 + i * 200 * 900);
        s.ingest_request(ENERGY, "application/x-ndjson", ndjson(&rows)).send()
    };
    let mut refused_at = None;
    for i in 0..500 {
        let resp = write(i).await.unwrap();
        match resp.status() {
            StatusCode::OK => accepted += resp.json::<Value>().await.unwrap()["accepted"].as_i64().unwrap(),
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(resp.headers().contains_key("retry-after"), "429 carries Retry-After");
                refused_at = Some(s.ingester.buffer().bytes());
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let buffered = refused_at.expect("writes are refused once the buffer is half full");
    assert!(accepted > 0, "below half its budget the buffer takes writes whatever the process holds");
    assert!(
        (BUFFER / 2..BUFFER).contains(&buffered),
        "refused for memory, not for a full buffer: {buffered} bytes buffered"
    );
    // Once flushed, the buffer takes writes again.
    s.flush().await;
    let again = write(100).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    accepted += again.json::<Value>().await.unwrap()["accepted"].as_i64().unwrap();
    let (catalog, objects, _dir) = s.stop().await;
    let stored: usize = by_member(&stored_rows(&catalog, &objects).await).values().map(Vec::len).sum();
    assert_eq!(stored as i64, accepted, "every accepted row is stored");
}

#[tokio::test]
async fn idempotency_keys_answer_retries_once() {
    let s = TestServer::spawn(Store::Sqlite).await;
    let send = |key: &'static str, body: Vec<u8>| {
        s.ingest_request(ENERGY, "application/x-ndjson", body).header("idempotency-key", key).send()
    };
    let first = ndjson(&readings(30, 3, now_secs() - 86_400));
    let r = send("k1", first.clone()).await.unwrap();
    assert_eq!((r.status(), r.json::<Value>().await.unwrap()), (StatusCode::OK, json!({"accepted": 30})));
    let r = send("k1", first.clone()).await.unwrap();
    assert_eq!(
        (r.status(), r.json::<Value>().await.unwrap()),
        (StatusCode::OK, json!({"accepted": 30})),
        "the first answer again"
    );
    assert_eq!(
        send("k1", ndjson(&readings(5, 3, now_secs() - 86_400))).await.unwrap().status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Flushed and its WAL segment gone, the key is still remembered (in the catalog).
    s.flush().await;
    s.flush().await;
    assert_eq!(send("k1", first.clone()).await.unwrap().status(), StatusCode::OK);
    let (catalog, objects, _dir) = s.stop().await;
    let stored: usize = by_member(&stored_rows(&catalog, &objects).await).values().map(Vec::len).sum();
    assert_eq!(stored, 30, "stored once");
}

#[tokio::test]
async fn compaction_merges_small_files_without_losing_or_doubling_a_row() {
    for (store, objects) in backends() {
        let s = TestServer::start(TestConfig { objects, ..TestConfig::new(store) }).await;
        // One member-month of 15-minute readings for 3 members (cold: merged by month), and
        // two recent days for member 1 (merged by day), each day flushed as its own file.
        // Compaction's cold buckets are 30-day periods; start at one.
        let month_start = (now_secs() - 90 * 86_400) / (30 * 86_400) * (30 * 86_400);
        let mut total = 0;
        for day in 0..30 {
            let rows = readings(96 * 3, 3, month_start + day * 86_400 - 1800);
            let rows: Vec<Value> = rows
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, mut r)| {
                    r["field_energy_reading_timestamp"] = json!(month_start + day * 86_400 + 900 * (i as i64 / 3));
                    r
                })
                .collect();
            assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&rows)).await.0, StatusCode::OK);
            total += rows.len();
            s.settle().await;
        }
        for day in [2, 1] {
            let rows = readings(20, 1, now_secs() - day * 86_400);
            assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&rows)).await.0, StatusCode::OK);
            total += rows.len();
            s.settle().await;
        }
        let before = by_member(&stored_rows(&s.catalog, &s.objects).await);
        assert_eq!(s.catalog.all_parquet_files().await.unwrap().len(), 30 * 3 + 2);

        // Readers during compaction see every row exactly once: the manifest never shows a
        // merged file beside the files it replaces.
        let catalog = s.catalog.clone();
        let watching = tokio::spawn(async move {
            let mut checks = 0;
            loop {
                let rows: i64 = catalog.all_parquet_files().await.unwrap().iter().map(|f| f.rows).sum();
                assert_eq!(rows as usize, total, "a reader saw a gap or a duplicate");
                checks += 1;
                if checks > 5000 {
                    return checks;
                }
                tokio::task::yield_now().await;
            }
        });
        let replaced = s.ingester.compact_round().await.unwrap();
        watching.abort();
        assert_eq!(replaced, 30 * 3, "the month's files; a recent day with one file stays as it is");
        let files = s.catalog.all_parquet_files().await.unwrap();
        let after = by_member(&stored_rows(&s.catalog, &s.objects).await);
        assert_eq!(before, after, "the same rows, ids and values");
        let per_member = |m: i64| files.iter().filter(|f| f.member.is_some_and(|x| x.get() == m)).count();
        assert_eq!(
            (per_member(1), per_member(2), per_member(3)),
            (3, 1, 1),
            "a month file each, and one per recent day"
        );
        // Replaced objects are gone (grace 0 here); the merged ones are sorted by event time.
        let listed: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(s.objects.list(None)).await.unwrap();
        assert_eq!(listed.len(), files.len());
        let month = files.iter().find(|f| f.member.is_some_and(|m| m.get() == 2)).unwrap();
        println!(
            "compaction: a member-month of {} 15-minute readings in one file of {} bytes = {:.1} bytes per reading",
            month.rows,
            month.size_bytes,
            month.size_bytes as f64 / month.rows as f64
        );
    }
}

#[tokio::test]
async fn object_store_requests_are_counted_by_kind() {
    for objects in test_helpers::object_stores() {
        let s = TestServer::start(TestConfig { objects, ..TestConfig::new(Store::Sqlite) }).await;
        let requests = || async {
            let (_, text) = s.call_text(reqwest::Method::GET, "/metrics", None, None).await;
            let op =
                |op: &str| test_helpers::metric(&text, &format!("trove_object_store_requests_total{{op=\"{op}\"}}"));
            (op("put"), op("get"))
        };
        let (puts, gets) = requests().await;
        let rows = readings(90, 9, now_secs() - 86_400);
        assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&rows)).await.0, StatusCode::OK);
        s.flush().await;
        let (puts_flushed, _) = requests().await;
        assert_eq!(puts_flushed - puts, 1.0, "{objects:?}: nine members' rows, one hot file, one PUT");
        s.settle().await;
        let (puts_settled, gets_settled) = requests().await;
        assert_eq!(puts_settled - puts_flushed, 9.0, "{objects:?}: settling writes a file per member");
        assert!(gets_settled > gets, "{objects:?}: settling reads the hot file");
    }
}

#[tokio::test]
async fn storage_down_keeps_acking_into_the_wal_then_503_and_nothing_is_lost() {
    let mut config = TestConfig::new(Store::Sqlite);
    config.buffer_bytes = 256 * 1024;
    config.flush_age = std::time::Duration::from_millis(10);
    let s = TestServer::start(config).await;
    // Object storage "goes down": its root directory becomes a file, so every put fails.
    let root = s.dir.path().join("objects");
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::write(&root, b"not a directory").unwrap();
    let mut accepted = 0;
    let mut refusal = None;
    for i in 0..500 {
        let rows = readings(200, 9, now_secs() - 400 * 86_400 + i * 200 * 900);
        let resp = s.ingest_request(ENERGY, "application/x-ndjson", ndjson(&rows)).send().await.unwrap();
        match resp.status() {
            StatusCode::OK => accepted += 200,
            // Before a flush has failed, a full buffer only means "busy": retry later.
            StatusCode::TOO_MANY_REQUESTS => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            status => {
                refusal = Some((status, resp.headers().get("retry-after").is_some()));
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(accepted > 0, "writes are acknowledged into the WAL while storage is down");
    assert_eq!(refusal, Some((StatusCode::SERVICE_UNAVAILABLE, true)), "then 503 with Retry-After");
    // Storage comes back: the buffered rows flush, nothing is lost.
    std::fs::remove_file(&root).unwrap();
    std::fs::create_dir(&root).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while s.ingester.buffer().bytes() > 0 {
        assert!(std::time::Instant::now() < deadline, "the buffer drains once storage is back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (catalog, objects, _dir) = s.stop().await;
    let stored: usize = by_member(&stored_rows(&catalog, &objects).await).values().map(Vec::len).sum();
    assert_eq!(stored, accepted);
}

#[tokio::test]
async fn bulk_writes_reach_the_members_access_log_aggregated() {
    let s = TestServer::spawn(Store::Sqlite).await;
    let rows = readings(90, 3, now_secs() - 86_400);
    assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&rows)).await.0, StatusCode::OK);
    assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&rows)).await.0, StatusCode::OK);
    // Entries move to the catalog with their WAL segment, once its rows are in Parquet.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let writes = loop {
        s.flush().await;
        let (_, log) = s.call(reqwest::Method::GET, "/v1/members/2/access-log", Some(s.member_secret(2)), None).await;
        let writes: Vec<Value> = log.as_array().unwrap().iter().filter(|e| e["action"] == "write").cloned().collect();
        if !writes.is_empty() || std::time::Instant::now() > deadline {
            break writes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let total: i64 = writes.iter().map(|e| e["rows"].as_i64().unwrap()).sum();
    assert_eq!(total, 60, "both batches' 30 rows of member 2: {writes:?}");
    assert!(writes.len() <= 2, "aggregated per minute, not per request");
    assert_eq!(writes[0]["agreement_version"], 1);
    assert_eq!(writes[0]["dataset"], ENERGY);
    assert!(writes[0]["purpose"].as_str().unwrap().contains("energy"));
    // Member 1's writes are not in member 2's log, and the other way round.
    let (_, log1) = s.call(reqwest::Method::GET, "/v1/members/1/access-log", Some(s.member_secret(1)), None).await;
    assert!(log1.as_array().unwrap().iter().all(|e| e["member"] == 1));
}

/// Write counts are read back from the WAL segments as they move: each minute's rows of a
/// member land once, under that minute, however many segments and flush rounds pass (two
/// callers flushing at once included).
#[tokio::test]
async fn write_counts_move_to_the_access_log_once_under_their_minute() {
    let start: i64 = 1_924_992_000_000;
    let clock = Arc::new(catalog::time::MockClock::new(start));
    let s = TestServer::start(TestConfig { clock: Some(clock.clone()), ..TestConfig::new(Store::Sqlite) }).await;
    let day_before = start / 1000 - 86_400;
    // Minute one: 4 of member 1's rows and 2 of member 2's, in two writes and two segments
    // (a flush of everything closes the segment).
    assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&readings(4, 2, day_before))).await.0, StatusCode::OK);
    tokio::join!(s.flush(), s.flush());
    let late = readings(3, 1, day_before + 3600);
    assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&late[..2])).await.0, StatusCode::OK);
    // Minute two: one more of member 1's.
    clock.advance(std::time::Duration::from_secs(60));
    assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&late[2..])).await.0, StatusCode::OK);
    let s = &s;
    let writes = |uid: i64| async move {
        let path = format!("/v1/members/{uid}/access-log");
        let (_, log) = s.call(reqwest::Method::GET, &path, Some(s.member_secret(uid)), None).await;
        let mut by_minute: BTreeMap<i64, i64> = BTreeMap::new();
        for e in log.as_array().unwrap().iter().filter(|e| e["action"] == "write") {
            assert_eq!(e["member"], uid);
            *by_minute.entry(e["at"].as_i64().unwrap()).or_default() += e["rows"].as_i64().unwrap();
        }
        by_minute
    };
    for _ in 0..2 {
        tokio::join!(s.settle_access_log(), s.settle_access_log());
        assert_eq!(writes(1).await, BTreeMap::from([(start, 4), (start + 60_000, 1)]), "member 1");
        assert_eq!(writes(2).await, BTreeMap::from([(start, 2)]), "member 2");
    }
}

#[tokio::test]
async fn a_revocation_stops_the_next_write_despite_caches() {
    let s = TestServer::spawn(Store::Sqlite).await;
    let row = |m: i64| json!({"member_uid": m, "field_energy_reading_timestamp": now_secs() - 60, "field_energy_reading_value": 1.0});
    for _ in 0..3 {
        assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&[row(2), row(3)])).await.0, StatusCode::OK);
    }
    let conn = s.creds.subscribers[0].connection.id;
    let (status, _) = s
        .call(reqwest::Method::POST, &format!("/v1/members/2/agreements/{conn}/revoke"), Some(s.member_secret(2)), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s.ingest(ENERGY, "application/x-ndjson", ndjson(&[row(3), row(2)])).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errors"][0]["row"], 2);
    assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&[row(3)])).await.0, StatusCode::OK);
    // Approving again lets writes in again.
    s.call(reqwest::Method::POST, &format!("/v1/members/2/agreements/{conn}/approve"), Some(s.member_secret(2)), None)
        .await;
    assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&[row(2)])).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_put_stores_a_new_version_of_the_row_and_keeps_unnamed_fields() {
    for store in stores() {
        let s = TestServer::spawn(store).await;
        let token = s.subscriber_token("energy-co").await;
        let q = s.member_query(4, "energy-co");
        let t = now_secs() - 3600;
        let rows = json!({ENERGY: [
            {"field_energy_reading_timestamp": t, "field_energy_reading_value": 1.0, "field_energy_source_type": "CAD"},
            {"field_energy_reading_timestamp": t + 900, "field_energy_reading_value": 2.0, "field_energy_source_type": "CAD"}]});
        let (status, body) =
            s.call(reqwest::Method::POST, &format!("/api/pds/transaction?uid=4&{q}"), Some(&token), Some(rows)).await;
        assert_eq!((status, body["ids"].clone()), (StatusCode::OK, json!(["1", "2"])));
        let put = |id: i64, body: Value, extra: &str| {
            let (s, token, q) = (&s, token.clone(), q.clone());
            let path = format!("/api/pds/transaction/4.json?{q}&id={id}{extra}");
            async move { s.call(reqwest::Method::PUT, &path, Some(&token), Some(body)).await }
        };
        // Row 1 is still in the buffer; row 2 is in a Parquet file by the time it is updated.
        let (status, body) = put(1, json!({"field_energy_reading_value": "9.5"}), &format!("&dataset={ENERGY}")).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"success": 1})));
        s.flush().await;
        let (status, _) = put(2, json!({ENERGY: {"field_energy_source_name": "Kettle"}}), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            put(99, json!({"field_energy_reading_value": 1}), &format!("&dataset={ENERGY}")).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            put(1, json!({"no_such": 1}), &format!("&dataset={ENERGY}")).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        // Another member's row id through this member's credentials is not found here.
        let q5 = s.member_query(5, "energy-co");
        let (status, _) = s
            .call(
                reqwest::Method::PUT,
                &format!("/api/pds/transaction/5.json?{q5}&id=1&dataset={ENERGY}"),
                Some(&token),
                Some(json!({"field_energy_reading_value": 3})),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (catalog, objects, _dir) = s.stop().await;
        let batches = stored_rows(&catalog, &objects).await;
        // Newest version per id of member 4: version, value, source name and type, timestamp.
        type Row = (i64, f64, Option<String>, Option<String>, i64);
        let mut newest: BTreeMap<i64, Row> = BTreeMap::new();
        let mut versions = 0;
        for b in &batches {
            let col = |n: &str| b.column_by_name(n).unwrap().clone();
            let (m, id, v, val, ts) = (
                col("member_uid"),
                col("id"),
                col("_version"),
                col("field_energy_reading_value"),
                col("field_energy_reading_timestamp"),
            );
            let (name, kind) = (col("field_energy_source_name"), col("field_energy_source_type"));
            for i in 0..b.num_rows() {
                if m.as_primitive::<Int64Type>().value(i) != 4 {
                    continue;
                }
                versions += 1;
                let version = v.as_primitive::<Int64Type>().value(i);
                let text = |a: &datafusion::arrow::array::ArrayRef| {
                    use datafusion::arrow::array::Array;
                    a.is_valid(i).then(|| a.as_string::<i32>().value(i).to_owned())
                };
                let row = (
                    version,
                    val.as_primitive::<Float64Type>().value(i),
                    text(&name),
                    text(&kind),
                    ts.as_primitive::<Int64Type>().value(i),
                );
                let id = id.as_primitive::<Int64Type>().value(i);
                if newest.get(&id).is_none_or(|old| old.0 < version) {
                    newest.insert(id, row);
                }
            }
        }
        // Row 1 was updated before its flush, and a file holds only the newest version of a
        // row; row 2's versions are in two files.
        assert_eq!(versions, 3);
        let (_, v1, name1, kind1, t1) = newest[&1].clone();
        assert_eq!((v1, name1, kind1.as_deref(), t1), (9.5, None, Some("CAD"), t));
        let (_, v2, name2, kind2, t2) = newest[&2].clone();
        assert_eq!((v2, name2.as_deref(), kind2.as_deref(), t2), (2.0, Some("Kettle"), Some("CAD"), t + 900));
    }
}

#[tokio::test]
async fn bodies_in_flight_are_bounded_and_the_excess_gets_429() {
    let mut config = TestConfig::new(Store::Sqlite);
    config.ingest_inflight_bytes = 64 * 1024;
    let s = TestServer::start(config).await;
    // A slow client holds the whole in-flight budget: its body is still arriving.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let slow = s
        .ingest_request(ENERGY, "application/x-ndjson", Vec::new())
        .header("content-length", "65000")
        .body(body)
        .send();
    let slow = tokio::spawn(slow);
    tx.send(Ok(br#"{"member_uid": 1"#.to_vec())).await.unwrap();
    // Time for the slow request to reach its handler (a loaded CI machine is slow).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let rows = ndjson(&readings(10, 3, now_secs() - 3600));
    let resp = s.ingest_request(ENERGY, "application/x-ndjson", rows.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    // Once the slow body is done (here: abandoned), others get in again.
    drop(tx);
    let _ = slow.await;
    let resp = s.ingest_request(ENERGY, "application/x-ndjson", rows).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// A byte stream fed by a channel, for a request body that arrives slowly.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn a_live_connection_cannot_write_a_dataset_still_in_the_sandbox() {
    let s = TestServer::spawn(Store::Sqlite).await;
    let body = json!({"name": "ds_solar_generation", "title": "Solar", "kind": "transactional",
                      "fields": [{"name": "solar_watts", "title": "Watts", "data_type": "float"}]});
    assert_eq!(s.call(reqwest::Method::POST, "/v1/datasets", Some(s.admin()), Some(body)).await.0, StatusCode::CREATED);
    // energy-co's live connection adds it to its terms; the operator and member 1 approve.
    let token = s.subscriber_token("energy-co").await;
    let conn = s.creds.subscribers[0].connection.id;
    let (_, current) = s.call(reqwest::Method::GET, &format!("/v1/connections/{conn}"), Some(&token), None).await;
    let mut terms = current["revisions"][0]["terms"].clone();
    terms["datasets"]["ds_solar_generation"] = json!({"read": ["*"], "write": ["*"]});
    assert_eq!(
        s.call(reqwest::Method::PUT, &format!("/v1/connections/{conn}"), Some(&token), Some(terms)).await.0,
        StatusCode::OK
    );
    s.call(reqwest::Method::POST, &format!("/v1/connections/{conn}/submit"), Some(&token), None).await;
    s.call(reqwest::Method::POST, &format!("/v1/connections/{conn}/approve"), Some(s.admin()), None).await;
    let q = s.agree(1, conn).await;
    let row = json!({"member_uid": 1, "solar_watts": 120.5});
    assert_eq!(
        s.ingest("ds_solar_generation", "application/x-ndjson", ndjson(std::slice::from_ref(&row))).await.0,
        StatusCode::FORBIDDEN
    );
    // A read before the promotion: the dataset is not offered to the live connection.
    let (status, _) = s.sql(&token, "SELECT count(*) AS n FROM ds_solar_generation").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Promoted to production, it is offered to live connections: to write, and to both read
    // doors at once (not after a restart).
    s.call(reqwest::Method::POST, "/v1/datasets/ds_solar_generation/promote", Some(s.admin()), None).await;
    let (status, body) = s.ingest("ds_solar_generation", "application/x-ndjson", ndjson(&[row])).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"accepted": 1})),
        "created_timestamp is filled with the arrival time"
    );
    let (status, body) = s.sql(&token, "SELECT count(*) AS n FROM ds_solar_generation").await;
    assert_eq!((status, body), (StatusCode::OK, json!([{"n": 1}])));
    let (status, body) = s
        .call(
            reqwest::Method::GET,
            &format!("/api/pds/transaction/1.json?{q}&dataset=ds_solar_generation"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((status, body["1"]["solar_watts"].clone()), (StatusCode::OK, json!("120.5")));
}

/// A write needs a grant that writes something, for that member, on the revision the member
/// approved: a read-only grant moves no row by `instance` and stores no row of `member_uid`
/// alone; a row that sets no field is 422 even under a full grant.
#[tokio::test]
async fn writes_need_a_write_grant_and_a_field() {
    for store in stores() {
        let s = TestServer::spawn(store).await;
        let t = now_secs() - 3600;
        // energy-co (writes everything) adds a row for member 1.
        let energy = s.subscriber_token("energy-co").await;
        let q1 = s.member_query(1, "energy-co");
        let row = json!({ENERGY: {"field_energy_reading_timestamp": t, "field_energy_reading_value": 1.0}});
        assert_eq!(
            s.call(reqwest::Method::POST, &format!("/api/pds/transaction?uid=1&{q1}"), Some(&energy), Some(row))
                .await
                .0,
            StatusCode::OK
        );
        let empty = json!({ENERGY: [{}, {}]});
        let (status, body) = s
            .call(reqwest::Method::POST, &format!("/api/pds/transaction?uid=1&{q1}"), Some(&energy), Some(empty))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        // insight-ltd reads energy readings and writes nothing: member 1 approved that.
        let insight = s.subscriber_token("insight-ltd").await;
        let qi = s.member_query(1, "insight-ltd");
        let path = format!("/api/pds/transaction/1.json?{qi}&dataset={ENERGY}&id=1");
        let (status, _) = s.call(reqwest::Method::PUT, &path, Some(&insight), Some(json!({"instance": 99}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "a read-only grant cannot move a row");
        let (status, _) = s
            .call(
                reqwest::Method::POST,
                &format!("/api/pds/transaction?uid=1&{qi}"),
                Some(&insight),
                Some(json!({ENERGY: {}})),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (_, rows) = s
            .call(
                reqwest::Method::GET,
                &format!("/api/pds/transaction/1.json?{q1}&dataset={ENERGY}"),
                Some(&energy),
                None,
            )
            .await;
        assert_eq!((rows.as_object().unwrap().len(), rows["1"]["instance"].clone()), (1, json!("0")), "{rows}");
        // With a grant that writes, `instance` moves the row.
        let path = format!("/api/pds/transaction/1.json?{q1}&dataset={ENERGY}&id=1");
        assert_eq!(
            s.call(reqwest::Method::PUT, &path, Some(&energy), Some(json!({"instance": 3}))).await.0,
            StatusCode::OK
        );

        // A connection whose first revision reads only: member 2 stays on it, member 3
        // approves the second, which writes.
        let sub = s.new_subscriber("meter-maker").await;
        let mut terms = test_helpers::terms("meters", &[ENERGY]);
        terms["datasets"][ENERGY]["write"] = json!([]);
        let conn = s.new_connection(&sub, terms.clone(), true).await;
        s.agree(2, conn.id).await;
        terms["datasets"][ENERGY]["write"] = json!(["*"]);
        assert_eq!(
            s.call(reqwest::Method::PUT, &format!("/v1/connections/{}", conn.id), Some(&sub), Some(terms)).await.0,
            StatusCode::OK
        );
        s.call(reqwest::Method::POST, &format!("/v1/connections/{}/submit", conn.id), Some(&sub), None).await;
        assert_eq!(
            s.call(reqwest::Method::POST, &format!("/v1/connections/{}/approve", conn.id), Some(s.admin()), None)
                .await
                .0,
            StatusCode::OK
        );
        s.agree(3, conn.id).await;
        let ingest = |body: Vec<Value>| {
            let (s, bearer) = (&s, conn.bearer());
            async move {
                let resp = s
                    .client
                    .post(s.url(&format!("/v1/ingest/{ENERGY}")))
                    .bearer_auth(bearer)
                    .header("content-type", "application/x-ndjson")
                    .body(ndjson(&body))
                    .send()
                    .await
                    .unwrap();
                (resp.status(), resp.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let (status, body) = ingest(vec![json!({"member_uid": 2})]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "member 2 approved a revision that writes nothing: {body}");
        let (status, body) = ingest(vec![json!({"member_uid": 3})]).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a row of member_uid alone sets no field: {body}");
        assert_eq!(body["errors"][0]["row"], 1);
        let (status, _) = ingest(vec![json!({"member_uid": 3, "field_energy_reading_timestamp": t})]).await;
        assert_eq!(status, StatusCode::OK);
        let (status, rows) =
            s.sql(&sub, &format!("SELECT member_uid, count(*) AS n FROM {ENERGY} GROUP BY member_uid")).await;
        assert_eq!(
            (status, rows),
            (StatusCode::OK, json!([{"member_uid": 3, "n": 1}])),
            "nothing the grants did not allow"
        );
    }
}

/// Concurrent updates of one row, each naming another field, all land: updates of a row
/// take turns, each merged onto the version the one before stored.
#[tokio::test]
async fn concurrent_puts_of_one_row_keep_every_field() {
    for store in stores() {
        let s = TestServer::spawn(store).await;
        let token = s.subscriber_token("energy-co").await;
        let q = s.member_query(1, "energy-co");
        let t = now_secs() - 3600;
        let row = json!({ENERGY: {"field_energy_reading_timestamp": t, "field_energy_reading_value": 1.0}});
        assert_eq!(
            s.call(reqwest::Method::POST, &format!("/api/pds/transaction?uid=1&{q}"), Some(&token), Some(row)).await.0,
            StatusCode::OK
        );
        let (_, dataset) = s.call(reqwest::Method::GET, &format!("/v1/datasets/{ENERGY}"), Some(s.admin()), None).await;
        let mut want: BTreeMap<String, String> = BTreeMap::new();
        for (k, field) in dataset["fields"].as_array().unwrap().iter().enumerate() {
            let name = field["name"].as_str().unwrap().to_owned();
            let value = match field["data_type"].as_str().unwrap() {
                "timestamp" => (t - 60 * k as i64).to_string(),
                "integer" => (1000 + k).to_string(),
                "float" => format!("{}.5", 10 + k),
                _ => format!("value {k}"),
            };
            want.insert(name, value);
        }
        want.insert("instance".into(), "7".into());
        for round in 0..3 {
            let puts = want.iter().map(|(field, value)| {
                let (s, token) = (&s, token.clone());
                let path = format!("/api/pds/transaction/1.json?{q}&dataset={ENERGY}&id=1");
                let body = json!({field: value});
                async move { s.call(reqwest::Method::PUT, &path, Some(&token), Some(body)).await.0 }
            });
            let statuses = futures::future::join_all(puts).await;
            assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
            let (_, rows) = s
                .call(
                    reqwest::Method::GET,
                    &format!("/api/pds/transaction/1.json?{q}&dataset={ENERGY}"),
                    Some(&token),
                    None,
                )
                .await;
            for (field, value) in &want {
                assert_eq!(rows["1"][field], json!(value), "round {round}: {field} was lost: {rows}");
            }
            if round == 1 {
                s.flush().await;
            }
        }
    }
}

#[tokio::test]
async fn a_flush_of_more_than_its_cap_drains_in_several_files_and_a_stop_flushes_everything() {
    // Each 1,000-row write is a chunk of about 100 KB: a flush takes about one.
    let s = TestServer::start(TestConfig { flush_bytes: 64 << 10, ..TestConfig::new(Store::Sqlite) }).await;
    let start = now_secs() - 60 * 86_400;
    for write in 0..3 {
        let rows = readings(1_000, 2, start + write * 900_000);
        assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&rows)).await.0, StatusCode::OK);
    }
    s.flush().await;
    let files = s.catalog.all_parquet_files().await.unwrap();
    assert!(files.len() >= 3, "{} files for three writes over the cap", files.len());
    assert_eq!(s.ingester.buffer().bytes(), 0, "a flush of everything leaves nothing buffered");
    let rows = readings(1_000, 2, start + 3 * 900_000);
    assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&rows)).await.0, StatusCode::OK);
    let rows = readings(1_000, 2, start + 4 * 900_000);
    assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&rows)).await.0, StatusCode::OK);
    // A graceful stop flushes every row, whatever the cap.
    let (catalog, objects, _dir) = s.stop().await;
    let stored = by_member(&stored_rows(&catalog, &objects).await);
    assert_eq!(stored.values().map(Vec::len).collect::<Vec<_>>(), [2_500, 2_500], "every row once");
}

#[tokio::test]
async fn a_windows_hot_files_settle_together_into_one_file_per_member() {
    // The server's clock starts an hour into a UTC day; the hot window is the default 24 h.
    let midnight: i64 = 1_924_992_000_000;
    let clock = Arc::new(catalog::time::MockClock::new(midnight + 3_600_000));
    let s = TestServer::start(TestConfig { clock: Some(clock.clone()), ..TestConfig::new(Store::Sqlite) }).await;
    // The collector's first pass (soon after start) must come before the clock jumps: by the
    // server's clock, objects the store dates now would then be two days old, and one put but
    // not yet committed would look like an orphan.
    for _ in 0..600 {
        let (_, text) = s.call_text(reqwest::Method::GET, "/metrics", None, None).await;
        if test_helpers::metric(&text, "trove_ingest_collections_total") >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let hour = std::time::Duration::from_secs(3600);
    let files = || async {
        let files = s.catalog.all_parquet_files().await.unwrap();
        (files.iter().filter(|f| f.member.is_none()).count(), files.iter().filter(|f| f.member.is_some()).count())
    };
    for _ in 0..2 {
        let rows = readings(30, 3, midnight / 1000 - 86_400);
        assert_eq!(s.ingest(ENERGY, "application/x-ndjson", ndjson(&rows)).await.0, StatusCode::OK);
        s.flush().await;
        clock.advance(2 * hour);
    }
    assert_eq!(files().await, (2, 0), "two hot files, arrived an hour and three hours into the day");

    // A day on, the first hot file is a window old but its day's arrivals are not all.
    clock.advance(21 * hour);
    s.ingester.compact_round().await.unwrap();
    assert_eq!(files().await, (2, 0), "nothing settles before the whole day may");

    // Once the day's last arrival may settle, both hot files settle in one step: a file per member.
    clock.advance(24 * hour);
    s.ingester.compact_round().await.unwrap();
    assert_eq!(files().await, (0, 3), "one file per member for the day's two hot files");
    let stored = by_member(&stored_rows(&s.catalog, &s.objects).await);
    assert_eq!(stored.values().map(Vec::len).collect::<Vec<_>>(), [20, 20, 20], "every row once");
}

#[tokio::test]
async fn the_catalogs_clock_decides_what_is_on_time_and_when_it_was_logged() {
    // A server whose clock says 1 January 2031: rows dated then are on time, rows more than a
    // day past it are not, and the access log says when by the same clock.
    let at: i64 = 1_924_992_000;
    let clock = Arc::new(catalog::time::MockClock::new(at * 1000));
    let s = TestServer::start(TestConfig { clock: Some(clock.clone()), ..TestConfig::new(Store::Sqlite) }).await;
    let row = |t: i64| json!({"member_uid": 1, "field_energy_reading_timestamp": t, "field_energy_reading_value": 1.5});
    let send = |t: i64| s.ingest(ENERGY, "application/x-ndjson", ndjson(&[row(t)]));
    assert_eq!(send(at).await.0, StatusCode::OK, "years ahead of the machine's clock, on time by the server's");
    let later = at + ingest::validate::MAX_FUTURE_SECS + 3600;
    assert_eq!(send(later).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    clock.advance(std::time::Duration::from_secs(2 * 86_400));
    assert_eq!(send(later).await.0, StatusCode::OK, "two days on, the same row is on time");
    s.settle_access_log().await;
    let (_, log) = s.call(reqwest::Method::GET, "/v1/members/1/access-log", Some(s.member_secret(1)), None).await;
    let times: Vec<i64> =
        log.as_array().unwrap().iter().filter(|e| e["action"] == "write").map(|e| e["at"].as_i64().unwrap()).collect();
    assert!(!times.is_empty(), "{log}");
    assert!(times.iter().all(|t| (at * 1000..=(at + 2 * 86_400) * 1000).contains(t)), "{times:?}");
}
