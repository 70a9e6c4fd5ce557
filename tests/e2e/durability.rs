//! The harness of the durability suites (crash, faults, overload): the real binary under
//! sustained ingest from several writers that log every acknowledged batch, restarted as
//! often as a suite likes, and the final check that every acknowledged row is stored exactly
//! once, in files the manifest names and anyone can read.
//!
//! Writers send batches of energy readings whose `field_energy_homeid` is a marker
//! unique to the row, each with an `Idempotency-Key`. A batch without a 200 (no answer, 429,
//! 503) is kept and retried with the same key after the next start: it must then be stored
//! once, whether or not the first attempt had stored it. Writers pause for 400 ms of every
//! second so that the buffer empties and WAL segments close, which moves idempotency keys
//! and access-log entries to the catalog: kills and faults land there too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use object_store::{ObjectStore, ObjectStoreExt};
use test_helpers::{Objects, free_port, wait_healthy};

use crate::{TROVE, demo, serve_command};

/// Where a run keeps its Parquet files: the local directory, or a prefix on the test S3 server.
struct Target {
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    store: Arc<dyn ObjectStore>,
}

fn target(objects: Objects, data: &Path) -> Target {
    match objects {
        Objects::Local => Target {
            args: Vec::new(),
            env: Vec::new(),
            store: test_helpers::object_store(Objects::Local, &data.join("objects")),
        },
        Objects::S3 => {
            let prefix = format!("durability-{}-{}", std::process::id(), uuid_ish());
            let (url, env) = test_helpers::s3_env(&prefix);
            Target { args: vec!["--object-store".into(), url], env, store: test_helpers::s3_store(&prefix) }
        }
    }
}

fn uuid_ish() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// A batch not known to be stored: its key, body and markers.
type Pending = (String, String, Vec<i64>);

/// What the writers of one server life saw.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) acked: usize,
    /// 429 or 503, each with `Retry-After`.
    pub(crate) refused: usize,
    /// 429 or 503 without `Retry-After`.
    pub(crate) refused_without_retry_after: usize,
    /// Any other 5xx.
    pub(crate) other_5xx: usize,
    /// No answer: the server died.
    pub(crate) unanswered: usize,
}

#[derive(Default)]
struct Counts {
    acked: AtomicUsize,
    refused: AtomicUsize,
    refused_without_retry_after: AtomicUsize,
    other_5xx: AtomicUsize,
    unanswered: AtomicUsize,
}

impl Counts {
    fn tally(&self) -> Tally {
        Tally {
            acked: self.acked.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            refused_without_retry_after: self.refused_without_retry_after.load(Ordering::Relaxed),
            other_5xx: self.other_5xx.load(Ordering::Relaxed),
            unanswered: self.unanswered.load(Ordering::Relaxed),
        }
    }
}

enum Outcome {
    Acked,
    Refused,
    NoAnswer,
}

/// What a writer needs to send batches and log their fate.
#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    auth: String,
    port: u16,
    base_time: i64,
    acked: Arc<Mutex<BTreeSet<i64>>>,
    pending: Arc<Mutex<Vec<Pending>>>,
    counts: Arc<Counts>,
}

impl Sender {
    /// Sends one batch of energy readings, one row per marker, spread over members 1-9.
    async fn send(&self, markers: Vec<i64>) -> Outcome {
        let body: String = markers
            .iter()
            .map(|m| {
                format!(
                    "{{\"member_uid\": {}, \"field_energy_homeid\": {m}, \"field_energy_reading_timestamp\": {}}}\n",
                    1 + m % 9,
                    self.base_time + m % 1_000_000
                )
            })
            .collect();
        let key = format!("batch-{}", markers[0]);
        let c = &self.counts;
        let outcome = match post(&self.client, self.port, &self.auth, &key, body.clone()).send().await {
            Ok(r) if r.status() == 200 => {
                c.acked.fetch_add(markers.len(), Ordering::Relaxed);
                self.acked.lock().unwrap().extend(markers);
                return Outcome::Acked;
            }
            Ok(r) if r.status() == 429 || r.status() == 503 => {
                let with = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).is_some();
                let counter = if with { &c.refused } else { &c.refused_without_retry_after };
                counter.fetch_add(1, Ordering::Relaxed);
                Outcome::Refused
            }
            Ok(r) if r.status().is_server_error() => {
                c.other_5xx.fetch_add(1, Ordering::Relaxed);
                Outcome::Refused
            }
            Ok(r) => panic!("refused: {} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => {
                if c.unanswered.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("first unanswered batch: {e:?}");
                }
                Outcome::NoAnswer
            }
        };
        // Not known to be stored: retried with the same key after the next start.
        self.pending.lock().unwrap().push((key, body, markers));
        outcome
    }
}

