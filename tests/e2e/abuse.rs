//! The abuse suite: the real binary, under a cap on its address space (`RLIMIT_AS` through
//! `prlimit`, well above what its lowered budgets need), receives each request of the abuse
//! corpus (`test_helpers::abuse`: values of any size, plans that copy the scope, windows over
//! generated rows, bodies that expand when decoded, dictionary deltas, writes without a
//! grant) and the misbehaving clients (a body that stops arriving, headers that never end,
//! readers that stop reading), while a well-behaved client of another subscriber keeps
//! reading and writing. The process must stay up; every refusal sent before an answer's
//! first byte must be a 4xx/429/503 problem+json; the well-behaved client's requests must
//! succeed (honouring `Retry-After`); and no row may be stored that a grant did not allow.

use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_helpers::{abuse, client_token, free_port, now_secs, post_json, wait_healthy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{TROVE, demo, serve_command};

/// The address space the server may map: its budgets below come to about 1 GiB of data, its
/// threads reserve 32 MiB of stack each; any one attack, unbounded, asks for far more.
const ADDRESS_SPACE: u64 = 6 << 30;

/// Budgets lowered so the attacks reach them quickly, and short timeouts.
const FLAGS: &[&str] = &[
    "--query-memory",
    "536870912",
    "--query-memory-per-query",
    "134217728",
    "--query-timeout",
    "10s",
    "--query-idle-timeout",
    "5s",
    "--query-max-bytes",
    "33554432",
    "--query-concurrency-total",
    "8",
    "--query-file-cache-bytes",
    "67108864",
    "--body-idle-timeout",
    "1s",
    "--body-timeout",
    "5s",
    "--header-timeout",
    "2s",
    "--ingest-inflight-bytes",
    "134217728",
    "--buffer-bytes",
    "134217728",
];

struct Server {
    child: Child,
    port: u16,
    creds: Value,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let creds = demo(&data);
        let port = free_port();
        let limit = format!("--as={ADDRESS_SPACE}");
        let child = serve_command(&["prlimit", &limit, TROVE], &data, port)
            .args(FLAGS)
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
            .spawn()
            .expect("prlimit (util-linux) runs the server");
        wait_healthy(&reqwest::Client::new(), port).await;
        Server { child, port, creds, _dir: dir }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn subscriber(&self, name: &str) -> &Value {
        self.creds["subscribers"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
    }

    async fn token(&self, name: &str) -> String {
        let s = self.subscriber(name);
        let (id, secret) = (s["client_id"].as_str().unwrap(), s["client_secret"].as_str().unwrap());
        client_token(&reqwest::Client::new(), &self.base(), id, secret).await
    }

    /// `Bearer <nid>:<key>` of a demo subscriber's connection.
    fn connection_bearer(&self, name: &str) -> String {
        let c = &self.subscriber(name)["connection"];
        format!("{}:{}", c["nid"], c["key"].as_str().unwrap())
    }

    /// `con_id=..&key=..` of member `uid` with a demo subscriber.
    fn member_query(&self, uid: usize, name: &str) -> String {
        let nid = self.subscriber(name)["connection"]["nid"].to_string();
        let k = &self.creds["members"][uid - 1]["keys"][&nid];
        format!("con_id={}&key={}&source_type=connection", k["con_id"].as_str().unwrap(), k["key"].as_str().unwrap())
    }
}

/// What the well-behaved client saw.
#[derive(Default)]
struct Canary {
    answered: AtomicUsize,
    retried: AtomicUsize,
    rows: AtomicUsize,
    failures: Mutex<Vec<String>>,
    latencies: Mutex<Vec<Duration>>,
}

/// Sends `request` until it is answered other than 429/503, waiting as `Retry-After` says
/// (at most ten tries): a well-behaved client.
async fn patiently(canary: &Canary, request: impl Fn() -> reqwest::RequestBuilder) -> Option<reqwest::Response> {
    let started = Instant::now();
    for _ in 0..10 {
        let resp = request().send().await.ok()?;
        let status = resp.status().as_u16();
        if status != 429 && status != 503 {
            canary.latencies.lock().unwrap().push(started.elapsed());
            return Some(resp);
        }
        canary.retried.fetch_add(1, Ordering::Relaxed);
        let wait = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(wait.min(1))).await;
    }
    None
}

/// insight-ltd reads (SQL and the Mydex door) and energy-co delivers a reading for member 1,
/// over and over, until `stop`.
async fn well_behaved(
    client: reqwest::Client,
    base: String,
    insight: String,
    mydex: String,
    bearer: String,
    canary: Arc<Canary>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0i64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let sql = || {
            client
                .post(format!("{base}/v1/query"))
                .bearer_auth(&insight)
                .json(&json!({"sql": "SELECT count(*) AS n FROM ds_energy_consumption"}))
        };
        let read = || {
            client
                .get(format!("{base}/api/pds/transaction/1.json?{mydex}&dataset=ds_energy_consumption"))
                .bearer_auth(&insight)
        };
        let row = format!(
            "{}\n",
            json!({"member_uid": 1, "field_energy_reading_timestamp": now_secs() - 3600 + i % 3600, "field_energy_reading_value": 1.5})
        );
        let write = || {
            client
                .post(format!("{base}/v1/ingest/ds_energy_consumption"))
                .bearer_auth(&bearer)
                .header("content-type", "application/x-ndjson")
                .body(row.clone())
        };
        for (what, resp) in [
            ("SQL", patiently(&canary, sql).await),
            ("Mydex read", patiently(&canary, read).await),
            ("ingest", patiently(&canary, write).await),
        ] {
            match resp {
                Some(r) if r.status() == 200 => {
                    canary.answered.fetch_add(1, Ordering::Relaxed);
                    if what == "ingest" {
                        canary.rows.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(r) => canary.failures.lock().unwrap().push(format!("{what}: {}", r.status())),
                None => {
                    canary.failures.lock().unwrap().push(format!("{what}: no answer, or still refused after ten tries"))
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw HTTP/1.1 request on a fresh connection; with `receive_buffer`, a small receive
/// window, so that an answer left unread fills it at once.
async fn raw(port: u16, request: &[u8], receive_buffer: Option<u32>) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(bytes) = receive_buffer {
        socket.set_recv_buffer_size(bytes).unwrap();
    }
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    stream.write_all(request).await.unwrap();
    stream
}

/// Everything the server sends until it closes, or `None` if it is still open after `wait`.
async fn until_closed(stream: &mut tokio::net::TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok().map(|()| out)
}

#[tokio::test]
async fn abuse_is_refused_and_the_server_keeps_serving_others() {
    let mut server = Server::start().await;
    let base = server.base();
    let client = abuse::client();
    let energy = server.token("energy-co").await;
    let care = server.token("care-services").await;
    let canary = Arc::new(Canary::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pid = server.child.id();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(test_helpers::rss_bytes(pid).unwrap_or(0), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let behaving = tokio::spawn(well_behaved(
        reqwest::Client::new(),
        base.clone(),
        server.token("insight-ltd").await,
        server.member_query(1, "insight-ltd"),
        server.connection_bearer("energy-co"),
        canary.clone(),
        stop.clone(),
    ));
    let mut refused = 0;
    let mut lines = Vec::new();

    // The corpus, one request at a time.
    for attack in abuse::sql().iter().chain(&abuse::ingest()) {
        let started = Instant::now();
        let (status, kind, body) = abuse::send(&client, &base, &server.creds, &energy, attack).await;
        assert!(server.alive(), "{}: the server died ({status} {body})", attack.name);
        assert!(attack.expect.contains(&status), "{}: {status} {body}", attack.name);
        assert_eq!(kind, "application/problem+json", "{}: {body}", attack.name);
        assert!(
            !body.contains("aaaaaaaa") && !body.contains("xxxxxxxx"),
            "{}: a refusal echoes a value: {body}",
            attack.name
        );
        refused += 1;
        lines.push(format!("{} -> {status} in {:.0?}", attack.name, started.elapsed()));
    }

    // A chunked body that stops arriving: 408 once it has been idle a second, and what it
    // sent is all it held of the in-flight budget meanwhile.
    let bearer = server.connection_bearer("energy-co");
    let head = format!(
        "POST /v1/ingest/ds_energy_consumption HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{{\"member_uid\": 1\r\n"
    );
    let mut slow = raw(server.port, head.as_bytes(), None).await;
    let started = Instant::now();
    let answer =
        until_closed(&mut slow, Duration::from_secs(10)).await.expect("the server ends a body that stopped arriving");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("application/problem+json"), "{answer}");
    lines.push(format!("a body that stopped arriving -> 408 after {:.1?}", started.elapsed()));
    refused += 1;

    // Headers that never end: the connection is closed.
    let mut trickle = raw(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n", None).await;
    let started = Instant::now();
    assert!(
        until_closed(&mut trickle, Duration::from_secs(10)).await.is_some(),
        "headers that never end hold a connection"
    );
    lines.push(format!("headers that never end -> closed after {:.1?}", started.elapsed()));

    // Readers that stop reading: energy-co's four query slots held by answers nobody reads,
    // so its next query is 429, until the stalled writes time out and free them.
    let sql =
        json!({"sql": "SELECT value, value * 2 AS b, value * 3 AS c, value * 4 AS d FROM generate_series(1, 1000000)"})
            .to_string();
    let request = format!(
        "POST /v1/query HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {energy}\r\nAccept: text/csv\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{sql}",
        sql.len()
    );
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(raw(server.port, request.as_bytes(), Some(4096)).await);
    }
    // Each answer has begun (its status line is read, the rest left unread), so all four
    // hold one of energy-co's query slots.
    for s in &mut stalled {
        let mut status = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut status))
            .await
            .expect("an answer begins")
            .unwrap();
        assert_eq!(&status, b"HTTP/1.1 200", "a stalled reader's query was admitted");
    }
    let started = Instant::now();
    let small = json!({"sql": "SELECT count(*) AS n FROM ds_energy_consumption"});
    let query = || client.post(format!("{base}/v1/query")).bearer_auth(&energy).json(&small).send();
    let held = query().await.unwrap();
    assert_eq!(held.status(), 429, "the stalled answers hold energy-co's query slots");
    assert!(held.headers().contains_key("retry-after"));
    // Past the idle timeout (5 s, long enough that a loaded machine starts all four inside it)
    // the stalled writes fail, their connections close, and the
    // queries end: the slots are free again though nobody read a byte more.
    let freed = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let resp = query().await.unwrap();
        if resp.status() == 200 || started.elapsed() > Duration::from_secs(20) {
            break resp;
        }
    };
    assert_eq!(freed.status(), 200, "the slots came back");
    lines.push(format!("4 readers that stopped reading held energy-co's slots; freed after {:.1?}", started.elapsed()));
    // Reading now would let a write that has not yet timed out go on: the last of the four
    // times out within another idle timeout (5 s) of the first.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for s in &mut stalled {
        let cut = until_closed(s, Duration::from_secs(10)).await.expect("a stalled answer's connection is closed");
        assert!(!cut.ends_with(b"0\r\n\r\n"), "a cut answer never looks whole");
    }

    stop.store(true, Ordering::Relaxed);
    behaving.await.unwrap();
    sampler.abort();
    assert!(server.alive(), "the server is up after all of it");

    // The well-behaved client was served throughout; what is stored is what it wrote.
    let failures = canary.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "the well-behaved client was refused: {failures:?}");
    let rows = canary.rows.load(Ordering::Relaxed);
    let count = |token: &str, table: &str| {
        let (client, base) = (client.clone(), base.clone());
        let token = token.to_owned();
        let sql = format!("SELECT count(*) AS n FROM {table}");
        async move {
            let v = post_json(&client, &format!("{base}/v1/query"), &token, &json!({"sql": sql})).await;
            v[0]["n"].as_i64().unwrap() as usize
        }
    };
    assert_eq!(count(&energy, "ds_energy_consumption").await, rows, "energy readings: only the well-behaved client's");
    assert_eq!(count(&care, "ds_referrals").await, 0, "referrals: none");
    let mut latencies = canary.latencies.lock().unwrap().clone();
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    for line in &lines {
        println!("abuse: {line}");
    }
    println!(
        "abuse: {} attacks refused (4xx/429/503 problem+json), 0 crashes; the other client: {} requests answered, {} retried after 429/503, p99 {p99:.0?}, {rows} rows stored and nothing else; server RSS at most {} MiB under a {} GiB address-space cap",
        refused,
        canary.answered.load(Ordering::Relaxed),
        canary.retried.load(Ordering::Relaxed),
        peak.load(Ordering::Relaxed) >> 20,
        ADDRESS_SPACE >> 30,
    );
    let _ = server.child.kill();
    let _ = server.child.wait();
}
