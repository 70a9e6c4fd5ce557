//! The isolation suite: several members and subscribers with different agreements
//! (different datasets, different fields, a revoked one, an edited one with members on two
//! versions, a sandbox one), a distinctive canary planted in every text field of every row,
//! then a corpus of escape attempts through both read doors and generated queries. No canary
//! a caller must not see may appear in any body or header; no attempt may get a 5xx; every
//! refusal is in the access log.

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;
use test_helpers::{Store, TestServer, now_secs, stores};

const E: &str = "ds_energy_consumption";
const B: &str = "ds_bank_account_transactions";
const DATASETS: [(&str, &[&str]); 2] = [
    (E, &["field_energy_source_index_id", "field_energy_source_name", "field_energy_source_type"]),
    (B, &["ba_transaction_description", "ba_transaction_type"]),
];
const MEMBERS: i64 = 10;
/// Generated queries per reader and catalog backend: four readers make 10,000 a backend.
const GENERATED_PER_READER: usize = 2_500;

/// The value planted in `field` of member `member`'s rows of dataset `d` in environment
/// `env` (`P`roduction or `S`andbox): unique, and unlike anything a query would make up.
fn canary(env: char, member: i64, d: usize, f: usize) -> String {
    format!("ZQ{env}{member:02}{d}{f}QZ")
}

/// `rows` rows per member of dataset `d`, every text field a canary.
fn planted(env: char, d: usize, rows: i64) -> Vec<u8> {
    let (dataset, fields) = DATASETS[d];
    let mut out = String::new();
    for member in 1..=MEMBERS {
        for i in 0..rows {
            let mut row = json!({"member_uid": member});
            if dataset == E {
                row["field_energy_reading_timestamp"] = json!(now_secs() - 3600 + i);
                row["field_energy_reading_value"] = json!(1.5);
            } else {
                row["ba_transaction_value"] = json!("12.50");
            }
            for (f, field) in fields.iter().enumerate() {
                row[*field] = json!(canary(env, member, d, f));
            }
            out.push_str(&format!("{row}\n"));
        }
    }
    out.into_bytes()
}

/// Who reads, and which canaries it may see.
struct Reader {
    name: &'static str,
    token: String,
    connection: i64,
    visible: Box<dyn Fn(char, i64, usize, usize) -> bool>,
    /// Mydex door: `(uid, con_id=..&key=..)` of a member it may read.
    member: Option<(i64, String)>,
}

impl Reader {
    fn forbidden(&self) -> Vec<String> {
        let mut out = Vec::new();
        for env in ['P', 'S'] {
            for member in 1..=MEMBERS {
                for (d, (_, fields)) in DATASETS.iter().enumerate() {
                    for f in 0..fields.len() {
                        if !(self.visible)(env, member, d, f) {
                            out.push(canary(env, member, d, f));
                        }
                    }
                }
            }
        }
        out
    }
}

/// Tallies of one reader's attempts.
#[derive(Default)]
struct Tally {
    attempts: usize,
    generated: usize,
    sql_refused: usize,
    mydex_refused: usize,
}

fn check_leaks(
    reader: &Reader,
    forbidden: &[String],
    what: &str,
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) {
    assert!(!status.is_server_error(), "{}: {what} got {status}: {}", reader.name, String::from_utf8_lossy(body));
    let body = String::from_utf8_lossy(body);
    let headers = format!("{headers:?}");
    for c in forbidden {
        assert!(
            !body.contains(c.as_str()) && !headers.contains(c.as_str()),
            "{}: {what} leaked {c}: {body}",
            reader.name
        );
    }
}