/// The writers of one server life; [`Writers::stop`] ends them.
pub(crate) struct Writers {
    stop: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<i64>>,
    counts: Arc<Counts>,
}

impl Writers {
    pub(crate) async fn stop(self, run: &mut Run) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            run.sent_max = run.sent_max.max(h.await.unwrap());
        }
        self.counts.tally()
    }
}

/// A running server.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) port: u16,
    /// Its stderr (log level warn).
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub(crate) log: PathBuf,
}

#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
impl Server {
    /// Whether the process ended by itself.
    pub(crate) fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    pub(crate) fn log_contains(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.log).unwrap_or_default().contains(needle)
    }

    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        self.child.wait().unwrap();
    }
}

fn post(client: &reqwest::Client, port: u16, auth: &str, key: &str, body: String) -> reqwest::RequestBuilder {
    client
        .post(format!("http://127.0.0.1:{port}/v1/ingest/ds_energy_consumption"))
        .bearer_auth(auth)
        .header("content-type", "application/x-ndjson")
        .header("idempotency-key", key)
        .body(body)
}

/// One data directory across many server lives, and what its writers were told.
pub(crate) struct Run {
    dir: tempfile::TempDir,
    data: PathBuf,
    target: Target,
    objects: Objects,
    auth: String,
    client: reqwest::Client,
    acked: Arc<Mutex<BTreeSet<i64>>>,
    pending: Arc<Mutex<Vec<Pending>>>,
    retried: usize,
    sent_max: i64,
    lives: i64,
    restarts: Vec<Duration>,
    base_time: i64,
    /// Extra `trove serve` flags of every life.
    pub(crate) flags: Vec<String>,
    /// Whether writers pause for 400 ms of every second (the default).
    pub(crate) pause_each_second: bool,
}

