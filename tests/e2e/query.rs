//! `POST /v1/query` and `GET /api/pds/transaction`: acknowledged rows are read at once and
//! exactly once, through flushes, compaction and updates; every answer format round-trips
//! through an independent reader; limits fail cleanly while small queries keep answering.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_helpers::{Store, TestConfig, TestServer, now_secs, stores};

const E: &str = "ds_energy_consumption";

/// Delivers `n` readings for member `member` as energy-co, valued `value`.
async fn deliver(s: &TestServer, member: i64, n: usize, value: f64) {
    let body: String = (0..n)
        .map(|i| {
            let row = json!({"member_uid": member, "field_energy_reading_timestamp": now_secs() - 86_400 + i as i64 * 900,
                             "field_energy_reading_value": value});
            format!("{row}\n")
        })
        .collect();
    let (status, answer) = s.ingest(E, "application/x-ndjson", body.into_bytes()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// Member 1's ids as SQL sees them, and the sum of their values.
async fn member_one(s: &TestServer, token: &str) -> (Vec<i64>, f64) {
    let (status, rows) = s
        .sql(token, &format!("SELECT id, field_energy_reading_value AS v FROM {E} WHERE member_uid = 1 ORDER BY id"))
        .await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    let rows = rows.as_array().unwrap();
    (rows.iter().map(|r| r["id"].as_i64().unwrap()).collect(), rows.iter().map(|r| r["v"].as_f64().unwrap()).sum())
}

#[tokio::test]
async fn acknowledged_rows_are_read_at_once_and_exactly_once() {
    for store in stores() {
        let s = TestServer::spawn(store).await;
        let token = s.subscriber_token("energy-co").await;
        let ids = |n: i64| (1..=n).collect::<Vec<_>>();

        deliver(&s, 1, 3, 1.0).await;
        assert_eq!(member_one(&s, &token).await, (ids(3), 3.0), "buffered rows are visible");
        s.flush().await;
        assert_eq!(member_one(&s, &token).await, (ids(3), 3.0), "after the flush");
        for _ in 0..4 {
            deliver(&s, 1, 2, 1.0).await;
            s.flush().await;
        }
        deliver(&s, 1, 1, 1.0).await;
        assert_eq!(member_one(&s, &token).await, (ids(12), 12.0), "files and buffer");
        assert!(s.ingester.compact_round().await.unwrap() >= 4, "compaction merged the small files");
        assert_eq!(member_one(&s, &token).await, (ids(12), 12.0), "after compaction");

        // An update is a new version: every read sees only the newest, once.
        let q = s.member_query(1, "energy-co");
        let put = format!("/api/pds/transaction/1.json?{q}&id=2&dataset={E}");
        let (status, answer) =
            s.call(Method::PUT, &put, Some(&token), Some(json!({"field_energy_reading_value": 101.0}))).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(member_one(&s, &token).await, (ids(12), 112.0), "the update, buffered");
        let get = format!(
            "/api/pds/transaction/1.json?{q}&dataset={E}&filters%5Bid%5D%5Boperator%5D=%3C%3D&filters%5Bid%5D%5Bvalue%5D=2"
        );
        let (status, rows) = s.call(Method::GET, &get, Some(&token), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(rows["2"]["field_energy_reading_value"], "101.0", "the Mydex door sees the newest version");
        assert_eq!(rows.as_object().unwrap().len(), 2);
        s.flush().await;
        assert_eq!(member_one(&s, &token).await, (ids(12), 112.0), "the update, flushed");
        s.ingester.compact_round().await.unwrap();
        assert_eq!(member_one(&s, &token).await, (ids(12), 112.0), "the update, compacted");

        // Reads racing flushes count every row once.
        for round in 0..5 {
            deliver(&s, 1, 50, 0.0).await;
            let expected = ids(12 + 50 * (round + 1));
            let flush = s.ingester.flush_round(true);
            let read = async {
                for _ in 0..5 {
                    assert_eq!(member_one(&s, &token).await.0, expected, "a read during a flush");
                }
            };
            let (failed, ()) = tokio::join!(flush, read);
            assert_eq!(failed, 0);
        }

        // The access log has the reads, with rows and no values.
        let (_, log) = s.call(Method::GET, "/v1/members/1/access-log?limit=1000", Some(s.member_secret(1)), None).await;
        let reads: Vec<&Value> = log.as_array().unwrap().iter().filter(|e| e["action"] == "read").collect();
        assert!(reads.len() >= 10, "{log}");
        assert!(reads.iter().all(|e| e["decision"] == "allowed" && e["dataset"] == E && e["agreement_version"] == 1));
        assert!(reads.iter().any(|e| e["rows"] == 262), "a read of all 262 rows is logged with its count");
        assert!(!log.to_string().contains("101.0"));

        // Several datasets joined by a bare `+` (a space once the query string is decoded).
        let both = format!("/api/pds/transaction/1.json?{q}&dataset={E}+ds_browsing_history");
        let (status, rows) = s.call(Method::GET, &both, Some(&token), None).await;
        assert_eq!(status, StatusCode::OK, "{rows}");
        assert_eq!(rows[E].as_object().unwrap().len(), 262);
        assert_eq!(rows["ds_browsing_history"], json!({}));
        s.stop().await;
    }
}

#[tokio::test]
async fn every_answer_format_round_trips() {
    let s = TestServer::spawn(Store::Sqlite).await;
    let token = s.subscriber_token("energy-co").await;
    deliver(&s, 1, 40, 2.5).await;
    s.flush().await;
    deliver(&s, 2, 60, 0.5).await;
    let sql = format!(
        "SELECT member_uid, id, field_energy_reading_value, field_energy_source_name FROM {E} ORDER BY member_uid, id"
    );
    let body = |accept: &'static str| {
        let (s, token, sql) = (&s, token.clone(), sql.clone());
        async move {
            let (status, headers, body) = s.sql_as(&token, "", &sql, accept).await;
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            assert_eq!(headers["content-type"], accept);
            body
        }
    };
    let json: Value = serde_json::from_slice(&body("application/json").await).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 100);
    assert_eq!(
        json[0],
        json!({"member_uid": 1, "id": 1, "field_energy_reading_value": 2.5, "field_energy_source_name": null})
    );
    let ndjson = String::from_utf8(body("application/x-ndjson").await).unwrap();
    let lines: Vec<Value> = ndjson.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(Value::Array(lines), json);
    let csv = String::from_utf8(body("text/csv").await).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("member_uid,id,field_energy_reading_value,field_energy_source_name"));
    assert_eq!(lines.next(), Some("1,1,2.5,"));
    assert_eq!(lines.count(), 99);

    let dir = tempfile::tempdir().unwrap();
    let arrow = dir.path().join("answer.arrow");
    let parquet = dir.path().join("answer.parquet");
    std::fs::write(&arrow, body("application/vnd.apache.arrow.stream").await).unwrap();
    std::fs::write(&parquet, body("application/vnd.apache.parquet").await).unwrap();
    let script = "import sys, pyarrow.ipc as ipc, pyarrow.parquet as pq\n\
        for t in (ipc.open_stream(open(sys.argv[1], 'rb')).read_all(), pq.read_table(sys.argv[2])):\n\
        \x20   print(t.num_rows, sum(t.column('field_energy_reading_value').to_pylist()), t.column('member_uid').type)";
    if let Some(out) = test_helpers::python(script, &[arrow.as_os_str(), parquet.as_os_str()]) {
        assert_eq!(out, "100 130.0 int64\n100 130.0 int64\n");
    }
    // An empty answer is still a well-formed one.
    let (status, _, empty) =
        s.sql_as(&token, "", &format!("SELECT id FROM {E} WHERE member_uid = 99"), "text/csv").await;
    assert_eq!((status, String::from_utf8(empty).unwrap().as_str()), (StatusCode::OK, "id\n"));
    let (status, empty) = s.sql(&token, &format!("SELECT id FROM {E} WHERE member_uid = 99")).await;
    assert_eq!((status, empty), (StatusCode::OK, json!([])));
    let (status, _, _) = s.sql_as(&token, "", "SELECT 1", "image/png").await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
}

