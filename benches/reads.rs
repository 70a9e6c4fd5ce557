//! Scoped reads end to end, next to DuckDB over the same files, in one run.
//!
//! `cargo bench --bench reads` (add `-- --quick` for a short run;
//! `TROVE_QUERY_FILE_CACHE_BYTES=0` turns the decoded-file cache off). It starts the real router
//! on a real port with the demo fixture of 10,000 members, delivers the data sets of
//! `../shared/PEERS.md` over HTTP (1,000 members x 30 days and 10,000 members x 1 day of
//! 15-minute energy readings), flushes day by day and compacts, then times, as energy-co
//! with its subscriber token, one client, keep-alive:
//! - Q1: one member, one day (96 rows), `POST /v1/query`, JSON answer;
//! - Q2: one member, 30 days, sum/avg/count per day;
//! - Q3: 10,000 members, one day, avg per member;
//! - Mydex: one member's newest 96 rows (`filters[id][operator]=>`);
//!
//! first with everything flushed and compacted, then with the newest rows still in the
//! ingest buffers. DuckDB (`pip install duckdb`) runs Q1-Q3 handed the list of every
//! Parquet file trove wrote for the dataset. Each figure is p50 / p99 over the iterations.
//! `TROVE_BENCH_LOOP=2:30` instead repeats Q3 for 30 s after loading, for a profiler.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use test_helpers::{Store, TestConfig, TestServer};

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