/// The hand-written escape corpus. `{file}` is a real Parquet file of a member no reader but
/// energy-co may see, `{dir}` the object store's directory.
fn corpus(file: &str, dir: &str) -> Vec<String> {
    let e = E;
    let b = B;
    let raw = [
        format!("SELECT * FROM {e}"),
        format!("SELECT * FROM {b}"),
        format!("SELECT * FROM {e} WHERE member_uid = 10"),
        format!("SELECT * FROM {e} WHERE member_uid IN (3, 10) OR 1 = 1"),
        format!("SELECT field_energy_source_name FROM {e}"),
        format!("SELECT _version, * FROM {e}"),
        format!("SELECT * FROM {e} UNION ALL SELECT * FROM {e}"),
        format!("SELECT (SELECT max(field_energy_source_name) FROM {e}) AS x"),
        format!("SELECT * FROM {e} x JOIN {b} y ON x.member_uid = y.member_uid"),
        format!("SELECT * FROM {e} WHERE member_uid NOT IN (SELECT member_uid FROM {b})"),
        format!("SELECT string_agg(field_energy_source_name, ',') FROM {e}"),
        format!("WITH t AS (SELECT * FROM {e}) SELECT * FROM t, t AS u LIMIT 50"),
        format!("SELECT * FROM datafusion.public.{e}"),
        format!("SELECT * FROM other.public.{e}"),
        format!("SELECT * FROM \"{e}\""),
        "SELECT * FROM \"DS_ENERGY_CONSUMPTION\"".to_string(),
        "SELECT * FROM ds_passport".into(),
        "SELECT * FROM ds_referrals".into(),
        "SELECT * FROM information_schema.tables".into(),
        "SELECT * FROM information_schema.columns".into(),
        "SHOW TABLES".into(),
        format!("SHOW COLUMNS FROM {e}"),
        format!("DESCRIBE {e}"),
        format!("EXPLAIN SELECT * FROM {e}"),
        format!("EXPLAIN ANALYZE SELECT * FROM {e}"),
        format!("EXPLAIN VERBOSE SELECT * FROM {e} WHERE member_uid = 10"),
        format!("COPY {e} TO '/tmp/trove-escape.csv'"),
        "COPY (SELECT 1) TO '/tmp/trove-escape.parquet'".into(),
        format!("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{file}'"),
        format!("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{dir}'"),
        format!("CREATE TABLE t AS SELECT * FROM {e}"),
        "CREATE VIEW v AS SELECT 1".into(),
        format!("INSERT INTO {e} (member_uid) VALUES (10)"),
        format!("DELETE FROM {e}"),
        format!("DROP TABLE {e}"),
        "SET datafusion.catalog.information_schema = true".into(),
        "SET datafusion.catalog.information_schema = true; SELECT * FROM information_schema.tables".into(),
        format!("SELECT 1; SELECT * FROM {e}"),
        format!("SELECT * FROM read_parquet('{file}')"),
        "SELECT * FROM read_csv('/etc/passwd')".into(),
        format!("SELECT * FROM '{file}'"),
        format!("SELECT * FROM \"{file}\""),
        format!("SELECT * FROM 'file://{file}'"),
        format!("SELECT * FROM '{dir}/production/{e}/10/'"),
        "SELECT * FROM 's3://trove-test/production/ds_energy_consumption/10/'".into(),
        "PREPARE p AS SELECT 1".into(),
        "SELECT * FROM generate_series(1, 3)".into(),
        "SELECT * FROM unnest([1, 2])".into(),
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r".into(),
        format!("SELECT * FROM {e} -- ; DROP TABLE {e}"),
        format!("/* */ SELECT * FROM {e} WHERE id = -1 OR 1 = 1"),
        format!("SELECT arrow_typeof(member_uid), version() FROM {e} LIMIT 1"),
        format!("SELECT * FROM {e} WHERE field_energy_source_name LIKE 'ZQ%'"),
        format!("SELECT * FROM {e} ORDER BY member_uid DESC LIMIT 5"),
    ];
    raw.into_iter().collect()
}

