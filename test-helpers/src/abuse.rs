//! The abuse corpus: requests that each once took the server down, let one client hold
//! what others need, or stored what no grant allowed. The abuse suite
//! (`tests/e2e/abuse.rs`) sends each against the real binary under a memory cap; the abuse
//! bench (`benches/abuse.rs`) loops them while timing other clients' requests.

use serde_json::{Value, json};

use crate::now_secs;

/// One request of the corpus and the statuses it may get (every one a refusal).
#[derive(Debug, Clone)]
pub struct Attack {
    pub name: &'static str,
    pub kind: AttackKind,
    pub expect: &'static [u16],
}

#[derive(Debug, Clone)]
pub enum AttackKind {
    /// `POST /v1/query` as energy-co.
    Sql(String),
    /// `POST /v1/ingest/{dataset}` as the demo subscriber `writer`'s connection.
    Ingest { writer: &'static str, dataset: &'static str, content_type: &'static str, body: Vec<u8> },
}

/// `SELECT count(*)` over a union of `branches` scans of the energy readings.
fn union(branches: usize) -> String {
    let each = "SELECT * FROM ds_energy_consumption";
    format!("SELECT count(*) FROM ({})", vec![each; branches].join(" UNION ALL "))
}

/// CTEs that each double the one before, `levels` deep; the last one selected.
fn doubling(levels: usize, seed: &str, step: &str, last: &str) -> String {
    let mut ctes = vec![format!("c0 AS ({seed})")];
    for i in 1..=levels {
        ctes.push(format!("c{i} AS ({})", step.replace("{prev}", &format!("c{}", i - 1))));
    }
    format!("WITH {} {}", ctes.join(", "), last.replace("{last}", &format!("c{levels}")))
}

/// The SQL attacks: functions that build values of any size, plans that copy the scope or
/// grow without bound, windows that buffer without telling the memory pool.
pub fn sql() -> Vec<Attack> {
    let a = |name, sql: String, expect| Attack { name, kind: AttackKind::Sql(sql), expect };
    let sixty: Vec<String> = (0..60).map(|i| format!("repeat('a', 2147483647) AS c{i}")).collect();
    vec![
        a("repeat to a terabyte (constant folding)", "SELECT repeat(arrow_cast('a', 'LargeUtf8'), 1000000000000)".into(), &[422]),
        a("sixty repeats of 2 GiB", format!("SELECT {}", sixty.join(", ")), &[422]),
        a("lpad to 2 GiB", "SELECT lpad('a', 2147483647)".into(), &[422]),
        a("rpad to 2 GiB over rows", "SELECT rpad('x', 2147483647, 'yz') FROM generate_series(1, 10)".into(), &[422]),
        a("array_repeat", "SELECT array_repeat('a', 1000000000)".into(), &[400]),
        a("replace grows quadratically", "SELECT replace(repeat('a', 60000), 'a', repeat('b', 60000))".into(), &[400]),
        a("string_agg over generated rows", "SELECT length(string_agg(repeat('x', 1000), ',')) FROM generate_series(1, 100000000)".into(), &[422]),
        a("|| doubling through 40 CTEs", doubling(40, "SELECT 'xxxxxxxxxxxxxxxx' AS s", "SELECT s || s AS s FROM {prev}", "SELECT length(s) FROM {last}"), &[422]),
        a("concat doubling through 40 CTEs", doubling(40, "SELECT 'xxxxxxxxxxxxxxxx' AS s", "SELECT concat(s, s) AS s FROM {prev}", "SELECT length(s) FROM {last}"), &[422]),
        a("scans doubling through 30 CTEs", doubling(30, "SELECT * FROM ds_energy_consumption", "SELECT * FROM {prev} UNION ALL SELECT * FROM {prev}", "SELECT count(*) FROM {last}"), &[422]),
        a("a union of 20,000 scans", union(20_000), &[422]),
        a("a union of 25,000 scans (past the body limit)", union(25_000), &[413, 422]),
        a("a window over a cross join of generated rows",
            "SELECT max(s) FROM (SELECT sum(a.value) OVER () AS s FROM generate_series(1, 100000) a CROSS JOIN generate_series(1, 100000) b)".into(), &[422]),
        a("a fixed-size binary of 2 GB a row", "SELECT arrow_cast(NULL, 'FixedSizeBinary(2000000000)')".into(), &[422]),
        a("a fixed-size list of 2 G entries", "SELECT arrow_cast(1, 'FixedSizeList(2000000000, Int64)')".into(), &[400, 422]),
        a("60,000 terms", format!("SELECT {}", vec!["1"; 60_000].join(" + ")), &[400, 422]),
        a("parentheses 5,000 deep", format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000)), &[400, 422]),
        a("range as an array of 10^12", "SELECT range(1, 1000000000000)".into(), &[400]),
    ]
}

