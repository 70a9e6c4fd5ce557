//! # trove-load
//!
//! trove's load generator: a client of a running trove server, over real HTTP with
//! keep-alive connections, as a utility or a device maker would deliver. It sets up its own
//! subscriber, live connection and members through the API, sends a workload, and reports
//! rates and latencies (and the server's RSS and CPU when the server runs on this machine).
//!
//! It carries no server code: of the server's crates it uses only the catalog's dataset types
//! and ingest's Arrow type of each field, so its bodies are typed as the server decodes them.
//! The server (the `trove` package) carries none of its code or dependencies.
//!
//! A run:
//!
//! 1. sets up through the API (`setup`): a subscriber, a live connection granting the
//!    workload's dataset, the members and their agreements (or reuses `--setup-file`);
//! 2. builds the request bodies before the clock starts ([`rows`]), so the client's own
//!    encoding does not compete with the server for the cores while it is measured;
//! 3. sends them over `--connections` connections, as fast as answered or at `--rate`
//!    (latency then counts from when a batch was due), retrying 429/503 after `Retry-After`;
//! 4. prints a progress line, then a summary and a JSON [`Report`] (`report`).
//!
//! Modules: `config`, the command line ([`LoadConfig`]); `setup`, the API calls that set a
//! run up; [`rows`], the workloads' rows and request bodies; `report`, the measurements and
//! the report. This file sends, reads and watches.

mod config;
mod report;
pub mod rows;
mod setup;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catalog::time::{Clock, SystemClock};
use rand::Rng;
use reqwest::{Client, StatusCode};

pub use config::{BodyFormat, LoadConfig, Workload};
pub use report::Report;
use report::{Latencies, ReadReport, Sample, ServerProcess, ServerReport, metric};
use rows::Body;
use setup::{Api, Setup};

/// Why a run did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A usage problem: no operator token, an unusable input or setup file.
    #[error("{0}")]
    Config(String),
    /// A call to the server that failed or was refused.
    #[error("{0}")]
    Api(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The run completed, but not everything was stored or read (or nothing was sent).
    #[error("{batches} batches and {reads} reads failed")]
    Failed { batches: u64, reads: u64 },
}

impl Error {
    /// Exit status: 2 for usage problems, 1 otherwise (as the server's).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 2,
            _ => 1,
        }
    }
}

/// The event-time field of each workload's dataset, for the reads of `mixed`.
const ENERGY_TIME: &str = "field_energy_reading_timestamp";
/// A refused batch is given up after waiting this long in all.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
/// `mixed` and `soak` without `--rate` first measure the maximum for this long.
const PROBE: Duration = Duration::from_secs(5);
/// `bank` with `--rate` releases each window's batches at once.
const BURST_WINDOW: f64 = 2.0;