/// Generated escape attempts, deterministic per seed: a small SQL grammar over tables and
/// columns each reader may or may not see (other datasets, ungranted fields, the row
/// version, qualified and quoted names), expressions that copy or test values (casts,
/// concatenation, aggregates, window functions, `CASE`, `LIKE` oracles on canaries), filters
/// naming other members, and every way of combining them (`UNION`, `INTERSECT`, `EXCEPT`,
/// joins, `IN`/`EXISTS` subqueries, scalar subqueries, CTEs, `VALUES`).
fn generated(n: usize, seed: u64) -> Vec<String> {
    let mut state = seed;
    let mut next = |m: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % m
    };
    let tables = [
        E,
        B,
        E,
        B,
        "ds_browsing_history",
        "ds_referrals",
        "ds_passport",
        "ds_personal_details",
        "\"ds_energy_consumption\"",
        "DS_ENERGY_CONSUMPTION",
        "public.ds_energy_consumption",
        "datafusion.public.ds_energy_consumption",
        "trove.public.ds_bank_account_transactions",
        "information_schema.columns",
    ];
    let columns = [
        "*",
        "member_uid",
        "id",
        "instance",
        "_version",
        "field_energy_source_name",
        "field_energy_source_type",
        "field_energy_source_index_id",
        "ba_transaction_description",
        "ba_transaction_type",
        "field_energy_reading_value",
    ];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let t = tables[next(tables.len())];
        let t2 = tables[next(tables.len())];
        let c = columns[next(columns.len())];
        let c2 = columns[1 + next(columns.len() - 1)];
        let (m1, m2) = (1 + next(12), 1 + next(12));
        let canary_guess = format!("ZQ{}{m1:02}{}{}QZ", ['P', 'S'][next(2)], next(2), next(3));
        let expr = match next(10) {
            0 => c.to_owned(),
            1 => format!("upper({c2})"),
            2 => format!("CAST({c2} AS VARCHAR) || '|'"),
            3 => format!("coalesce({c2}, 'none')"),
            4 => format!("max({c2})"),
            5 => format!("string_agg(CAST({c2} AS VARCHAR), ',')"),
            6 => format!("count(DISTINCT {c2})"),
            7 => format!("row_number() OVER (PARTITION BY member_uid ORDER BY {c2})"),
            8 => format!("CASE WHEN {c2} LIKE 'ZQ%' THEN 1 ELSE 0 END"),
            _ => format!("(SELECT max({c2}) FROM {t2})"),
        };
        let filter = match next(10) {
            0 | 1 => String::new(),
            2 => format!(" WHERE member_uid = {m1}"),
            3 => format!(" WHERE member_uid IN ({m1}, {m2}) OR 1 = 1"),
            4 => format!(" WHERE id > {} AND member_uid <> {m2}", next(3)),
            5 => format!(" WHERE {c2} = '{canary_guess}'"),
            6 => format!(" WHERE {c2} LIKE 'ZQ{}%'", ['P', 'S'][next(2)]),
            7 => format!(" WHERE member_uid IN (SELECT member_uid FROM {t2} WHERE member_uid = {m2})"),
            8 => format!(" WHERE EXISTS (SELECT 1 FROM {t2} x WHERE x.member_uid = {m1})"),
            _ => format!(" WHERE _version > 0 OR member_uid = {m1}"),
        };
        let aggregate = expr.starts_with("max(") || expr.starts_with("string_agg(") || expr.starts_with("count(");
        let select = if aggregate {
            format!("SELECT member_uid, {expr} FROM {t}{filter} GROUP BY member_uid")
        } else {
            format!("SELECT {expr} FROM {t}{filter}")
        };
        let sql = match next(10) {
            0..=2 => select,
            3 => format!("{select} UNION ALL SELECT {c} FROM {t2}"),
            4 => format!("{select} INTERSECT SELECT {c} FROM {t2}"),
            5 => format!("{select} EXCEPT SELECT {c} FROM {t2} WHERE member_uid = {m2}"),
            6 => format!("SELECT a.*, b.{c2} FROM {t} a JOIN {t2} b ON a.member_uid = b.member_uid{filter}"),
            7 => format!("WITH w AS ({select}) SELECT * FROM w ORDER BY 1 DESC LIMIT {}", 1 + next(50)),
            8 => format!("SELECT * FROM (VALUES ({m1}), ({m2})) v(m) LEFT JOIN {t} ON {t}.member_uid = v.m"),
            _ => format!("/* {canary_guess} */ {select} -- ; SELECT * FROM {t2}"),
        };
        out.push(sql);
    }
    out
}

#[tokio::test]
async fn no_caller_reads_outside_its_agreements() {
    for store in stores() {
        run(store).await;
    }
}