/// The ingest attacks: bodies that decode to far more than they are, more rows than one body
/// may hold, and Arrow IPC dictionary deltas.
pub fn ingest() -> Vec<Attack> {
    let csv = |rows: usize| {
        let mut body = String::from("member_uid\n");
        body.push_str(&"1\n".repeat(rows));
        body.into_bytes()
    };
    let i = |name, dataset, content_type, body, expect| Attack {
        name,
        kind: AttackKind::Ingest { writer: "care-services", dataset, content_type, body },
        expect,
    };
    vec![
        i("900,000 rows of two bytes into 28 columns", "ds_referrals", "text/csv", csv(900_000), &[429]),
        Attack {
            name: "more rows than one body may hold",
            kind: AttackKind::Ingest {
                writer: "energy-co",
                dataset: "ds_energy_consumption",
                content_type: "text/csv",
                body: csv(1_100_000),
            },
            expect: &[413],
        },
        i(
            "rows that set no field",
            "ds_referrals",
            "application/x-ndjson",
            b"{\"member_uid\": 1}\n{\"member_uid\": 2}\n".to_vec(),
            &[422],
        ),
        i(
            "Arrow IPC dictionary deltas",
            "ds_referrals",
            "application/vnd.apache.arrow.stream",
            dictionary_deltas(),
            &[400],
        ),
        Attack {
            name: "a row for a member without an agreement",
            kind: AttackKind::Ingest {
                writer: "energy-co",
                dataset: "ds_energy_consumption",
                content_type: "application/x-ndjson",
                body: format!("{}\n", json!({"member_uid": 10, "field_energy_reading_timestamp": now_secs()}))
                    .into_bytes(),
            },
            expect: &[403],
        },
    ]
}

/// An Arrow IPC stream whose text column is dictionary-encoded, with a delta per batch.
fn dictionary_deltas() -> Vec<u8> {
    use datafusion::arrow::array::{DictionaryArray, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema};
    use datafusion::arrow::ipc::writer::{DictionaryHandling, IpcWriteOptions, StreamWriter};
    use std::sync::Arc;
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let schema = Arc::new(Schema::new(vec![
        Field::new("member_uid", DataType::Int64, false),
        Field::new("contact_name", dict, true),
    ]));
    let mut out = Vec::new();
    let options = IpcWriteOptions::default().with_dictionary_handling(DictionaryHandling::Delta);
    let mut w = StreamWriter::try_new_with_options(&mut out, &schema, options).expect("IPC writer");
    for i in 0..100 {
        let names: DictionaryArray<Int32Type> = [format!("reason {i}")].iter().map(String::as_str).collect();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1])), Arc::new(names)])
            .expect("batch");
        w.write(&batch).expect("write");
    }
    w.finish().expect("finish");
    drop(w);
    out
}

/// The attacker's client: a connection per request, as a server may close one whose body
/// it refused before reading it all (a pooled connection would fail the next request).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("a client")
}

/// Sends `attack` to the server at `base` with the demo fixture's credentials `creds` (as
/// `trove demo --json` prints them) and `token`, energy-co's subscriber token: the status,
/// the content type and the body.
pub async fn send(
    client: &reqwest::Client,
    base: &str,
    creds: &Value,
    token: &str,
    attack: &Attack,
) -> (u16, String, String) {
    let request = match &attack.kind {
        AttackKind::Sql(sql) => client.post(format!("{base}/v1/query")).bearer_auth(token).json(&json!({ "sql": sql })),
        AttackKind::Ingest { writer, dataset, content_type, body } => {
            let subscriber = creds["subscribers"]
                .as_array()
                .expect("subscribers")
                .iter()
                .find(|s| s["name"] == *writer)
                .expect("demo writer");
            let connection = &subscriber["connection"];
            let bearer = format!("{}:{}", connection["nid"], connection["key"].as_str().expect("key"));
            client
                .post(format!("{base}/v1/ingest/{dataset}"))
                .bearer_auth(bearer)
                .header("content-type", *content_type)
                .body(body.clone())
        }
    };
    match request.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let kind = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            (status, kind, resp.text().await.unwrap_or_default())
        }
        Err(e) => {
            let mut why = e.to_string();
            let mut at: Option<&dyn std::error::Error> = std::error::Error::source(&e);
            while let Some(cause) = at {
                why = format!("{why}: {cause}");
                at = cause.source();
            }
            (0, String::new(), why)
        }
    }
}