/// Delivers readings of `members` for `days` days starting at `first_day` (epoch days), a
/// day at a time, each day's rows in 10,000-row bodies, flushing after each day.
async fn deliver(s: &TestServer, members: i64, first_day: i64, days: i64, per_day: i64, flush: bool) {
    for day in first_day..first_day + days {
        let mut body = String::new();
        let mut rows = 0;
        for member in 1..=members {
            for i in 0..per_day {
                let t = day * DAY + i * 900;
                let row = json!({"member_uid": member, "field_energy_reading_timestamp": t,
                                 "field_energy_reading_value": ((member * 7 + i) % 1000) as f64 / 8.0,
                                 "field_energy_source_type": "smart-meter"});
                body.push_str(&row.to_string());
                body.push('\n');
                rows += 1;
                if rows == 10_000 {
                    let (status, answer) = s.ingest(E, "application/x-ndjson", std::mem::take(&mut body).into_bytes()).await;
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
            s.flush().await;
        }
    }
}

async fn time_sql(s: &TestServer, token: &str, sql: &str, n: usize, expect_rows: usize) -> Timing {
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

/// DuckDB over every Parquet file of the dataset: p50/p99 per query, or `None` without it.
fn duckdb(files: &[String], queries: &[(&str, String)], n: usize) -> Option<Vec<Timing>> {
    let list = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(list.path(), files.join("\n")).unwrap();
    let script = r#"
import sys, time, json, math, duckdb
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
    samples.sort()
    pick = lambda q: samples[max(1, min(len(samples), math.ceil(len(samples) * q))) - 1]
    out.append([pick(0.5), pick(0.99)])
print(json.dumps(out))
"#;
    let mut args: Vec<std::ffi::OsString> = vec![list.path().into(), n.to_string().into()];
    args.extend(queries.iter().map(|(_, q)| q.replace(E, "readings").into()));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out = match std::process::Command::new("python3").args(["-c", script]).args(&args).output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("DuckDB did not run: {e}");
            return None;
        }
    };
    if !out.status.success() {
        eprintln!("DuckDB did not run (pip install duckdb): {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
        eprintln!("DuckDB answered {:?} / {:?}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        return None;
    };
    Some(
        v.as_array()?
            .iter()
            .map(|p| Timing { p50: Duration::from_secs_f64(p[0].as_f64().unwrap()), p99: Duration::from_secs_f64(p[1].as_f64().unwrap()) })
            .collect(),
    )
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
    eprintln!("file cache: {} bytes", config.query.file_cache_bytes);
    let started = Instant::now();
    let s = TestServer::start(config).await;
    eprintln!("seeded {} members in {:.1} s", q3_members + 1, started.elapsed().as_secs_f64());
    let token = s.subscriber_token("energy-co").await;
    let readers = q3_members;
    let today = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 / DAY;
    let (first, q3_day) = (today - days - 1, today - 1);

    let started = Instant::now();
    deliver(&s, q1_members, first, days, 96, true).await;
    deliver(&s, q3_members, q3_day, 1, 96, true).await;
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

    // `TROVE_BENCH_LOOP=<query index>:<seconds>` repeats one query for a profiler, then stops.
    if let Ok(spec) = std::env::var("TROVE_BENCH_LOOP") {
        let (i, secs) = spec.split_once(':').expect("TROVE_BENCH_LOOP=<index>:<seconds>");
        let (_, sql, _) = &queries[i.parse::<usize>().unwrap()];
        eprintln!("looping: {sql}");
        let until = Instant::now() + Duration::from_secs(secs.parse().unwrap());
        while Instant::now() < until {
            assert_eq!(s.sql_as(&token, "", sql, "application/json").await.0, StatusCode::OK);
        }
        return;
    }
    let mut table = vec![];
    for (label, sql, expect) in &queries {
        let n = if label.starts_with("Q3") { iterations / 4 } else { iterations };
        table.push((format!("{label} (compacted)"), time_sql(&s, &token, sql, n, *expect).await));
    }
    table.push(("Mydex newest 96 rows (compacted)".into(), time_get(&s, &token, &mydex, iterations, 96).await));

    let paths: Vec<String> = files.iter().map(|f| s.dir.path().join("objects").join(&f.path).display().to_string()).collect();
    let duck = duckdb(&paths, &queries.iter().map(|(l, q, _)| (*l, q.clone())).collect::<Vec<_>>(), iterations / 4);

    // Newest rows still in the buffers: four more readings for every member of the Q3 day.
    deliver(&s, q3_members, q3_day + 1, 1, 4, false).await;
    let buffered = [
        (
            "Q1 one member, today, buffered rows",
            format!("SELECT * FROM {E} WHERE member_uid = 42 AND field_energy_reading_timestamp >= {}", (q3_day + 1) * DAY),
            4usize,
        ),
        (
            "Q3 10,000 members, last two days, with buffered rows",
            format!(
                "SELECT member_uid, avg(field_energy_reading_value) AS mean FROM {E} \
                 WHERE field_energy_reading_timestamp >= {} GROUP BY member_uid",
                q3_day * DAY
            ),
            readers as usize,
        ),
    ];
    for (label, sql, expect) in &buffered {
        let n = if label.starts_with("Q3") { iterations / 4 } else { iterations };
        table.push((label.to_string(), time_sql(&s, &token, sql, n, *expect).await));
    }
    let mydex_today = format!(
        "/api/pds/transaction/42.json?{q}&dataset={E}&filters%5Bid%5D%5Boperator%5D=%3E&filters%5Bid%5D%5Bvalue%5D={}",
        96 * days + 96
    );
    table.push(("Mydex newest rows, buffered".into(), time_get(&s, &token, &mydex_today, iterations, 4).await));

    println!("\n| read (trove, p50 / p99 ms) | trove | DuckDB, all of trove's files |");
    println!("|---|---|---|");
    for (i, (label, t)) in table.iter().enumerate() {
        let peer = match (&duck, i) {
            (Some(d), 0..=2) => format!("{} / {}", ms(d[i].p50), ms(d[i].p99)),
            (None, 0..=2) => "not run".into(),
            _ => "-".into(),
        };
        println!("| {label} | {} / {} | {peer} |", ms(t.p50), ms(t.p99));
    }
    println!(
        "\n{rows} rows, {} Parquet files ({:.1} MB), {} iterations (Q3: {}), debug assertions {}",
        files.len(),
        files.iter().map(|f| f.size_bytes).sum::<i64>() as f64 / 1e6,
        iterations,
        iterations / 4,
        if cfg!(debug_assertions) { "on" } else { "off" }
    );
    s.stop().await;
}