/// Runs the load, prints the report and writes it to `--report`: the report, or an error when
/// the run could not be set up or a batch was not stored.
pub async fn run(config: LoadConfig) -> Result<Report, Error> {
    let admin = match &config.admin_token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(config.data_dir.join("admin-token"))
            .map(|t| t.trim().to_owned())
            .map_err(|e| Error::Config(format!("no --admin-token and none in {}: {e}", config.data_dir.display())))?,
    };
    let base = config.url.trim_end_matches('/').to_owned();
    let client = Client::builder()
        // Every connection a phase keeps busy stays open for the next request: a pool
        // smaller than the setup's approvals in flight closed most of their connections
        // after each approval, and a new one per approval cost the server as much as the
        // approval itself.
        .pool_max_idle_per_host((config.connections as usize + config.readers as usize).max(setup::APPROVALS_IN_FLIGHT))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| Error::Api(format!("HTTP client: {e}")))?;
    let api = Api { client: client.clone(), base: base.clone() };
    let dataset_name = rows::dataset_of(config.workload);
    let dataset: catalog::Dataset = serde_json::from_value(
        api.call(reqwest::Method::GET, &format!("/v1/datasets/{dataset_name}"), &admin, None).await?,
    )
    .map_err(|e| Error::Api(format!("GET /v1/datasets/{dataset_name}: {e}")))?;
    let members = config.members as usize;
    let setup = Arc::new(setup::setup(&api, &admin, dataset_name, members, config.setup_file.as_deref()).await?);
    let server = config.server_pid.map(ServerProcess).or_else(|| {
        let url = reqwest::Url::parse(&base).ok()?;
        let local = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]" | "::1" | "0.0.0.0"));
        if local { ServerProcess::listening_on(url.port_or_known_default()?) } else { None }
    });

    let bodies = Arc::new(build_bodies(&config, &dataset, &setup)?);
    let body_rows: u64 = bodies.iter().map(|b| b.rows as u64).sum();
    eprintln!(
        "bodies: {} of {} rows ({:.1} MB) built{}",
        bodies.len(),
        config.batch,
        bodies.iter().map(|b| b.bytes.len()).sum::<usize>() as f64 / 1e6,
        if config.input.is_some() || config.rows.is_some_and(|r| r <= body_rows) { "" } else { ", cycled through" }
    );

    let ingest_url = format!("{base}/v1/ingest/{dataset_name}");
    let content_type = match config.format {
        BodyFormat::Ndjson => "application/x-ndjson",
        BodyFormat::Arrow => "application/vnd.apache.arrow.stream",
    };
    let sender =
        Sender { client: client.clone(), url: ingest_url, bearer: setup.ingest_bearer.clone(), content_type, bodies };
    let steady = matches!(config.workload, Workload::Mixed | Workload::Soak);
    let mut rate = config.rate;
    if steady && rate == 0 {
        let probe = sender
            .drive(
                &Plan { limit: None, duration: Some(PROBE), rate: 0, bursty: false, connections: config.connections },
                None,
            )
            .await;
        rate = ((probe.rows as f64 / probe.seconds) * config.fraction).max(1.0) as u64;
        eprintln!(
            "probe: {:.0} rows/s at most; offering {rate} rows/s ({} of it)",
            probe.rows as f64 / probe.seconds,
            config.fraction
        );
    }
    let limit = match (&config.input, config.rows) {
        (Some(_), _) => Some(sender.bodies.len() as u64),
        (None, Some(rows)) => Some(rows.div_ceil(config.batch as u64)),
        (None, None) => None,
    };
    let plan = Plan {
        limit,
        duration: limit.is_none().then_some(config.duration),
        rate,
        bursty: config.workload == Workload::Bank,
        connections: config.connections,
    };

    let cpu_before = server.and_then(|s| s.cpu_seconds());
    let watch = Watch::new(server, config.sample_every, config.workload == Workload::Soak, api.clone());
    let readers = (config.workload == Workload::Mixed)
        .then(|| Readers::start(api.clone(), setup.clone(), config.readers, watch.stop.clone()));
    let result = sender.drive(&plan, Some(&watch)).await;
    watch.stop.store(true, Ordering::Relaxed);
    let reads = match readers {
        Some(r) => Some(r.finish().await),
        None => None,
    };
    let (rss_max, samples) = watch.finish();
    let server_report = server.and_then(|s| {
        let cpu = s.cpu_seconds()? - cpu_before?;
        Some(ServerReport {
            pid: s.0,
            rss_max_bytes: rss_max.max(s.rss().unwrap_or(0)),
            rss_end_bytes: s.rss().unwrap_or(0),
            cpu_seconds: cpu,
            cores_busy: cpu / result.seconds,
        })
    });
    let report = Report {
        workload: config.workload,
        format: config.format,
        dataset: dataset_name.into(),
        members,
        batch: config.batch as usize,
        connections: config.connections,
        rate,
        seconds: result.seconds,
        rows: result.rows,
        bytes: result.bytes,
        requests: result.requests,
        rows_per_sec: result.rows as f64 / result.seconds,
        mb_per_sec: result.bytes as f64 / 1e6 / result.seconds,
        bytes_per_row: if result.rows > 0 { result.bytes as f64 / result.rows as f64 } else { 0.0 },
        ack_ms: result.latencies.summary(),
        refused: result.refused,
        retried: result.retried,
        given_up: result.given_up,
        failed: result.failed,
        errors: result.errors,
        server: server_report,
        reads,
        samples,
    };
    report.print();
    let json = serde_json::to_string(&report).expect("report serializes");
    println!("{json}");
    if let Some(path) = &config.report {
        std::fs::write(path, &json)?;
    }
    let read_failures: u64 = report.reads.iter().flatten().map(|(_, r)| r.failed).sum();
    if report.failed > 0 || read_failures > 0 || report.rows == 0 {
        return Err(Error::Failed { batches: report.failed, reads: read_failures });
    }
    Ok(report)
}