impl Run {
    /// A fresh data directory with the demo fixture; energy-co's connection writes.
    pub(crate) fn new(objects: Objects) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let target = target(objects, &data);
        let creds = demo(&data);
        let conn = &creds["subscribers"][0]["connection"];
        let auth = format!("{}:{}", conn["nid"], conn["key"].as_str().unwrap());
        let base_time =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - 30 * 86_400;
        Run {
            dir,
            data,
            target,
            objects,
            auth,
            client: reqwest::Client::new(),
            acked: Default::default(),
            pending: Default::default(),
            retried: 0,
            sent_max: 0,
            lives: 0,
            restarts: Vec::new(),
            base_time,
            flags: Vec::new(),
            pause_each_second: true,
        }
    }

    /// Starts a server life with `env` (flushes every 150 ms, compaction every 300 ms of
    /// two small files, hot files settled after a second, so kills land in all three) and waits until it is ready. A life without
    /// extra `env` (no faults) first retries the batches earlier lives left unanswered: each
    /// must now get a 200.
    pub(crate) async fn up(&mut self, env: &[(&str, &str)]) -> Server {
        self.lives += 1;
        let port = free_port();
        let log = self.dir.path().join(format!("server-{}.log", self.lives));
        let child = serve_command(&[TROVE], &self.data, port)
            .args([
                "--flush-age",
                "150ms",
                "--compact-interval",
                "300ms",
                "--compact-min-files",
                "2",
                "--hot-window",
                "1s",
            ])
            .args(&self.flags)
            .args(&self.target.args)
            .envs(self.target.env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(env.iter().copied())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Server { child, port, log };
        self.restarts.push(wait_healthy(&self.client, port).await);
        assert!(server.child.try_wait().unwrap().is_none(), "the server that answered is this life's");
        if env.is_empty() {
            self.retry_pending(port).await;
        }
        server
    }

    /// Waits (up to 30 s) until the server's collector has run once (its first flush round); returns
    /// how many objects it deleted.
    async fn wait_for_collection(&self, server: &Server) -> u64 {
        let url = format!("http://127.0.0.1:{}/metrics", server.port);
        for _ in 0..600 {
            let text = self.client.get(&url).send().await.unwrap().text().await.unwrap();
            if test_helpers::metric(&text, "trove_ingest_collections_total") >= 1.0 {
                return test_helpers::metric(&text, "trove_ingest_orphans_deleted_total") as u64;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        let tail: String =
            log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        panic!("the collector did not run within 30 s of start; the server's log ends:\n{tail}");
    }

    async fn retry_pending(&mut self, port: u16) {
        use futures::StreamExt;
        let batches = std::mem::take(&mut *self.pending.lock().unwrap());
        self.retried += batches.len();
        let (client, auth, acked) = (&self.client, &self.auth, &self.acked);
        futures::stream::iter(batches)
            .for_each_concurrent(8, |(key, body, markers)| async move {
                loop {
                    let resp = post(client, port, auth, &key, body.clone()).send().await.unwrap();
                    let status = resp.status();
                    if status == 429 || status == 503 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    assert_eq!(
                        status,
                        200,
                        "a retry with the same key and body is answered: {}",
                        resp.text().await.unwrap_or_default()
                    );
                    break;
                }
                acked.lock().unwrap().extend(markers);
            })
            .await;
    }

    fn sender(&self, server: &Server, counts: &Arc<Counts>) -> Sender {
        Sender {
            client: self.client.clone(),
            auth: self.auth.clone(),
            port: server.port,
            base_time: self.base_time,
            acked: self.acked.clone(),
            pending: self.pending.clone(),
            counts: counts.clone(),
        }
    }

    /// The first marker of writer `w` in this life: each owns a range, so every row sent is
    /// distinct.
    fn first_marker(&self, w: i64) -> i64 {
        (self.lives * 16 + w) * 10_000_000
    }

    /// Sends one batch of `rows` new rows once, outside the writers' bookkeeping (it is
    /// neither acknowledged nor retried): its answer, for suites that check a status.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub(crate) async fn send_once(&self, server: &Server, rows: i64) -> reqwest::Response {
        let body: String = (0..rows)
            .map(|m| {
                format!(
                    "{{\"member_uid\": {}, \"field_energy_reading_timestamp\": {}}}\n",
                    1 + m % 9,
                    self.base_time + m
                )
            })
            .collect();
        post(&self.client, server.port, &self.auth, &format!("once-{}", uuid_ish()), body)
            .send()
            .await
            .expect("an answer")
    }

    /// Starts `n` closed-loop writers of `batch`-row batches against `server`.
    pub(crate) fn writers(&self, server: &Server, n: i64, batch: i64) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let started = Instant::now();
        let pause = self.pause_each_second;
        let handles = (0..n)
            .map(|w| {
                let (stop, sender, first) = (stop.clone(), self.sender(server, &counts), self.first_marker(w));
                tokio::spawn(async move {
                    let mut next = first;
                    while !stop.load(Ordering::Relaxed) {
                        if pause && started.elapsed().as_millis() % 1000 >= 600 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        let outcome = sender.send((next..next + batch).collect()).await;
                        next += batch;
                        match outcome {
                            Outcome::Acked => {}
                            Outcome::Refused => tokio::time::sleep(Duration::from_millis(50)).await,
                            Outcome::NoAnswer => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    next
                })
            })
            .collect();
        Writers { stop, handles, counts }
    }

    /// Offers `rows_per_sec` in `batch`-row batches for `duration`, open loop: each batch
    /// is sent when it is due, however many are still unanswered, as independent clients
    /// would. Returns once every batch has its answer.
    pub(crate) async fn offer(&mut self, server: &Server, rows_per_sec: u64, batch: i64, duration: Duration) -> Tally {
        let counts = Arc::new(Counts::default());
        let sender = self.sender(server, &counts);
        let first = self.first_marker(15);
        let started = Instant::now();
        let mut sent = Vec::new();
        for k in 0.. {
            let due = started + Duration::from_secs_f64((k * batch) as f64 / rows_per_sec as f64);
            if due >= started + duration {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let (sender, markers) = (sender.clone(), (first + k * batch..first + (k + 1) * batch).collect());
            sent.push(tokio::spawn(async move { sender.send(markers).await }));
        }
        let last = first + sent.len() as i64 * batch;
        for s in sent {
            s.await.unwrap();
        }
        self.sent_max = self.sent_max.max(last);
        counts.tally()
    }

    /// A last clean life (the last retries, then SIGTERM flushes everything), then the check
    /// of the files the manifest names. Returns a one-line summary.
    pub(crate) async fn verify(mut self, what: &str) -> String {
        // Objects earlier lives left unrecorded (killed between a put and its commit, or
        // during compaction's grace period) are collected by this life at once.
        self.flags.extend(["--orphan-grace".to_owned(), "0s".to_owned()]);
        let server = self.up(&[]).await;
        let collected = self.wait_for_collection(&server).await;
        Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
        let mut child = server.child;
        assert!(child.wait().unwrap().success(), "a clean stop flushes and exits 0");

        let catalog =
            catalog::Catalog::connect(&catalog::Catalog::sqlite_url(&self.data.join("catalog.db"))).await.unwrap();
        let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
        let mut ids_by_member: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        let files = catalog.all_parquet_files().await.unwrap();
        for f in &files {
            let file = self
                .target
                .store
                .get(&object_store::path::Path::from(f.path.as_str()))
                .await
                .expect("every recorded file exists");
            let bytes = file.bytes().await.unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)
                .expect("every recorded file is readable")
                .build()
                .unwrap()
            {
                let batch = batch.unwrap();
                let markers = batch.column_by_name("field_energy_homeid").unwrap().as_primitive::<Int64Type>();
                let ids = batch.column_by_name("id").unwrap().as_primitive::<Int64Type>();
                let members = batch.column_by_name("member_uid").unwrap().as_primitive::<Int64Type>();
                for i in 0..batch.num_rows() {
                    *seen.entry(markers.value(i)).or_default() += 1;
                    ids_by_member.entry(members.value(i)).or_default().push(ids.value(i));
                }
            }
        }
        let recorded: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
        let stored: Vec<object_store::ObjectMeta> =
            futures::TryStreamExt::try_collect(self.target.store.list(None)).await.unwrap();
        let stored: BTreeSet<&str> =
            stored.iter().map(|o| o.location.as_ref()).filter(|p| p.ends_with(".parquet")).collect();
        let unrecorded: Vec<&&str> = stored.difference(&recorded).take(5).collect();
        assert!(unrecorded.is_empty(), "objects the manifest does not name: {unrecorded:?}");
        let acked = self.acked.lock().unwrap();
        let missing: Vec<_> = acked.iter().filter(|m| !seen.contains_key(m)).take(5).collect();
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
        let invented = seen.keys().filter(|m| **m >= self.sent_max + 10_000_000).count();
        for (member, ids) in &mut ids_by_member {
            let n = ids.len();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), n, "member {member}: a row id is used twice");
        }
        let slowest = self.restarts.iter().max().unwrap();
        let summary = format!(
            "{what} ({:?}): {} lives, {} rows acknowledged, {} stored in {} files, {} missing, {} duplicated, {} batches retried, {collected} unrecorded objects collected, slowest restart to ready {slowest:.1?}",
            self.objects,
            self.lives,
            acked.len(),
            seen.len(),
            files.len(),
            missing.len(),
            twice.len(),
            self.retried,
        );
        println!("{summary}");
        assert!(acked.len() > 1000, "the writers made progress");
        assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
        assert!(twice.is_empty(), "rows stored twice: {twice:?}");
        assert_eq!(invented, 0);
        assert!(*slowest < Duration::from_secs(10), "restart to ready took {slowest:?}");
        summary
    }
}
