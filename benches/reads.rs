//! Scoped reads end to end, next to DuckDB and PostgreSQL over the same rows, in one run.
//!
//! `cargo bench --bench reads` (add `-- --quick` for a short run;
//! `TROVE_QUERY_FILE_CACHE_BYTES=0` turns the decoded-file cache off). It starts the real router
//! on a real port with the demo fixture of 10,000 members, delivers the data sets of
//! `benches/README.md` ("The data sets") over HTTP (1,000 members x 30 days and 10,000 members x 1 day of
//! 15-minute energy readings), flushes day by day and compacts, then times, as energy-co
//! with its subscriber token, one client, keep-alive:
//! - Q1: one member, one day (96 rows), `POST /v1/query`, JSON answer;
//! - Q2: one member, 30 days, sum/avg/count per day;
//! - Q3: 10,000 members, one day, avg per member;
//! - Mydex: one member's newest 96 rows (`filters[id][operator]=>`);
//! - Q2 without its `ORDER BY` (an answer written in several pieces), also through Python's
//!   `http.client`, a client with default socket options (delayed ACKs);
//!
//! first with everything settled and compacted, then with the newest rows still in the
//! ingest buffers, then with them in a hot file (and Q3 over a day held in hot files only);
//! and the floor under each of them, the disk's fdatasync of a small append
//! beside the WAL (a read's access-log entry is durable before it answers). DuckDB (`pip
//! install duckdb`) runs Q1-Q3 handed the list of every Parquet file trove wrote for the
//! dataset. With `TROVE_BENCH_POSTGRES_URL` set (a
//! `postgres://` URL of a server on loopback, e.g. from `scripts/start-postgres.sh`),
//! PostgreSQL runs Q1-Q3 too (`pip install 'psycopg[binary]'`): the very rows delivered to
//! trove, written to a CSV file as they are delivered, are COPYed into a logged table with
//! the dataset's columns, indexed by a btree on (member, event time), vacuumed and analyzed,
//! and each query is a prepared statement. Each figure is p50 / p99 over the iterations;
//! the peers run once untimed per query first (warm) and the same number of times as each
//! other. `TROVE_BENCH_REPORT=<path>` also writes the table as JSON there (for
//! `benches/compare.sh`). `TROVE_BENCH_LOOP=2:30` instead repeats Q3 for 30 s after loading,
//! for a profiler (`4:30`: Q3 with buffered rows).

use std::io::Write;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use test_helpers::{Store, TestConfig, TestServer, now_secs};

// As the server binary: glibc's allocator refaults large Arrow buffers (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const E: &str = "ds_energy_consumption";
const DAY: i64 = 86_400;

struct Timing {
    p50: Duration,
    p99: Duration,
}