#[tokio::test]
async fn limits_fail_cleanly_while_small_queries_answer() {
    let mut config = TestConfig::new(Store::Sqlite);
    config.query.query_memory_bytes = 32 << 20;
    config.query.timeout = Duration::from_secs(3);
    config.query.max_rows = 5000;
    config.query.per_subscriber = 2;
    let s = TestServer::start(config).await;
    let energy = s.subscriber_token("energy-co").await;
    let insight = s.subscriber_token("insight-ltd").await;
    deliver(&s, 1, 10, 1.0).await;
    let small = format!("SELECT count(*) AS n FROM {E}");

    let problem = |status: StatusCode, body: &Value, what: &str| {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        assert!(body["detail"].as_str().unwrap().contains(what), "{body}");
    };
    let memory = "SELECT count(DISTINCT a.value * 1000000 + b.value) FROM generate_series(1, 100000) a CROSS JOIN generate_series(1, 1000) b";
    let heavy = s.sql(&energy, memory);
    let light = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let (status, rows) = s.sql(&insight, &small).await;
        (status, rows, started.elapsed())
    };
    let ((status, body), (small_status, rows, took)) = tokio::join!(heavy, light);
    problem(status, &body, "memory");
    assert_eq!((small_status, rows), (StatusCode::OK, json!([{"n": 10}])), "a small query answers meanwhile");
    assert!(took < Duration::from_secs(3), "and is not held up: {took:?}");

    let (status, body) = s.sql(&energy, "SELECT count(*) FROM generate_series(1, 100000000000)").await;
    problem(status, &body, "longer than its limit");
    let (status, body) = s.sql(&energy, "SELECT * FROM generate_series(1, 100000)").await;
    problem(status, &body, "5000 rows");

    // A subscriber's queries beyond its cap get 429 with Retry-After.
    let slow = "SELECT count(*) FROM generate_series(1, 100000000000)";
    let hold = || s.sql(&energy, slow);
    let third = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.sql_as(&energy, "", &small, "application/json").await
    };
    // The Mydex read door takes the same slots.
    let mydex = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let path = format!("/api/pds/transaction/1.json?{}&dataset={E}", s.member_query(1, "energy-co"));
        let resp = s.client.get(s.url(&path)).bearer_auth(&energy).send().await.unwrap();
        (resp.status(), resp.headers().clone())
    };
    let (_, _, (status, headers, _), (mydex_status, mydex_headers)) = tokio::join!(hold(), hold(), third, mydex);
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(mydex_status, StatusCode::TOO_MANY_REQUESTS, "the Mydex door counts in the same slots");
    assert!(mydex_headers.contains_key("retry-after"));
    assert_eq!(s.sql(&energy, &small).await.0, StatusCode::OK, "slots come back when queries end");
}