/// The bodies of the run: the input file's rows, or enough generated rows for `--rows`, or
/// for the `--pool-mib` budget.
fn build_bodies(config: &LoadConfig, dataset: &catalog::Dataset, setup: &Setup) -> Result<Vec<Body>, Error> {
    let uids: Vec<i64> = setup.members.iter().map(|m| m.uid).collect();
    let batch = config.batch as usize;
    let rows = match &config.input {
        Some(path) => {
            let text = std::fs::read_to_string(path)?;
            rows::read_ndjson(&text, dataset, uids.len())
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
        }
        None => {
            let now = SystemClock.now_secs();
            // One batch tells the body size, and so how many fit the pool.
            let sample = rows::generate(config.workload, dataset, uids.len(), batch, now);
            let per_body = rows::bodies(&sample, &uids, batch, config.format)[0].bytes.len().max(1);
            let fit = ((config.pool_mib << 20) / per_body).max(1) * batch;
            let wanted = config.rows.map_or(fit, |r| (r as usize).min(fit));
            rows::generate(config.workload, dataset, uids.len(), wanted, now)
        }
    };
    if rows.rows.is_empty() {
        return Err(Error::Config("no rows to send".into()));
    }
    Ok(rows::bodies(&rows, &uids, batch, config.format))
}

/// How a run sends: how many batches or for how long, and at what rate.
#[derive(Debug)]
struct Plan {
    limit: Option<u64>,
    duration: Option<Duration>,
    rate: u64,
    bursty: bool,
    connections: u32,
}

#[derive(Debug, Clone)]
struct Sender {
    client: Client,
    url: String,
    bearer: String,
    content_type: &'static str,
    bodies: Arc<Vec<Body>>,
}

/// Counters the senders share with the progress line.
#[derive(Debug, Default)]
struct Counters {
    next: AtomicU64,
    rows: AtomicU64,
    bytes: AtomicU64,
    requests: AtomicU64,
    refused: AtomicU64,
    retried: AtomicU64,
    given_up: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
    recent: Mutex<Latencies>,
}

impl Counters {
    fn error(&self, e: String) {
        let mut errors = self.errors.lock().expect("errors lock");
        if errors.len() < 5 {
            errors.push(e);
        }
    }
}

#[derive(Debug)]
struct Driven {
    seconds: f64,
    rows: u64,
    bytes: u64,
    requests: u64,
    refused: u64,
    retried: u64,
    given_up: u64,
    failed: u64,
    errors: Vec<String>,
    latencies: Latencies,
}

fn retry_after(resp: &reqwest::Response) -> Duration {
    let secs = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<f64>().ok()).unwrap_or(0.1);
    Duration::from_secs_f64(secs.clamp(0.01, 10.0))
}

impl Sender {
    async fn drive(&self, plan: &Plan, watch: Option<&Watch>) -> Driven {
        let counters = Arc::new(Counters::default());
        let started = Instant::now();
        let deadline = plan.duration.map(|d| started + d);
        let tasks: Vec<_> = (0..plan.connections)
            .map(|_| {
                let (this, counters) = (self.clone(), counters.clone());
                let (limit, rate, bursty) = (plan.limit, plan.rate, plan.bursty);
                tokio::spawn(async move { this.send_loop(&counters, started, deadline, limit, rate, bursty).await })
            })
            .collect();
        let progress = watch.map(|w| w.progress(counters.clone(), started));
        let mut latencies = Latencies::default();
        for t in tasks {
            latencies.merge(t.await.expect("sender task"));
        }
        if let Some(p) = progress {
            p.abort();
        }
        let c = &counters;
        Driven {
            seconds: started.elapsed().as_secs_f64(),
            rows: c.rows.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            given_up: c.given_up.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            errors: c.errors.lock().expect("errors lock").clone(),
            latencies,
        }
    }