async fn run(store: Store) {
    let s = TestServer::spawn(store).await;
    let admin = s.admin().to_owned();
    let insight_conn = s.creds.subscribers[1].connection.id;

    // The planter delivers every member's rows, in production and in the sandbox.
    let planter = s.new_subscriber("planter").await;
    let live = s.new_connection(&planter, test_helpers::terms("planter", &[E, B]), true).await;
    let sandbox = s.new_connection(&planter, test_helpers::terms("planter sandbox", &[E, B]), false).await;
    for uid in 1..=MEMBERS {
        s.agree(uid, live.id).await;
        s.agree(uid, sandbox.id).await;
    }
    let deliver = |conn: &test_helpers::TestConnection, env: char, rows: i64| {
        let bearer = conn.bearer();
        let s = &s;
        async move {
            for (d, (dataset, _)) in DATASETS.iter().enumerate() {
                let resp = s
                    .client
                    .post(s.url(&format!("/v1/ingest/{dataset}")))
                    .bearer_auth(&bearer)
                    .header("content-type", "application/x-ndjson")
                    .body(planted(env, d, rows))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await.unwrap());
            }
        }
    };
    // Rows in every place a read finds them: settled per-member files, hot files (every
    // member's rows in one file), and the ingest buffer.
    deliver(&live, 'P', 1).await;
    deliver(&sandbox, 'S', 1).await;
    s.settle().await;
    deliver(&live, 'P', 1).await;
    deliver(&sandbox, 'S', 1).await;
    s.flush().await;
    deliver(&live, 'P', 1).await;
    deliver(&sandbox, 'S', 1).await;

    // insight-ltd: member 3 approves and revokes; a new revision grants the appliance name,
    // which member 4 approves while member 1 stays on the first revision.
    s.agree(3, insight_conn).await;
    let (status, _) = s
        .call(Method::POST, &format!("/v1/members/3/agreements/{insight_conn}/revoke"), Some(s.member_secret(3)), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let insight = s.subscriber_token("insight-ltd").await;
    let (_, current) = s.call(Method::GET, &format!("/v1/connections/{insight_conn}"), Some(&insight), None).await;
    let mut v2 = current["revisions"][0]["terms"].clone();
    v2["datasets"][E]["read"] = json!(["*"]);
    assert_eq!(
        s.call(Method::PUT, &format!("/v1/connections/{insight_conn}"), Some(&insight), Some(v2)).await.0,
        StatusCode::OK
    );
    s.call(Method::POST, &format!("/v1/connections/{insight_conn}/submit"), Some(&insight), None).await;
    assert_eq!(
        s.call(Method::POST, &format!("/v1/connections/{insight_conn}/approve"), Some(&admin), None).await.0,
        StatusCode::OK
    );
    let insight_member4 = s.agree(4, insight_conn).await;

    // A sandbox reader of energy readings, for members 1 and 2.
    let sandboxer = s.new_subscriber("sandbox-reader").await;
    let mut terms = test_helpers::terms("sandbox reader", &[E]);
    terms["datasets"][E]["write"] = json!([]);
    let sandbox_reader = s.new_connection(&sandboxer, terms, false).await;
    let sandbox_member = s.agree(1, sandbox_reader.id).await;
    s.agree(2, sandbox_reader.id).await;

    let readers = vec![
        Reader {
            name: "energy-co",
            token: s.subscriber_token("energy-co").await,
            connection: s.creds.subscribers[0].connection.id,
            visible: Box::new(|env, member, _, _| env == 'P' && member <= 9),
            member: Some((1, s.member_query(1, "energy-co"))),
        },
        Reader {
            name: "insight-ltd",
            token: insight.clone(),
            connection: insight_conn,
            // Member 1 is on revision 1 (no appliance name, field 1); member 4 on revision 2.
            visible: Box::new(|env, member, d, f| env == 'P' && d == 0 && ((member == 1 && f != 1) || member == 4)),
            member: Some((4, insight_member4)),
        },
        Reader {
            name: "care-services",
            token: s.subscriber_token("care-services").await,
            connection: s.creds.subscribers[2].connection.id,
            visible: Box::new(|_, _, _, _| false),
            member: Some((1, s.member_query(1, "care-services"))),
        },
        Reader {
            name: "sandbox-reader",
            token: sandboxer.clone(),
            connection: sandbox_reader.id,
            visible: Box::new(|env, member, d, _| env == 'S' && d == 0 && member <= 2),
            member: Some((1, sandbox_member)),
        },
    ];

    let member10_file = s
        .catalog
        .all_parquet_files()
        .await
        .unwrap()
        .into_iter()
        .find(|f| f.member.is_none_or(|m| m.get() == 10) && f.environment == catalog::DataEnvironment::Production)
        .expect("a file holds member 10's rows");
    let dir = s.dir.path().join("objects");
    let file = dir.join(&member10_file.path).display().to_string();
    let corpus = corpus(&file, &dir.display().to_string());

    for reader in &readers {
        let forbidden = reader.forbidden();
        let mut tally = Tally::default();
        // The baseline: every canary the reader may see is there (the test can fail).
        let mut seen = String::new();
        for (dataset, _) in DATASETS {
            let (status, _, body) =
                s.sql_as(&reader.token, "", &format!("SELECT * FROM {dataset}"), "application/json").await;
            check_leaks(reader, &forbidden, "baseline", status, &Default::default(), &body);
            tally.sql_refused += usize::from(status == StatusCode::BAD_REQUEST);
            seen.push_str(&String::from_utf8_lossy(&body));
        }
        for env in ['P', 'S'] {
            for member in 1..=MEMBERS {
                for (d, (_, fields)) in DATASETS.iter().enumerate() {
                    for f in 0..fields.len() {
                        if (reader.visible)(env, member, d, f) {
                            assert!(
                                seen.contains(&canary(env, member, d, f)),
                                "{} misses {}",
                                reader.name,
                                canary(env, member, d, f)
                            );
                        }
                    }
                }
            }
        }
        for (i, sql) in corpus.iter().enumerate() {
            let accept = ["application/json", "text/csv", "application/x-ndjson"][i % 3];
            let (status, headers, body) = s.sql_as(&reader.token, "", sql, accept).await;
            check_leaks(reader, &forbidden, sql, status, &headers, &body);
            tally.attempts += 1;
            if status == StatusCode::BAD_REQUEST {
                tally.sql_refused += 1;
            }
        }
        // Generated attempts, four at a time (the per-subscriber query limit).
        let attempts = generated(GENERATED_PER_READER, reader.connection as u64);
        let answers: Vec<_> = futures::stream::iter(attempts.iter().enumerate())
            .map(|(i, sql)| {
                let accept =
                    ["application/json", "text/csv", "application/x-ndjson", "application/vnd.apache.arrow.stream"]
                        [i % 4];
                let (s, token) = (&s, reader.token.as_str());
                async move { (sql, s.sql_as(token, "", sql, accept).await) }
            })
            .buffer_unordered(4)
            .collect()
            .await;
        for (sql, (status, headers, body)) in answers {
            check_leaks(reader, &forbidden, sql, status, &headers, &body);
            assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "{}: within the query limit", reader.name);
            tally.attempts += 1;
            tally.generated += 1;
            // A query that planned, read and then failed (a cast of a canary, say) is an
            // allowed read in the access log, not a refusal.
            if status == StatusCode::BAD_REQUEST
                && !String::from_utf8_lossy(&body).contains("the query failed while running")
            {
                tally.sql_refused += 1;
            }
        }
        // A connection that is not the reader's own is refused outright.
        let other = readers.iter().find(|r| r.connection != reader.connection).unwrap().connection;
        let (status, headers, body) = s
            .sql_as(&reader.token, &format!("?connection={other}"), &format!("SELECT * FROM {E}"), "application/json")
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        check_leaks(reader, &forbidden, "forged connection", status, &headers, &body);

        // The Mydex door.
        let (uid, q) = reader.member.clone().unwrap();
        let mydex = |path: String| {
            let (s, token) = (&s, reader.token.clone());
            async move {
                let resp = s.client.get(s.url(&path)).bearer_auth(token).send().await.unwrap();
                let (status, headers) = (resp.status(), resp.headers().clone());
                (status, headers, resp.bytes().await.unwrap().to_vec())
            }
        };
        let nid_of_q =
            q.split("con_id=").nth(1).unwrap().split('&').next().unwrap().split('-').nth(1).unwrap().to_owned();
        let key_of_q = q.split("key=").nth(1).unwrap().split('&').next().unwrap().to_owned();
        let attempts = [
            format!("/api/pds/transaction/{uid}.json?{q}&dataset={E}"),
            format!("/api/pds/transaction/{uid}.xml?{q}&dataset={E}%2B{B}"),
            format!("/api/pds/transaction/{uid}.json?{q}&dataset={B}"),
            format!("/api/pds/transaction/{uid}.json?{q}&dataset=field_{E}"),
            format!(
                "/api/pds/transaction/{uid}.json?{q}&dataset={E}&filters%5Bfield_energy_source_name%5D%5Bvalue%5D=x"
            ),
            format!("/api/pds/transaction/{uid}.json?{q}&dataset={E}&filters%5Bmember_uid%5D%5Bvalue%5D=10"),
            format!(
                "/api/pds/transaction/{uid}.json?{q}&dataset={E}&filters%5Bfield_energy_source_type%5D%5Bvalue%5D=%27%20OR%201%3D1%20--"
            ),
            format!(
                "/api/pds/transaction/{uid}.json?{q}&dataset={E}&filters%5Bid%5D%5Boperator%5D=%3E&filters%5Bid%5D%5Bvalue%5D=0"
            ),
            format!("/api/pds/transaction/{uid}.json?{q}&dataset={E}&filters%5B_version%5D%5Bvalue%5D=1"),
            format!("/api/pds/transaction/10.json?{q}&dataset={E}"),
            format!("/api/pds/transaction/10.json?con_id=10-{nid_of_q}&key={key_of_q}&dataset={E}"),
            format!("/api/pds/transaction/3.json?con_id=3-{nid_of_q}&key={key_of_q}&dataset={E}"),
            format!("/api/pds/transaction/{uid}.json?con_id={uid}-{nid_of_q}&key=forged&dataset={E}"),
            format!("/api/pds/transaction/{uid}.json?{q}&dataset=ds_passport"),
        ];
        for path in attempts {
            let (status, headers, body) = mydex(path.clone()).await;
            check_leaks(reader, &forbidden, &path, status, &headers, &body);
            tally.attempts += 1;
            if status == StatusCode::FORBIDDEN {
                tally.mydex_refused += 1;
            }
        }

        // Every refusal is in the access log, against the reader's connection.
        s.settle_access_log().await;
        let id = catalog::ConnectionId::new(reader.connection).unwrap();
        let log = s.catalog.connection_access_log(id, 1_000_000).await.unwrap();
        let refused = |with_member: bool| {
            log.iter()
                .filter(|e| e.decision == catalog::AccessDecision::Refused && e.member.is_some() == with_member)
                .count()
        };
        assert_eq!(refused(false), tally.sql_refused, "{}: SQL refusals logged", reader.name);
        assert_eq!(refused(true), tally.mydex_refused, "{}: Mydex refusals logged", reader.name);
        assert!(tally.sql_refused > 40, "{}: the corpus holds refusals", reader.name);
        println!(
            "isolation {store:?} {}: {} attempts ({} generated), {} SQL and {} Mydex refusals, all in the access log, 0 leaks",
            reader.name, tally.attempts, tally.generated, tally.sql_refused, tally.mydex_refused
        );
    }

    // A revocation takes effect on the next request.
    let energy = &readers[0];
    let conn = energy.connection;
    let (status, _) =
        s.call(Method::POST, &format!("/v1/members/2/agreements/{conn}/revoke"), Some(s.member_secret(2)), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = s.sql_as(&energy.token, "", &format!("SELECT * FROM {E}"), "application/json").await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(&canary('P', 1, 0, 0)) && !body.contains(&canary('P', 2, 0, 0)), "member 2 is gone at once");
    let (status, v) = s
        .call(
            Method::GET,
            &format!("/api/pds/transaction/2.json?{}&dataset={E}", s.member_query(2, "energy-co")),
            Some(&energy.token),
            None,
        )
        .await;
    assert_eq!((status, v.to_string().contains("ZQ")), (StatusCode::UNAUTHORIZED, false));
}