/// The Mydex read door caps its answer's bytes as it builds it, as the SQL door caps its
/// encoded answer.
#[tokio::test]
async fn the_mydex_door_caps_its_answers_bytes() {
    let mut config = TestConfig::new(Store::Sqlite);
    config.query.max_bytes = 4096;
    let s = TestServer::start(config).await;
    let token = s.subscriber_token("energy-co").await;
    deliver(&s, 1, 10, 1.0).await;
    let path = format!("/api/pds/transaction/1.json?{}&dataset={E}", s.member_query(1, "energy-co"));
    let (status, rows) = s.call(Method::GET, &path, Some(&token), None).await;
    assert_eq!((status, rows.as_object().unwrap().len()), (StatusCode::OK, 10));
    deliver(&s, 1, 150, 1.0).await;
    let (status, body) = s.call(Method::GET, &path, Some(&token), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("4096 bytes"), "{body}");
}

#[tokio::test]
async fn read_entries_are_durable_at_once_and_reach_the_catalog() {
    let s = TestServer::spawn(Store::Sqlite).await;
    let token = s.subscriber_token("energy-co").await;
    deliver(&s, 1, 3, 1.0).await;
    assert_eq!(member_one(&s, &token).await.0, vec![1, 2, 3]);
    let is_read = |e: &catalog::AccessLogEntry| e.action == catalog::AccessAction::Read && e.rows == 3;
    // Durable in the write-ahead log: the member sees the read at once.
    let (_, log) = s.call(Method::GET, "/v1/members/1/access-log", Some(s.member_secret(1)), None).await;
    let log: Vec<catalog::AccessLogEntry> = serde_json::from_value(log).unwrap();
    assert_eq!(log.iter().filter(|e| is_read(e)).count(), 1, "{log:?}");
    // Flushing empties the buffer, the writer moves to a new segment, and the entries move
    // to the catalog before their segment is deleted.
    let member = catalog::MemberId::new(1).unwrap();
    for _ in 0..40 {
        s.flush().await;
        if s.catalog.access_log(member, 100).await.unwrap().iter().any(is_read) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.catalog.access_log(member, 100).await.unwrap().iter().filter(|e| is_read(e)).count(), 1);
    let (_, log) = s.call(Method::GET, "/v1/members/1/access-log", Some(s.member_secret(1)), None).await;
    let log: Vec<catalog::AccessLogEntry> = serde_json::from_value(log).unwrap();
    assert_eq!(log.iter().filter(|e| is_read(e)).count(), 1, "moved, not copied");
}

