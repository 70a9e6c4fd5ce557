//! Crash durability: the real binary under sustained ingest, killed with SIGKILL at random
//! moments (also while flushing), restarted each time. Every acknowledged row must be
//! stored exactly once, and nothing that was never sent may appear.
//! `TROVE_CRASH_KILLS` sets the number of kills (default 20).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::Value;
use test_helpers::{Objects, free_port, object_stores, wait_healthy};

use crate::TROVE;

/// Where a run keeps its Parquet files: the local directory, or a prefix on the test S3 server.
struct Target {
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    store: Arc<dyn ObjectStore>,
}

fn target(objects: Objects, data: &std::path::Path) -> Target {
    match objects {
        Objects::Local => Target {
            args: Vec::new(),
            env: Vec::new(),
            store: test_helpers::object_store(Objects::Local, &data.join("objects")),
        },
        Objects::S3 => {
            let prefix = format!("crash-{}", std::process::id());
            let (url, env) = test_helpers::s3_env(&prefix);
            Target { args: vec!["--object-store".into(), url], env, store: test_helpers::s3_store(&prefix) }
        }
    }
}

fn start(data: &std::path::Path, port: u16, target: &Target) -> Child {
    Command::new(TROVE)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--flush-age", "150ms", "--data-dir"])
        .arg(data)
        .args(&target.args)
        .envs(target.env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("TROVE_ADMIN_TOKEN")
        .env("TROVE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

type Unanswered = Arc<Mutex<Vec<(String, String, Vec<i64>)>>>;

/// Retries batches whose answer a crash swallowed, with the same Idempotency-Key: each gets
/// the first answer (or is stored now), never a second copy. Returns how many were retried.
async fn retry_unanswered(client: &reqwest::Client, port: u16, auth: &str, unanswered: &Unanswered, acked: &Mutex<BTreeSet<i64>>) -> usize {
    let batches = std::mem::take(&mut *unanswered.lock().unwrap());
    let n = batches.len();
    for (key, body, markers) in batches {
        let resp = client
            .post(format!("http://127.0.0.1:{port}/v1/ingest/ds_energy_consumption"))
            .bearer_auth(auth)
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", key)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert_eq!(status, 200, "a retry with the same key and body is answered: {}", resp.text().await.unwrap_or_default());
        acked.lock().unwrap().extend(markers);
    }
    n
}

#[tokio::test]
async fn acknowledged_rows_survive_sigkill_exactly_once() {
    for objects in object_stores() {
        crash_run(objects).await;
    }
}

async fn crash_run(objects: Objects) {
    let kills: usize = std::env::var("TROVE_CRASH_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = target(objects, &data);
    let out = Command::new(TROVE).args(["demo", "--json", "--data-dir"]).arg(&data).env_remove("TROVE_ADMIN_TOKEN").output().unwrap();
    assert!(out.status.success());
    let creds: Value = serde_json::from_slice(&out.stdout).unwrap();
    let conn = &creds["subscribers"][0]["connection"];
    let auth = format!("{}:{}", conn["nid"], conn["key"].as_str().unwrap());
    let client = reqwest::Client::new();
    let acked: Arc<Mutex<BTreeSet<i64>>> = Default::default();
    // Batches whose answer was lost in a crash, retried with the same Idempotency-Key.
    let unanswered: Unanswered = Default::default();
    let mut sent_max = 0i64;
    let mut restarts = Vec::new();
    let base_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - 30 * 86_400;
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };

    for round in 0..kills {
        let port = free_port();
        let mut server = start(&data, port, &target);
        restarts.push(wait_healthy(&client, port).await);
        retry_unanswered(&client, port, &auth, &unanswered, &acked).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..3i64 {
            let (client, auth, acked, stop, unanswered) =
                (client.clone(), auth.clone(), acked.clone(), stop.clone(), unanswered.clone());
            // Each writer owns a range of row markers, so every row sent is distinct.
            let first = (round as i64 * 3 + w) * 10_000_000;
            writers.push(tokio::spawn(async move {
                let mut next = first;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let markers: Vec<i64> = (next..next + 50).collect();
                    next += 50;
                    let body: String = markers
                        .iter()
                        .map(|m| {
                            format!(
                                "{{\"member_uid\": {}, \"field_energy_homeid\": {m}, \"field_energy_reading_timestamp\": {}}}\n",
                                1 + m % 9,
                                base_time + m % 1_000_000
                            )
                        })
                        .collect();
                    let key = format!("batch-{}", markers[0]);
                    let resp = client
                        .post(format!("http://127.0.0.1:{port}/v1/ingest/ds_energy_consumption"))
                        .bearer_auth(&auth)
                        .header("content-type", "application/x-ndjson")
                        .header("idempotency-key", &key)
                        .body(body.clone())
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status().is_success() => acked.lock().unwrap().extend(markers),
                        Ok(r) if r.status().is_client_error() && r.status() != 429 => panic!("refused: {}", r.status()),
                        Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                        // No answer: the server died; the batch may or may not be stored.
                        Err(_) => {
                            unanswered.lock().unwrap().push((key, body, markers));
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                next
            }));
        }
        tokio::time::sleep(Duration::from_millis(100 + rand(500))).await;
        server.kill().unwrap();
        server.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            sent_max = sent_max.max(w.await.unwrap());
        }
    }

    // A last clean run: the last retries, then SIGTERM flushes everything.
    let port = free_port();
    let server = start(&data, port, &target);
    restarts.push(wait_healthy(&client, port).await);
    let retried = retry_unanswered(&client, port, &auth, &unanswered, &acked).await;
    Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    let mut server = server;
    assert!(server.wait().unwrap().success());

    let catalog = catalog::Catalog::connect(&catalog::Catalog::sqlite_url(&data.join("catalog.db"))).await.unwrap();
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    let mut ids_by_member: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for f in catalog.all_parquet_files().await.unwrap() {
        let file = target.store.get(&object_store::path::Path::from(f.path.as_str())).await.expect("every recorded file exists");
        let bytes = file.bytes().await.unwrap();
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes).expect("every recorded file is readable").build().unwrap() {
            let batch = batch.unwrap();
            let markers = batch.column_by_name("field_energy_homeid").unwrap().as_primitive::<Int64Type>();
            let ids = batch.column_by_name("id").unwrap().as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                *seen.entry(markers.value(i)).or_default() += 1;
                ids_by_member.entry(f.member.get()).or_default().push(ids.value(i));
            }
        }
    }
    let acked = acked.lock().unwrap();
    let missing: Vec<_> = acked.iter().filter(|m| !seen.contains_key(m)).take(5).collect();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    let invented = seen.keys().filter(|m| **m >= sent_max + 10_000_000).count();
    for (member, ids) in &mut ids_by_member {
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "member {member}: a row id is used twice");
    }
    let slowest = restarts.iter().max().unwrap();
    println!(
        "crash ({objects:?}): {kills} kills, {} rows acknowledged, {} stored, {} missing, {} duplicated, {retried} batches retried at the end, slowest restart to ready {slowest:?}",
        acked.len(),
        seen.len(),
        missing.len(),
        twice.len()
    );
    assert!(acked.len() > 1000, "the writers made progress");
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
    assert!(twice.is_empty(), "rows stored twice: {twice:?}");
    assert_eq!(invented, 0);
    assert!(*slowest < Duration::from_secs(10), "restart to ready took {slowest:?}");
}
