//! Other clients' latency while the server is abused, next to the same without the abuse.
//!
//! `cargo bench --bench abuse` (add `-- --quick` for 5-second phases instead of 20). It
//! starts the real router on a real port with the demo fixture and the abuse suite's
//! lowered query budgets, and times, as clients that behave, for one phase without abuse
//! and one with it:
//! - insight-ltd's small SQL read and Mydex read of member 1;
//! - energy-co delivering one reading (honouring `Retry-After` on 429/503, as the abuse
//!   suite's well-behaved client does; retries are counted);
//! - member 5 approving and revoking an agreement (catalog writes, which refusals once
//!   competed with).
//!
//! During the abuse, two clients loop the abuse corpus (`test_helpers::abuse`: functions that
//! build huge values, plans that grow, windows over generated rows, bodies that expand) and
//! a third sends refused requests back to back. Figures are p50 / p99 ms and the ratio of
//! each to its quiet figure, measured in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_helpers::{Store, TestConfig, TestServer, abuse, now_secs};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(query::guard::PLANNING_STACK_BYTES)
        .build()
        .unwrap();
    runtime.block_on(run(if quick { Duration::from_secs(5) } else { Duration::from_secs(20) }));
}

/// The latencies of one kind of request in one phase.
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn at(&self, q: f64) -> Duration {
        let mut s = self.0.clone();
        s.sort();
        s[((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1]
    }
}

/// What the clients that behave saw in one phase.
#[derive(Default)]
struct Phase {
    sql: Samples,
    mydex: Samples,
    ingest: Samples,
    consent: Samples,
    retries: usize,
    failures: usize,
}

async fn behave(s: &TestServer, insight: &str, mydex: &str, length: Duration) -> Phase {
    let mut phase = Phase::default();
    let until = Instant::now() + length;
    let conn = &s.creds.subscribers[0].connection;
    let insight_conn = s.creds.subscribers[1].connection.id;
    let mut i = 0i64;
    while Instant::now() < until {
        i += 1;
        let started = Instant::now();
        let (status, _) = s.sql(insight, "SELECT count(*) AS n FROM ds_energy_consumption").await;
        phase.sql.0.push(started.elapsed());
        phase.failures += usize::from(status != 200);

        let started = Instant::now();
        let (status, _) = s
            .call(
                reqwest::Method::GET,
                &format!("/api/pds/transaction/1.json?{mydex}&dataset=ds_energy_consumption"),
                Some(insight),
                None,
            )
            .await;
        phase.mydex.0.push(started.elapsed());
        phase.failures += usize::from(status != 200);

        let row = format!(
            "{}\n",
            json!({"member_uid": 1, "field_energy_reading_timestamp": now_secs() - 3600 + i % 3600, "field_energy_reading_value": 1.5})
        );
        let started = Instant::now();
        let mut answered = false;
        for _ in 0..10 {
            let resp = s
                .client
                .post(s.url("/v1/ingest/ds_energy_consumption"))
                .bearer_auth(format!("{}:{}", conn.nid, conn.key))
                .header("content-type", "application/x-ndjson")
                .body(row.clone())
                .send()
                .await
                .unwrap();
            if resp.status() == 429 || resp.status() == 503 {
                phase.retries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            answered = resp.status() == 200;
            break;
        }
        phase.ingest.0.push(started.elapsed());
        phase.failures += usize::from(!answered);

        let started = Instant::now();
        for action in ["approve", "revoke"] {
            let path = format!("/v1/members/5/agreements/{insight_conn}/{action}");
            let (status, _) = s.call(reqwest::Method::POST, &path, Some(s.member_secret(5)), None).await;
            phase.failures += usize::from(status != 200);
        }
        phase.consent.0.push(started.elapsed() / 2);
    }
    phase
}

async fn run(length: Duration) {
    let mut config = TestConfig::new(Store::Sqlite);
    config.query.memory_bytes = 512 << 20;
    config.query.query_memory_bytes = 128 << 20;
    config.query.timeout = Duration::from_secs(10);
    config.query.total = 8;
    config.ingest_inflight_bytes = 128 << 20;
    let s = Arc::new(TestServer::start(config).await);
    let insight = s.subscriber_token("insight-ltd").await;
    let energy = s.subscriber_token("energy-co").await;
    let mydex = s.member_query(1, "insight-ltd");
    let creds: Value = serde_json::to_value(&s.creds).unwrap();

    let quiet = behave(&s, &insight, &mydex, length).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut abusers = Vec::new();
    let corpus: Vec<abuse::Attack> = abuse::sql().into_iter().chain(abuse::ingest()).collect();
    for k in 0..2 {
        let (s, energy, creds, corpus, stop, sent) =
            (s.clone(), energy.clone(), creds.clone(), corpus.clone(), stop.clone(), sent.clone());
        abusers.push(tokio::spawn(async move {
            let client = abuse::client();
            let mut i = k * corpus.len() / 2;
            while !stop.load(Ordering::Relaxed) {
                let attack = &corpus[i % corpus.len()];
                let (status, _, body) = abuse::send(&client, &s.base, &creds, &energy, attack).await;
                // The test server takes smaller bodies than the binary: a 413 is a refusal too.
                assert!((400..500).contains(&status) || status == 503, "{}: {status} {body}", attack.name);
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    {
        let (s, energy, stop, sent) = (s.clone(), energy.clone(), stop.clone(), sent.clone());
        let q = s.member_query(1, "energy-co");
        abusers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(s.sql(&energy, "DROP TABLE ds_energy_consumption").await.0, 400);
                let path = format!("/api/pds/transaction/1.json?{q}&dataset=ds_passport");
                assert_eq!(s.call(reqwest::Method::GET, &path, Some(&energy), None).await.0, 403);
                sent.fetch_add(2, Ordering::Relaxed);
            }
        }));
    }
    let abused = behave(&s, &insight, &mydex, length).await;
    stop.store(true, Ordering::Relaxed);
    for a in abusers {
        a.await.unwrap();
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("\n| request (p50 / p99 ms) | quiet | during abuse | ratio p50 / p99 |");
    println!("|---|---|---|---|");
    let rows: [(&str, &Samples, &Samples); 4] = [
        ("insight-ltd SQL read", &quiet.sql, &abused.sql),
        ("insight-ltd Mydex read", &quiet.mydex, &abused.mydex),
        ("energy-co delivers a reading", &quiet.ingest, &abused.ingest),
        ("member 5 approves or revokes", &quiet.consent, &abused.consent),
    ];
    for (label, q, a) in rows {
        println!(
            "| {label} | {:.2} / {:.2} | {:.2} / {:.2} | {:.1} / {:.1} |",
            ms(q.at(0.5)),
            ms(q.at(0.99)),
            ms(a.at(0.5)),
            ms(a.at(0.99)),
            a.at(0.5).as_secs_f64() / q.at(0.5).as_secs_f64(),
            a.at(0.99).as_secs_f64() / q.at(0.99).as_secs_f64()
        );
    }
    println!(
        "\n{:.0} s a phase; during the abuse {} abusive or refused requests were answered; the clients that behave: {} and {} rounds, {} and {} retries after 429/503, {} and {} failures; debug assertions {}",
        length.as_secs_f64(),
        sent.load(Ordering::Relaxed),
        quiet.sql.0.len(),
        abused.sql.0.len(),
        quiet.retries,
        abused.retries,
        quiet.failures,
        abused.failures,
        if cfg!(debug_assertions) { "on" } else { "off" }
    );
    assert_eq!(quiet.failures + abused.failures, 0, "a client that behaves was refused");
}