#[tokio::test]
async fn files_another_node_flushes_and_compacts_are_read() {
    let s = TestServer::spawn(Store::Sqlite).await;
    let token = s.subscriber_token("energy-co").await;
    deliver(&s, 1, 3, 1.0).await;
    // A second node: its own WAL, the same catalog and object store.
    let config = ingest::IngestConfig {
        wal_dir: s.dir.path().join("wal-node-2"),
        durability: ingest::wal::Durability::Fsync,
        segment_bytes: 1 << 20,
        buffer_bytes: 64 << 20,
        buffer_soft_bytes: 32 << 20,
        flush_age: Duration::from_secs(3600),
        flush_bytes: 8 << 20,
        flush_tick: Duration::from_secs(3600),
        compaction: ingest::compact::CompactionConfig { min_files: 2, ..Default::default() },
        compact_interval: Duration::from_secs(3600),
        inflight_bytes: 64 << 20,
        max_rows_per_write: 1_000_000,
        memory_limit: None,
    };
    let node2 = ingest::Ingester::open(config, s.catalog.clone(), s.objects.clone()).await.unwrap();
    let dataset = std::sync::Arc::new(s.catalog.dataset(&E.parse().unwrap()).await.unwrap());
    let schema = node2.schema(&dataset).unwrap();
    let connection = catalog::ConnectionId::new(s.creds.subscribers[0].connection.id).unwrap();
    for batch in 0..2 {
        let rows: Vec<serde_json::Map<String, Value>> = (0..5)
            .map(|i| {
                let t = now_secs() - 3600 + batch * 600 + i;
                json!({"member_uid": 2, "field_energy_reading_timestamp": t, "field_energy_reading_value": 2.0})
                    .as_object()
                    .unwrap()
                    .clone()
            })
            .collect();
        let batch = ingest::decode::decode_objects(
            &schema,
            &rows,
            &mut ingest::decode::Budget { max_rows: usize::MAX, memory: &mut |_| true },
        )
        .unwrap();
        node2.write(schema.clone(), catalog::DataEnvironment::Production, connection, batch).await.unwrap();
        assert_eq!(node2.flush_round(true).await, 0);
    }
    let counts = || {
        let (s, token) = (&s, token.clone());
        async move {
            let (status, rows) = s
                .sql(
                    &token,
                    &format!("SELECT member_uid, count(*) AS n FROM {E} GROUP BY member_uid ORDER BY member_uid"),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
            rows
        }
    };
    // The first node follows the manifest's change feed on its flusher's next ticks.
    let expected = json!([{"member_uid": 1, "n": 3}, {"member_uid": 2, "n": 10}]);
    let mut seen = Value::Null;
    for _ in 0..100 {
        seen = counts().await;
        if seen == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, expected, "the other node's flushed files");
    // The other node settles its two hot files into per-member files: still every row once.
    assert_eq!(node2.settle_hot_files().await.unwrap(), 2);
    for _ in 0..20 {
        assert_eq!(counts().await, expected, "during and after the other node's settling");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let indexed = s.ingester.buffer().snapshot(
        catalog::DataEnvironment::Production,
        &dataset.name,
        [catalog::MemberId::new(2).unwrap()],
    );
    assert_eq!(indexed.members[0].1.files.len(), 1, "the settled file joined the index");
    assert!(indexed.hot.is_empty(), "the replaced hot files left the index");
    node2.shutdown().await.unwrap();
}

/// Refusals are logged through the WAL's grouped appends, as reads are: a loop of refused
/// requests neither waits on the catalog's writer nor competes for it with approvals and
/// revocations. Here another connection holds SQLite's write lock while they are answered.
#[tokio::test]
async fn refusals_do_not_wait_for_the_catalogs_writer() {
    use sqlx::Connection;
    let s = TestServer::spawn(Store::Sqlite).await;
    let token = s.subscriber_token("energy-co").await;
    let q = s.member_query(1, "energy-co");
    let url = catalog::Catalog::sqlite_url(&s.dir.path().join("catalog.db"));
    let mut writer = sqlx::sqlite::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut writer).await.unwrap();
    let refusals = async {
        for _ in 0..10 {
            assert_eq!(s.sql(&token, &format!("DROP TABLE {E}")).await.0, StatusCode::BAD_REQUEST);
            let path = format!("/api/pds/transaction/1.json?{q}&dataset=ds_passport");
            assert_eq!(s.call(Method::GET, &path, Some(&token), None).await.0, StatusCode::FORBIDDEN);
        }
    };
    let answered = tokio::time::timeout(Duration::from_secs(5), refusals).await;
    sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
    answered.expect("refusals are answered while the catalog's writer is taken");
    s.settle_access_log().await;
    let connection = catalog::ConnectionId::new(s.creds.subscribers[0].connection.id).unwrap();
    let log = s.catalog.connection_access_log(connection, 1000).await.unwrap();
    let refused = log.iter().filter(|e| e.decision == catalog::AccessDecision::Refused).count();
    assert_eq!(refused, 20, "every refusal reached the access log");
}

/// A hot file holds every member's rows, their ids overlapping (each member's start at 1):
/// each read gets exactly its members' rows, with the decoded-file cache (a member's run
/// sliced out) and without it (pages pruned by member, then every row checked), the access
/// log counts the rows read from it, and a revoked member's rows leave the next read.
#[tokio::test]
async fn a_hot_file_shows_each_reader_only_its_members_rows() {
    for cache_bytes in [64 << 20, 0] {
        let mut config = TestConfig::new(Store::Sqlite);
        config.query.file_cache_bytes = cache_bytes;
        let s = TestServer::start(config).await;
        let token = s.subscriber_token("energy-co").await;
        for member in 1..=9 {
            deliver(&s, member, member as usize, member as f64).await;
        }
        s.flush().await;
        let files = s.catalog.all_parquet_files().await.unwrap();
        assert_eq!(files.iter().map(|f| (f.member, f.rows)).collect::<Vec<_>>(), [(None, 45)], "one hot file");
        let per_member = || {
            let (s, token) = (&s, token.clone());
            async move {
                let sql = format!(
                    "SELECT member_uid AS m, count(*) AS n, sum(field_energy_reading_value) AS v, max(id) AS top \
                     FROM {E} GROUP BY member_uid ORDER BY member_uid"
                );
                let (status, rows) = s.sql(&token, &sql).await;
                assert_eq!(status, StatusCode::OK, "{rows}");
                rows.as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        (
                            r["m"].as_i64().unwrap(),
                            r["n"].as_i64().unwrap(),
                            r["v"].as_f64().unwrap(),
                            r["top"].as_i64().unwrap(),
                        )
                    })
                    .collect::<Vec<_>>()
            }
        };
        let all: Vec<_> = (1..=9).map(|m| (m, m, (m * m) as f64, m)).collect();
        assert_eq!(per_member().await, all, "cache {cache_bytes}: every member's rows once, nobody else's");
        assert_eq!(member_one(&s, &token).await, (vec![1], 1.0), "cache {cache_bytes}: one member's read");
        let q = s.member_query(5, "energy-co");
        let (status, rows) =
            s.call(Method::GET, &format!("/api/pds/transaction/5.json?{q}&dataset={E}"), Some(&token), None).await;
        assert_eq!(status, StatusCode::OK, "{rows}");
        let rows = rows.as_object().unwrap();
        assert_eq!(rows.len(), 5, "cache {cache_bytes}: the Mydex door, member 5's rows");
        assert!(rows.values().all(|r| r["field_energy_reading_value"] == "5.0"), "{rows:?}");
        s.settle_access_log().await;
        let (_, log) = s.call(Method::GET, "/v1/members/4/access-log", Some(s.member_secret(4)), None).await;
        let log: Vec<catalog::AccessLogEntry> = serde_json::from_value(log).unwrap();
        assert!(log.iter().any(|e| e.action == catalog::AccessAction::Read && e.rows == 4), "{log:?}");
        let conn = s.creds.subscribers[0].connection.id;
        let revoke = format!("/v1/members/5/agreements/{conn}/revoke");
        assert_eq!(s.call(Method::POST, &revoke, Some(s.member_secret(5)), None).await.0, StatusCode::OK);
        let left: Vec<_> = all.iter().copied().filter(|r| r.0 != 5).collect();
        assert_eq!(per_member().await, left, "cache {cache_bytes}: the revoked member's hot rows are gone");
        s.stop().await;
    }
}