    async fn send_loop(
        &self,
        c: &Counters,
        started: Instant,
        deadline: Option<Instant>,
        limit: Option<u64>,
        rate: u64,
        bursty: bool,
    ) -> Latencies {
        let mut latencies = Latencies::default();
        let batch_rows = self.bodies[0].rows as f64;
        loop {
            let k = c.next.fetch_add(1, Ordering::Relaxed);
            if limit.is_some_and(|l| k >= l) {
                break;
            }
            // Open loop: batch k is due at a fixed time, whenever the previous one returned.
            let due = (rate > 0).then(|| {
                let at = k as f64 * batch_rows / rate as f64;
                started + Duration::from_secs_f64(if bursty { (at / BURST_WINDOW).floor() * BURST_WINDOW } else { at })
            });
            if let Some(due) = due {
                if deadline.is_some_and(|d| due >= d) {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let body = &self.bodies[(k % self.bodies.len() as u64) as usize];
            let began = due.unwrap_or_else(Instant::now);
            let (mut waited, mut refused) = (Duration::ZERO, false);
            loop {
                c.requests.fetch_add(1, Ordering::Relaxed);
                let sent = self
                    .client
                    .post(&self.url)
                    .bearer_auth(&self.bearer)
                    .header("content-type", self.content_type)
                    .body(body.bytes.clone())
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        let _ = resp.bytes().await;
                        let took = began.elapsed();
                        latencies.record(took);
                        c.recent.lock().expect("latency lock").record(took);
                        c.rows.fetch_add(body.rows as u64, Ordering::Relaxed);
                        c.bytes.fetch_add(body.bytes.len() as u64, Ordering::Relaxed);
                        if refused {
                            c.retried.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Nothing of a refused batch was stored: sending it again cannot duplicate.
                    Ok(resp)
                        if matches!(resp.status(), StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) =>
                    {
                        c.refused.fetch_add(1, Ordering::Relaxed);
                        refused = true;
                        let pause = retry_after(&resp);
                        let _ = resp.bytes().await;
                        waited += pause;
                        match after_refusal(waited, Instant::now() + pause, deadline) {
                            AfterRefusal::Retry => {
                                tokio::time::sleep(pause).await;
                                continue;
                            }
                            AfterRefusal::GiveUp => {
                                c.given_up.fetch_add(1, Ordering::Relaxed);
                            }
                            AfterRefusal::Fail => {
                                c.failed.fetch_add(1, Ordering::Relaxed);
                                c.error(format!("a batch still refused after {} s of waiting", waited.as_secs()));
                            }
                        }
                    }
                    Ok(resp) => {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        c.error(format!("{status}: {}", text.chars().take(300).collect::<String>()));
                    }
                    Err(e) => {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                        c.error(format!("transport: {e}"));
                    }
                }
                break;
            }
        }
        latencies
    }
}

/// What a sender does with a refused batch (429 or 503 with `Retry-After`).
#[derive(Debug, PartialEq, Eq)]
enum AfterRefusal {
    /// Send it again once the wait the server asked for is over.
    Retry,
    /// The run ends before that wait does: the batch is not stored, and that is no
    /// failure, since the server answered as it should under overload.
    GiveUp,
    /// Refused for longer than a batch waits in all: the server is not recovering.
    Fail,
}

/// `waited`: the waits the server asked for this batch so far, the latest included;
/// `resend`: when the latest wait ends; `deadline`: the end of a timed run.
fn after_refusal(waited: Duration, resend: Instant, deadline: Option<Instant>) -> AfterRefusal {
    if waited > MAX_RETRY_WAIT {
        AfterRefusal::Fail
    } else if deadline.is_some_and(|d| resend >= d) {
        AfterRefusal::GiveUp
    } else {
        AfterRefusal::Retry
    }
}

/// The progress line and the server samples (RSS every tick; `soak` also reads the
/// server's gauges every `--sample-every`).
#[derive(Debug)]
struct Watch {
    server: Option<ServerProcess>,
    every: Duration,
    soak: bool,
    api: Api,
    stop: Arc<AtomicBool>,
    rss_max: Arc<AtomicU64>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Watch {
    fn new(server: Option<ServerProcess>, every: Duration, soak: bool, api: Api) -> Watch {
        Watch { server, every, soak, api, stop: Arc::default(), rss_max: Arc::default(), samples: Arc::default() }
    }

    fn progress(&self, c: Arc<Counters>, started: Instant) -> tokio::task::JoinHandle<()> {
        let (server, every, soak, api) = (self.server, self.every, self.soak, self.api.clone());
        let (rss_max, samples) = (self.rss_max.clone(), self.samples.clone());
        let tty = std::io::stderr().is_terminal();
        tokio::spawn(async move {
            let tick = Duration::from_secs(1);
            let (mut last_rows, mut last_at, mut last_sample) = (0u64, started, started);
            loop {
                tokio::time::sleep(tick).await;
                let now = Instant::now();
                let rss = server.and_then(|s| s.rss());
                if let Some(r) = rss {
                    rss_max.fetch_max(r, Ordering::Relaxed);
                }
                let due = now - last_sample >= every;
                if !tty && !due {
                    continue;
                }
                // Rate and p99 since the line before.
                let rows = c.rows.load(Ordering::Relaxed);
                let rate = (rows - last_rows) as f64 / (now - last_at).as_secs_f64();
                let p99 = std::mem::take(&mut *c.recent.lock().expect("latency lock")).summary().p99;
                let line = format!(
                    "{:>6.0} s {:>10.0} rows/s  {:>11} rows  ack p99 {:>7.1} ms  refused {}  failed {}{}",
                    (now - started).as_secs_f64(),
                    rate,
                    rows,
                    p99,
                    c.refused.load(Ordering::Relaxed),
                    c.failed.load(Ordering::Relaxed),
                    rss.map(|r| format!("  server RSS {} MiB", r >> 20)).unwrap_or_default()
                );
                if tty {
                    eprint!("\r{line}   ");
                } else {
                    eprintln!("{line}");
                }
                if soak && due {
                    let text = api.client.get(format!("{}/metrics", api.base)).send().await.ok();
                    let text = match text {
                        Some(r) => r.text().await.unwrap_or_default(),
                        None => String::new(),
                    };
                    samples.lock().expect("samples lock").push(Sample {
                        seconds: (now - started).as_secs_f64(),
                        rows,
                        rows_per_sec: rows as f64 / (now - started).as_secs_f64(),
                        server_rss_bytes: rss,
                        buffer_bytes: metric(&text, "trove_ingest_buffer_bytes"),
                        files: metric(&text, "trove_ingest_files"),
                        compaction_backlog: metric(&text, "trove_ingest_compaction_backlog_partitions"),
                    });
                }
                if due {
                    last_sample = now;
                }
                (last_rows, last_at) = (rows, now);
            }
        })
    }

    fn finish(self) -> (u64, Vec<Sample>) {
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
        let samples = std::mem::take(&mut *self.samples.lock().expect("samples lock"));
        (self.rss_max.load(Ordering::Relaxed), samples)
    }
}

/// The read clients of `mixed`: even ones ask the SQL door for a random member's last day,
/// odd ones the Mydex door for the same, one request at a time each.
#[derive(Debug)]
struct Readers {
    tasks: Vec<(&'static str, ReaderTask)>,
}

/// A reader's latencies, answers and rows.
type ReaderTask = tokio::task::JoinHandle<(Latencies, u64, u64)>;

impl Readers {
    fn start(api: Api, setup: Arc<Setup>, count: u32, stop: Arc<AtomicBool>) -> Readers {
        let tasks = (0..count)
            .map(|j| {
                let (api, setup, stop) = (api.clone(), setup.clone(), stop.clone());
                let door = if j % 2 == 0 { "sql" } else { "mydex" };
                (door, tokio::spawn(async move { read_loop(api, setup, door, stop).await }))
            })
            .collect();
        Readers { tasks }
    }

    async fn finish(self) -> BTreeMap<&'static str, ReadReport> {
        let mut doors: BTreeMap<&'static str, (Latencies, u64, u64)> = BTreeMap::new();
        for (door, task) in self.tasks {
            let (l, failed, refused) = task.await.expect("reader task");
            let entry = doors.entry(door).or_default();
            entry.0.merge(l);
            entry.1 += failed;
            entry.2 += refused;
        }
        doors
            .into_iter()
            .map(|(door, (l, failed, refused))| (door, ReadReport { ms: l.summary(), failed, refused }))
            .collect()
    }
}

async fn read_loop(api: Api, setup: Arc<Setup>, door: &'static str, stop: Arc<AtomicBool>) -> (Latencies, u64, u64) {
    let (mut latencies, mut failed, mut refused) = (Latencies::default(), 0u64, 0u64);
    let mut token = match api.token(&setup).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("reader: {e}");
            return (latencies, 1, 0);
        }
    };
    let ds = &setup.dataset;
    while !stop.load(Ordering::Relaxed) {
        let member = &setup.members[rand::rng().random_range(0..setup.members.len())];
        let since = SystemClock.now_secs() - 86_400;
        let started = Instant::now();
        let req = if door == "sql" {
            let sql = format!("SELECT * FROM {ds} WHERE member_uid = {} AND {ENERGY_TIME} >= {since}", member.uid);
            api.client
                .post(format!("{}/v1/query", api.base))
                .bearer_auth(&token)
                .json(&serde_json::json!({ "sql": sql }))
        } else {
            let query = format!(
                "con_id={}&key={}&source_type=connection&dataset={ds}&filters%5B{ENERGY_TIME}%5D%5Boperator%5D=%3E%3D&filters%5B{ENERGY_TIME}%5D%5Bvalue%5D={since}",
                member.con_id, member.key
            );
            api.client.get(format!("{}/api/pds/transaction/{}.json?{query}", api.base, member.uid)).bearer_auth(&token)
        };
        match req.send().await {
            Ok(resp) if resp.status() == StatusCode::OK => match resp.bytes().await {
                Ok(_) => latencies.record(started.elapsed()),
                Err(_) => failed += 1,
            },
            Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                tokio::time::sleep(retry_after(&resp)).await;
            }
            // A subscriber token expires: take a new one.
            Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && door == "sql" => match api.token(&setup).await {
                Ok(t) => token = t,
                Err(_) => failed += 1,
            },
            Ok(resp) => {
                failed += 1;
                let status = resp.status();
                if failed <= 3 {
                    eprintln!(
                        "reader {door}: {status}: {}",
                        resp.text().await.unwrap_or_default().chars().take(300).collect::<String>()
                    );
                }
            }
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("reader {door}: {e}");
                }
            }
        }
    }
    (latencies, failed, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_batch_is_retried_until_the_run_ends_and_fails_only_past_the_longest_wait() {
        let now = Instant::now();
        let second = Duration::from_secs(1);
        let end = Some(now + 10 * second);
        assert_eq!(after_refusal(second, now + second, end), AfterRefusal::Retry);
        assert_eq!(after_refusal(second, now + second, None), AfterRefusal::Retry, "a run of so many rows");
        assert_eq!(after_refusal(5 * second, now + 10 * second, end), AfterRefusal::GiveUp, "the wait reaches the end");
        assert_eq!(after_refusal(MAX_RETRY_WAIT, now + second, None), AfterRefusal::Retry);
        assert_eq!(after_refusal(MAX_RETRY_WAIT + second, now + second, None), AfterRefusal::Fail);
        assert_eq!(after_refusal(MAX_RETRY_WAIT + second, now + 10 * second, end), AfterRefusal::Fail);
    }
}