fn percentiles(mut samples: Vec<Duration>) -> Timing {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    Timing { p50: at(0.50), p99: at(0.99) }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The columns of the PostgreSQL table, in the order of the CSV rows: `member_uid` and the
/// dataset's 8 fields, typed as trove stores them (timestamps are epoch seconds).
const PG_COLUMNS: &str = "member_uid bigint NOT NULL, created_timestamp bigint, field_energy_homeid bigint, \
    field_energy_reading_timestamp bigint, field_energy_reading_value double precision, \
    field_energy_source_index_id text, field_energy_source_name text, field_energy_source_type text, \
    updated_timestamp bigint";

/// Delivers readings of `members` for `days` days starting at `first_day` (epoch days), a
/// day at a time, each day's rows in 10,000-row bodies, flushing after each day. With `csv`,
/// the same rows also go there as PostgreSQL's CSV (columns as `PG_COLUMNS`), so that the
/// peer stores exactly what trove was sent; `created_timestamp`, which trove fills with the
/// arrival time, gets the time of delivery there.
async fn deliver(
    s: &TestServer,
    members: i64,
    first_day: i64,
    days: i64,
    per_day: i64,
    flush: bool,
    mut csv: Option<&mut dyn Write>,
) {
    for day in first_day..first_day + days {
        let mut body = String::new();
        let mut rows = 0;
        let now = now_secs();
        for member in 1..=members {
            for i in 0..per_day {
                let t = day * DAY + i * 900;
                let value = ((member * 7 + i) % 1000) as f64 / 8.0;
                let row = json!({"member_uid": member, "field_energy_reading_timestamp": t,
                                 "field_energy_reading_value": value,
                                 "field_energy_source_type": "smart-meter"});
                body.push_str(&row.to_string());
                body.push('\n');
                if let Some(csv) = csv.as_mut() {
                    // Eighths print exactly, so PostgreSQL holds the same doubles.
                    writeln!(csv, "{member},{now},,{t},{value},,,smart-meter,").unwrap();
                }
                rows += 1;
                if rows == 10_000 {
                    let (status, answer) =
                        s.ingest(E, "application/x-ndjson", std::mem::take(&mut body).into_bytes()).await;
                    assert_eq!(status, StatusCode::OK, "{answer}");
                    rows = 0;
                }
            }
        }
        if rows > 0 {
            let (status, answer) = s.ingest(E, "application/x-ndjson", body.into_bytes()).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
        if flush {
            s.settle().await;
        }
    }
}

/// Before each read is timed the server idles this long, as it does before the peers run:
/// the previous read's access-log entries move to the catalog in the background, about once
/// a second, and after 200 Q3s that is 2 million entries (see BENCHMARKS.md).
const SETTLE: Duration = Duration::from_secs(2);

async fn time_sql(s: &TestServer, token: &str, sql: &str, n: usize, expect_rows: usize) -> Timing {
    tokio::time::sleep(SETTLE).await;
    let (status, rows) = s.sql(token, sql).await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    assert_eq!(rows.as_array().unwrap().len(), expect_rows, "{sql}");
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let (status, _, body) = s.sql_as(token, "", sql, "application/json").await;
        samples.push(started.elapsed());
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    percentiles(samples)
}

async fn time_get(s: &TestServer, token: &str, path: &str, n: usize, expect_rows: usize) -> Timing {
    tokio::time::sleep(SETTLE).await;
    let (status, rows) = s.call(reqwest::Method::GET, path, Some(token), None).await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    assert_eq!(rows.as_object().unwrap().len(), expect_rows, "{path}");
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let resp = s.client.get(s.url(path)).bearer_auth(token).send().await.unwrap();
        let status = resp.status();
        let _ = resp.bytes().await.unwrap();
        samples.push(started.elapsed());
        assert_eq!(status, StatusCode::OK);
    }
    percentiles(samples)
}

/// Runs `script` with `python3 -c`, returning its stdout as JSON, or why it did not run.
fn python(script: &str, args: &[std::ffi::OsString], hint: &str) -> Result<Value, String> {
    let out =
        std::process::Command::new("python3").args(["-c", script]).args(args).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{hint}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice::<Value>(&out.stdout).map_err(|_| {
        format!("answered {:?} / {:?}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// `[[p50 s, p99 s], ...]` as the Python peers print them.
fn timings(v: &Value) -> Option<Vec<Timing>> {
    let secs = |p: &Value, i: usize| p.get(i).and_then(Value::as_f64).map(Duration::from_secs_f64);
    v.as_array()?.iter().map(|p| Some(Timing { p50: secs(p, 0)?, p99: secs(p, 1)? })).collect()
}

/// `sql` timed through Python's own HTTP client (`http.client`, what `requests` uses), a
/// client with the socket options most clients have: delayed ACKs on. An answer the server
/// writes in several pieces waits for those ACKs unless the server turns Nagle's algorithm
/// off. `None` (and why, on stderr) if Python did not run.
fn time_python(port: u16, token: &str, sql: &str, n: usize) -> Option<Timing> {
    let script = PICK.to_string()
        + r#"
import sys, time, json, http.client
port, token, sql, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
con = http.client.HTTPConnection("127.0.0.1", port)
body = json.dumps({"sql": sql})
headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
def once():
    con.request("POST", "/v1/query", body, headers)
    r = con.getresponse()
    r.read()
    assert r.status == 200, r.status
once()
samples = []
for _ in range(n):
    t = time.perf_counter(); once(); samples.append(time.perf_counter() - t)
print(json.dumps([[pick(samples, 0.5), pick(samples, 0.99)]]))
"#;
    let args: Vec<std::ffi::OsString> = vec![port.to_string().into(), token.into(), sql.into(), n.to_string().into()];
    match python(&script, &args, "python3").map(|v| timings(&v)) {
        Ok(Some(mut t)) => t.pop(),
        Ok(None) => None,
        Err(e) => {
            eprintln!("the Python client did not run: {e}");
            None
        }
    }
}

/// The peers' Python: percentiles picked as `percentiles` picks them.
const PICK: &str = r#"
import math
def pick(samples, q):
    samples = sorted(samples)
    return samples[max(1, min(len(samples), math.ceil(len(samples) * q))) - 1]
"#;

/// DuckDB over every Parquet file of the dataset: p50/p99 per query, or `None` without it.
fn duckdb(files: &[String], queries: &[(&str, String)], n: usize) -> Option<Vec<Timing>> {
    let list = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(list.path(), files.join("\n")).unwrap();
    let script = PICK.to_string()
        + r#"
import sys, time, json, duckdb
files = open(sys.argv[1]).read().split("\n")
n = int(sys.argv[2])
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
con.execute("CREATE VIEW readings AS SELECT * FROM read_parquet(" + repr(files) + ")")
out = []
for sql in sys.argv[3:]:
    con.execute(sql).fetchall()
    samples = []
    for _ in range(n):
        t = time.perf_counter(); con.execute(sql).fetchall(); samples.append(time.perf_counter() - t)
    out.append([pick(samples, 0.5), pick(samples, 0.99)])
print(json.dumps(out))
"#;
    let mut args: Vec<std::ffi::OsString> = vec![list.path().into(), n.to_string().into()];
    args.extend(queries.iter().map(|(_, q)| q.replace(E, "readings").into()));
    match python(&script, &args, "pip install duckdb").map(|v| timings(&v)) {
        Ok(Some(t)) => Some(t),
        Ok(None) => None,
        Err(e) => {
            eprintln!("DuckDB did not run: {e}");
            None
        }
    }
}

/// What PostgreSQL did: its version, the rows it loaded and how long that took, p50/p99 per
/// query.
struct Postgres {
    version: String,
    rows: i64,
    load_seconds: f64,
    index_seconds: f64,
    timings: Vec<Timing>,
}

/// PostgreSQL at `url` over the rows in `csv`: a logged table with the dataset's columns,
/// COPYed, then the btree on (member, event time) that a PostgreSQL user would add for these
/// reads, then `VACUUM ANALYZE` (statistics for the planner, and the hint bits and visibility
/// map a table in steady state has, so the first timed scans do not write). Each query is a
/// prepared statement (psycopg's `prepare=True`: parsed and planned once), checked to answer
/// the rows trove answered, run once untimed, then `n` times. The table is dropped afterwards.
fn postgres(url: &str, csv: &std::path::Path, queries: &[(&str, String, usize)], n: usize) -> Result<Postgres, String> {
    let table = "trove_bench_readings";
    let script = PICK.to_string()
        + r#"
import sys, time, json, psycopg
url, path, n, table, columns = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
queries = json.loads(sys.argv[6])
with psycopg.connect(url, autocommit=True) as con:
    con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute(f"CREATE TABLE {table} ({columns})")
    try:
        started = time.perf_counter()
        with con.cursor().copy(f"COPY {table} FROM STDIN (FORMAT csv)") as copy, open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                copy.write(chunk)
        loaded = time.perf_counter()
        con.execute(f"CREATE INDEX ON {table} (member_uid, field_energy_reading_timestamp)")
        con.execute(f"VACUUM ANALYZE {table}")
        indexed = time.perf_counter()
        rows = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        out = []
        for sql, expect in queries:
            cur = con.cursor()
            got = len(cur.execute(sql, prepare=True).fetchall())
            if got != expect:
                sys.exit(f"{sql}\nanswered {got} rows, trove {expect}")
            samples = []
            for _ in range(n):
                t = time.perf_counter(); cur.execute(sql, prepare=True).fetchall(); samples.append(time.perf_counter() - t)
            out.append([pick(samples, 0.5), pick(samples, 0.99)])
        version = con.execute("SHOW server_version").fetchone()[0]
    finally:
        con.execute(f"DROP TABLE IF EXISTS {table}")
print(json.dumps({"version": version, "rows": rows, "load_seconds": loaded - started,
                  "index_seconds": indexed - loaded, "timings": out}))
"#;
    let queries: Vec<(String, usize)> = queries.iter().map(|(_, q, expect)| (q.replace(E, table), *expect)).collect();
    let args: Vec<std::ffi::OsString> = vec![
        url.into(),
        csv.into(),
        n.to_string().into(),
        table.into(),
        PG_COLUMNS.into(),
        serde_json::to_string(&queries).unwrap().into(),
    ];
    let v = python(&script, &args, "pip install 'psycopg[binary]'")?;
    Ok(Postgres {
        version: v["version"].as_str().unwrap_or("?").to_string(),
        rows: v["rows"].as_i64().unwrap_or(0),
        load_seconds: v["load_seconds"].as_f64().unwrap_or(f64::NAN),
        index_seconds: v["index_seconds"].as_f64().unwrap_or(f64::NAN),
        timings: timings(&v["timings"]).ok_or_else(|| format!("answered {v}"))?,
    })
}

/// The disk's floor under every read, whose access-log entry is durable before it answers:
/// appending a small record to a file beside the server's WAL and syncing it, `n` times.
fn sync_floor(dir: &std::path::Path, n: usize) -> Timing {
    let path = dir.join("sync-floor");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let samples = (0..n)
        .map(|_| {
            let started = Instant::now();
            file.write_all(&[0u8; 512]).unwrap();
            file.sync_data().unwrap();
            started.elapsed()
        })
        .collect();
    std::fs::remove_file(path).unwrap();
    percentiles(samples)
}

/// The commit measured, as `git rev-parse --short HEAD` names it, if git can tell.
fn commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(quick));
}

async fn run(quick: bool) {
    let (q1_members, q3_members, days) = (1_000i64, 10_000i64, 30i64);
    let iterations = if quick { 30 } else { 200 };
    let mut config = TestConfig::new(Store::Sqlite);
    // The fixture's last member has no agreement with energy-co: one more than read.
    config.members = q3_members as u32 + 1;
    config.buffer_bytes = 2 << 30;
    if let Ok(bytes) = std::env::var("TROVE_QUERY_FILE_CACHE_BYTES") {
        config.query.file_cache_bytes = bytes.parse().expect("a byte count");
    }
    let file_cache_bytes = config.query.file_cache_bytes;
    eprintln!("file cache: {file_cache_bytes} bytes");
    let started = Instant::now();
    let s = TestServer::start(config).await;
    eprintln!("seeded {} members in {:.1} s", q3_members + 1, started.elapsed().as_secs_f64());
    let token = s.subscriber_token("energy-co").await;
    let readers = q3_members;
    let today = now_secs() / DAY;
    let (first, q3_day) = (today - days - 1, today - 1);

    // PostgreSQL gets the rows trove got: written as they are delivered, COPYed after trove's runs.
    let postgres_url = std::env::var("TROVE_BENCH_POSTGRES_URL").ok().filter(|u| !u.is_empty());
    let csv = postgres_url
        .as_ref()
        .map(|_| tempfile::Builder::new().prefix("trove-bench-pg-").suffix(".csv").tempfile().unwrap());
    let mut csv_out = csv.as_ref().map(|f| std::io::BufWriter::with_capacity(1 << 20, f.as_file()));

    let started = Instant::now();
    deliver(&s, q1_members, first, days, 96, true, csv_out.as_mut().map(|w| w as &mut dyn Write)).await;
    deliver(&s, q3_members, q3_day, 1, 96, true, csv_out.as_mut().map(|w| w as &mut dyn Write)).await;
    if let Some(w) = csv_out.as_mut() {
        w.flush().unwrap();
    }
    drop(csv_out);
    let rows = q1_members * days * 96 + q3_members * 96;
    eprintln!("delivered and flushed {rows} rows in {:.1} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    // Until three rounds in a row merge nothing: each round takes up to 32 partitions.
    let (mut rounds, mut idle) = (0, 0);
    while idle < 3 {
        rounds += 1;
        idle = if s.ingester.compact_round().await.unwrap() == 0 { idle + 1 } else { 0 };
    }
    let files = s.catalog.all_parquet_files().await.unwrap();
    eprintln!("compacted in {rounds} rounds, {:.1} s: {} files", started.elapsed().as_secs_f64(), files.len());

    let q1_day = first + 10;
    let queries: Vec<(&str, String, usize)> = vec![
        (
            "Q1 one member, one day",
            format!(
                "SELECT * FROM {E} WHERE member_uid = 42 AND field_energy_reading_timestamp >= {} AND field_energy_reading_timestamp < {}",
                q1_day * DAY,
                (q1_day + 1) * DAY
            ),
            96,
        ),
        (
            "Q2 one member, 30 days, per day",
            format!(
                "SELECT field_energy_reading_timestamp / 86400 AS day, sum(field_energy_reading_value) AS total, \
                 avg(field_energy_reading_value) AS mean, count(*) AS n FROM {E} WHERE member_uid = 42 \
                 AND field_energy_reading_timestamp >= {} AND field_energy_reading_timestamp < {} GROUP BY 1 ORDER BY 1",
                first * DAY,
                (first + days) * DAY
            ),
            days as usize,
        ),
        (
            "Q3 10,000 members, one day, avg per member",
            format!(
                "SELECT member_uid, avg(field_energy_reading_value) AS mean FROM {E} \
                 WHERE field_energy_reading_timestamp >= {} AND field_energy_reading_timestamp < {} GROUP BY member_uid",
                q3_day * DAY,
                (q3_day + 1) * DAY
            ),
            readers as usize,
        ),
    ];
    let q = s.member_query(42, "energy-co");
    // Member 42's ids: 96 a day for 30 days, then 96 on the Q3 day.
    let last_day_first_id = 96 * days;
    let mydex = format!(
        "/api/pds/transaction/42.json?{q}&dataset={E}&filters%5Bid%5D%5Boperator%5D=%3E&filters%5Bid%5D%5Bvalue%5D={last_day_first_id}"
    );

    // The reads timed with the newest rows still buffered (delivered after the compacted ones).
    let buffered = [
        (
            "q1_buffered",
            "Q1 one member, today, buffered rows",
            format!(
                "SELECT * FROM {E} WHERE member_uid = 42 AND field_energy_reading_timestamp >= {}",
                (q3_day + 1) * DAY
            ),
            4usize,
        ),
        (
            "q3_buffered",
            "Q3 10,000 members, last two days, with buffered rows",
            format!(
                "SELECT member_uid, avg(field_energy_reading_value) AS mean FROM {E} \
                 WHERE field_energy_reading_timestamp >= {} GROUP BY member_uid",
                q3_day * DAY
            ),
            readers as usize,
        ),
    ];
    // `TROVE_BENCH_LOOP=<read>:<seconds>` repeats one read for a profiler, then stops: 0-2 are
    // Q1-Q3, 3 and 4 Q1 and Q3 with buffered rows.
    if let Ok(spec) = std::env::var("TROVE_BENCH_LOOP") {
        let (i, secs) = spec.split_once(':').expect("TROVE_BENCH_LOOP=<read>:<seconds>");
        let i: usize = i.parse().expect("a read index");
        let sql = match i {
            0..3 => &queries[i].1,
            _ => {
                deliver(&s, q3_members, q3_day + 1, 1, 4, false, None).await;
                &buffered[i - 3].2
            }
        };
        eprintln!("looping: {sql}");
        let (started, mut n) = (Instant::now(), 0u32);
        let until = started + Duration::from_secs(secs.parse().unwrap());
        while Instant::now() < until {
            assert_eq!(s.sql_as(&token, "", sql, "application/json").await.0, StatusCode::OK);
            n += 1;
        }
        eprintln!("looped {n} times, {:.2} ms each", started.elapsed().as_secs_f64() * 1000.0 / f64::from(n));
        return;
    }
    // Each row of the table: a key for scripts (`benches/compare.sh`), the label, trove's timing.
    let mut table: Vec<(&str, String, Timing)> = vec![];
    let sync = sync_floor(s.dir.path(), iterations);
    for ((label, sql, expect), key) in queries.iter().zip(["q1", "q2", "q3"]) {
        table.push((key, format!("{label} (compacted)"), time_sql(&s, &token, sql, iterations, *expect).await));
    }
    table.push((
        "mydex",
        "Mydex newest 96 rows (compacted)".into(),
        time_get(&s, &token, &mydex, iterations, 96).await,
    ));
    // Q2 without its ORDER BY: the groups come in several batches, so the answer is written
    // in several pieces; timed through the tuned client above and a plain Python one.
    let unordered = queries[1].1.replace(" ORDER BY 1", "");
    table.push((
        "q2_pieces",
        "Q2 unordered, answered in pieces".into(),
        time_sql(&s, &token, &unordered, iterations, days as usize).await,
    ));
    tokio::time::sleep(SETTLE).await;
    if let Some(t) = time_python(s.addr.port(), &token, &unordered, iterations) {
        table.push(("q2_pieces_python", "Q2 unordered, answered in pieces, Python http.client".into(), t));
    }

    // The peers run while trove's server idles, each the same number of times.
    let peer_iterations = iterations / 4;
    let paths: Vec<String> =
        files.iter().map(|f| s.dir.path().join("objects").join(&f.path).display().to_string()).collect();
    let duck = duckdb(&paths, &queries.iter().map(|(l, q, _)| (*l, q.clone())).collect::<Vec<_>>(), peer_iterations);
    let pg = match (&postgres_url, &csv) {
        (Some(url), Some(csv)) => {
            let started = Instant::now();
            let pg = postgres(url, csv.path(), &queries, peer_iterations);
            match &pg {
                Ok(p) => eprintln!(
                    "PostgreSQL {}: {} rows COPYed in {:.1} s, indexed and analyzed in {:.1} s, timed in {:.1} s in all",
                    p.version,
                    p.rows,
                    p.load_seconds,
                    p.index_seconds,
                    started.elapsed().as_secs_f64()
                ),
                Err(e) => eprintln!("PostgreSQL did not run: {e}"),
            }
            pg.map_err(|_| "failed (see stderr)".to_string())
        }
        _ => Err("not run (set TROVE_BENCH_POSTGRES_URL)".to_string()),
    };
    drop(csv);

    // Newest rows still in the buffers: four more readings for every member of the Q3 day.
    deliver(&s, q3_members, q3_day + 1, 1, 4, false, None).await;
    for (key, label, sql, expect) in &buffered {
        table.push((*key, label.to_string(), time_sql(&s, &token, sql, iterations, *expect).await));
    }
    let mydex_today = format!(
        "/api/pds/transaction/42.json?{q}&dataset={E}&filters%5Bid%5D%5Boperator%5D=%3E&filters%5Bid%5D%5Bvalue%5D={}",
        96 * days + 96
    );
    table.push((
        "mydex_buffered",
        "Mydex newest rows, buffered".into(),
        time_get(&s, &token, &mydex_today, iterations, 4).await,
    ));

    // The same rows flushed into a hot file (every member's rows in one file, read with
    // pages pruned by member), then a whole day of the 10,000 members in hot files only.
    s.flush().await;
    for (key, label, sql, expect) in &buffered {
        let label = label.replace("buffered rows", "rows in a hot file");
        table.push((
            key.replace("buffered", "hot").leak(),
            label,
            time_sql(&s, &token, sql, iterations, *expect).await,
        ));
    }
    table.push((
        "mydex_hot",
        "Mydex newest rows, in a hot file".into(),
        time_get(&s, &token, &mydex_today, iterations, 4).await,
    ));
    // A day nobody has rows of yet (the readings before the 30 days).
    let hot_day = first - 1;
    deliver(&s, q3_members, hot_day, 1, 96, false, None).await;
    s.flush().await;
    let q3_hot = format!(
        "SELECT member_uid, avg(field_energy_reading_value) AS mean FROM {E} \
         WHERE field_energy_reading_timestamp >= {} AND field_energy_reading_timestamp < {} GROUP BY member_uid",
        hot_day * DAY,
        (hot_day + 1) * DAY
    );
    table.push((
        "q3_hot_day",
        "Q3 10,000 members, one day, all in hot files".into(),
        time_sql(&s, &token, &q3_hot, iterations, readers as usize).await,
    ));

    table.push(("sync", "fdatasync of a 512-byte append (the floor under each read)".into(), sync));

    // Q1-Q3 (the first three rows) are the ones the peers ran.
    let duck_at = |i: usize| duck.as_ref().filter(|_| i < 3).map(|d| &d[i]);
    let pg_at = |i: usize| pg.as_ref().ok().filter(|_| i < 3).map(|p| &p.timings[i]);
    let cell = |t: Option<&Timing>, i: usize, missing: &str| match t {
        Some(t) => format!("{} / {}", ms(t.p50), ms(t.p99)),
        None if i < 3 => missing.to_string(),
        None => "-".into(),
    };
    let pg_name = match &pg {
        Ok(p) => format!("PostgreSQL {}", p.version.split_whitespace().next().unwrap_or("?")),
        Err(_) => "PostgreSQL".into(),
    };
    let pg_missing = pg.as_ref().err().cloned().unwrap_or_default();
    println!(
        "\n| read (p50 / p99 ms) | trove | DuckDB, all of trove's files | {pg_name}, btree (member, ts), prepared |"
    );
    println!("|---|---|---|---|");
    for (i, (_, label, t)) in table.iter().enumerate() {
        println!(
            "| {label} | {} / {} | {} | {} |",
            ms(t.p50),
            ms(t.p99),
            cell(duck_at(i), i, "not run"),
            cell(pg_at(i), i, &pg_missing)
        );
    }
    let parquet_bytes = files.iter().map(|f| f.size_bytes).sum::<i64>();
    println!(
        "\n{rows} rows, {} Parquet files ({:.1} MB), {} iterations (the peers: {}), debug assertions {}",
        files.len(),
        parquet_bytes as f64 / 1e6,
        iterations,
        peer_iterations,
        if cfg!(debug_assertions) { "on" } else { "off" }
    );

    if let Ok(path) = std::env::var("TROVE_BENCH_REPORT") {
        let ms_or_null = |t: Option<&Timing>, f: fn(&Timing) -> Duration| {
            t.map_or(Value::Null, |t| json!(f(t).as_secs_f64() * 1000.0))
        };
        let report = json!({
            "commit": commit(),
            "quick": quick,
            "rows": rows,
            "files": files.len(),
            "parquet_bytes": parquet_bytes,
            "iterations": iterations,
            "peer_iterations": peer_iterations,
            "debug_assertions": cfg!(debug_assertions),
            "file_cache_bytes": file_cache_bytes,
            "duckdb": duck.is_some(),
            "postgres": match &pg {
                Ok(p) => json!({"version": p.version, "rows": p.rows, "load_seconds": p.load_seconds, "index_seconds": p.index_seconds}),
                Err(e) => json!({"error": e}),
            },
            "table": table.iter().enumerate().map(|(i, (key, label, t))| json!({
                "key": key,
                "label": label,
                "trove_p50_ms": t.p50.as_secs_f64() * 1000.0,
                "trove_p99_ms": t.p99.as_secs_f64() * 1000.0,
                "duckdb_p50_ms": ms_or_null(duck_at(i), |t| t.p50),
                "duckdb_p99_ms": ms_or_null(duck_at(i), |t| t.p99),
                "postgres_p50_ms": ms_or_null(pg_at(i), |t| t.p50),
                "postgres_p99_ms": ms_or_null(pg_at(i), |t| t.p99),
            })).collect::<Vec<_>>(),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
        eprintln!("report written to {path}");
    }
    s.stop().await;
}