/// A revocation under load: readers and writers on every door (SQL, the Mydex read and
/// write, `/v1/ingest`) hammer member 2's data while member 2 revokes. Every request that
/// starts after the revocation has answered is refused: its reads see none of the member's
/// rows and its writes store nothing, with every cache warm, on each catalog backend.
#[tokio::test]
async fn a_revocation_under_load_stops_every_request_that_starts_after_it() {
    for store in stores() {
        revocation_under_load(store).await;
    }
}

async fn revocation_under_load(store: Store) {
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::{Duration, Instant};
    let s = Arc::new(TestServer::spawn(store).await);
    let token = s.subscriber_token("energy-co").await;
    let conn = s.creds.subscribers[0].connection.clone();
    let q2 = s.member_query(2, "energy-co");
    let row = |i: i64| json!({"member_uid": 2, "field_energy_reading_timestamp": now_secs() - 7200 + i, "field_energy_reading_value": 1.0});
    let rows: String = (0..20).map(|i| format!("{}\n", row(i))).collect();
    assert_eq!(s.ingest(E, "application/x-ndjson", rows.clone().into_bytes()).await.0, StatusCode::OK);
    s.flush().await;
    assert_eq!(s.ingest(E, "application/x-ndjson", rows.into_bytes()).await.0, StatusCode::OK);
    let before_rows = 40;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Door {
        Sql,
        MydexRead,
        MydexWrite,
        Ingest,
    }
    let outcomes: Arc<Mutex<Vec<(Door, Instant, bool)>>> = Arc::default();
    let revoked: Arc<OnceLock<Instant>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for door in [Door::Sql, Door::MydexRead, Door::MydexWrite, Door::Ingest] {
        for _ in 0..2 {
            let (s, token, q2, conn, outcomes, stop) =
                (s.clone(), token.clone(), q2.clone(), conn.clone(), outcomes.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                let mut i = 1000;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let started = Instant::now();
                    let allowed = match door {
                        Door::Sql => {
                            let (status, body) = s.sql(&token, &format!("SELECT count(*) AS n FROM {E} WHERE member_uid = 2")).await;
                            assert_eq!(status, StatusCode::OK, "{body}");
                            body[0]["n"].as_i64().unwrap() > 0
                        }
                        Door::MydexRead => {
                            let path = format!("/api/pds/transaction/2.json?{q2}&dataset={E}");
                            let (status, body) = s.call(Method::GET, &path, Some(&token), None).await;
                            assert!(status == StatusCode::OK || status == StatusCode::UNAUTHORIZED, "{status} {body}");
                            status == StatusCode::OK
                        }
                        Door::MydexWrite => {
                            let body = json!({E: {"field_energy_reading_timestamp": now_secs() - 3600 + i, "field_energy_reading_value": 2.0}});
                            let (status, answer) = s.call(Method::POST, &format!("/api/pds/transaction?uid=2&{q2}"), Some(&token), Some(body)).await;
                            assert!(status == StatusCode::OK || status == StatusCode::UNAUTHORIZED, "{status} {answer}");
                            status == StatusCode::OK
                        }
                        Door::Ingest => {
                            let body = format!("{}\n", json!({"member_uid": 2, "field_energy_reading_timestamp": now_secs() - 3600 + i}));
                            let resp = s.client.post(s.url(&format!("/v1/ingest/{E}"))).bearer_auth(format!("{}:{}", conn.nid, conn.key)).header("content-type", "application/x-ndjson").body(body).send().await.unwrap();
                            let status = resp.status();
                            assert!(status == StatusCode::OK || status == StatusCode::FORBIDDEN, "{status}");
                            status == StatusCode::OK
                        }
                    };
                    outcomes.lock().unwrap().push((door, started, allowed));
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let path = format!("/v1/members/2/agreements/{}/revoke", conn.id);
    let (status, _) = s.call(Method::POST, &path, Some(s.member_secret(2)), None).await;
    assert_eq!(status, StatusCode::OK);
    revoked.set(Instant::now()).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let revoked = *revoked.get().unwrap();
    let outcomes = outcomes.lock().unwrap().clone();
    let mut tally: std::collections::BTreeMap<Door, (usize, usize, usize)> = Default::default();
    for (door, started, allowed) in &outcomes {
        let t = tally.entry(*door).or_default();
        if *started > revoked {
            t.1 += 1;
            assert!(!allowed, "{door:?}: a request that started after the revocation was allowed");
        } else if *allowed {
            t.0 += 1;
        }
        t.2 += usize::from(*door == Door::MydexWrite || *door == Door::Ingest) * usize::from(*allowed);
    }
    for door in [Door::Sql, Door::MydexRead, Door::MydexWrite, Door::Ingest] {
        let (before, after, _) = tally.get(&door).copied().unwrap_or_default();
        assert!(
            before > 0 && after > 0,
            "{door:?}: requests on both sides of the revocation ({before} allowed before, {after} after)"
        );
    }
    // What is stored of member 2: the rows before, and those of allowed writes only.
    let written: usize = tally.values().map(|t| t.2).sum();
    let s = Arc::into_inner(s).expect("the workers are done");
    s.settle().await;
    let (catalog, _, _dir) = s.stop().await;
    let stored: i64 = catalog
        .all_parquet_files()
        .await
        .unwrap()
        .iter()
        .filter(|f| {
            f.member.is_some_and(|m| m.get() == 2)
                && f.dataset.as_str() == E
                && f.environment == catalog::DataEnvironment::Production
        })
        .map(|f| f.rows)
        .sum();
    assert_eq!(stored as usize, before_rows + written, "only allowed writes are stored");
    println!(
        "isolation {store:?}: revocation under load: {} requests, {} after the revocation's answer, all refused; {written} rows written before it, none after",
        outcomes.len(),
        tally.values().map(|t| t.1).sum::<usize>()
    );
}
