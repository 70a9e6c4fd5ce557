//! The load generator (`trove-load`, run in this process through its library) against the
//! real server binary, small enough for CI: it sets up its own subscriber, connection,
//! members and agreements through the API, sends, and reports; the rows it reports as stored
//! must be there, read back through the SQL door.

use std::path::Path;
use std::process::{Child, Stdio};

use clap::Parser;
use serde_json::Value;
use test_helpers::{client_token, free_port, post_json, wait_healthy};
use trove_load::LoadConfig;

use crate::{TROVE, serve_command};

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(data: &Path) -> Server {
    let port = free_port();
    let child =
        serve_command(&[TROVE], data, port).args(["--flush-age", "300ms"]).stderr(Stdio::null()).spawn().unwrap();
    wait_healthy(&reqwest::Client::new(), port).await;
    Server { child, port }
}

/// The load generator's command line: `args` after the program name.
fn config(args: &[&str]) -> LoadConfig {
    let mut config = LoadConfig::try_parse_from(std::iter::once("trove-load").chain(args.iter().copied())).unwrap();
    // Unless given, the operator token is found through --data-dir, as on the server's
    // machine, never in this process's TROVE_ADMIN_TOKEN.
    if !args.contains(&"--admin-token") {
        config.admin_token = None;
    }
    config
}

/// Runs the load generator with `args`: its JSON report, after checking it succeeded and
/// returned the report it wrote.
async fn load(server: &Server, data: &Path, args: &[&str]) -> Value {
    let report = data.parent().unwrap().join("report.json");
    let url = format!("http://127.0.0.1:{}", server.port);
    let common = ["--url", &url, "--data-dir", data.to_str().unwrap(), "--report", report.to_str().unwrap()];
    let returned = trove_load::run(config(&[&common[..], args].concat()))
        .await
        .unwrap_or_else(|e| panic!("trove-load {args:?} failed: {e}"));
    let written = std::fs::read_to_string(&report).unwrap();
    assert_eq!(serde_json::to_string(&returned).unwrap(), written, "the report returned is the one written");
    serde_json::from_str(&written).unwrap()
}

async fn count_rows(port: u16, setup: &Path, dataset: &str) -> i64 {
    let setup: Value = serde_json::from_slice(&std::fs::read(setup).unwrap()).unwrap();
    let (client, base) = (reqwest::Client::new(), format!("http://127.0.0.1:{port}"));
    let (id, secret) = (setup["client_id"].as_str().unwrap(), setup["client_secret"].as_str().unwrap());
    let token = client_token(&client, &base, id, secret).await;
    let sql = serde_json::json!({"sql": format!("SELECT count(*) AS n FROM {dataset}")});
    let rows = post_json(&client, &format!("{base}/v1/query"), &token, &sql).await;
    rows[0]["n"].as_i64().unwrap()
}

// Worker threads, as in the binary: the senders, readers and progress line run side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = serve(&data).await;
    let setup = dir.path().join("setup.json");
    let setup_arg = setup.to_str().unwrap();

    // Energy readings as NDJSON, a fixed number of rows: all of them stored, none twice.
    let r = load(
        &server,
        &data,
        &["--members", "20", "--batch", "250", "--connections", "2", "--rows", "5000", "--setup-file", setup_arg],
    )
    .await;
    assert_eq!(
        (r["rows"].as_u64(), r["failed"].as_u64(), r["requests"].as_u64()),
        (Some(5000), Some(0), Some(20)),
        "{r}"
    );
    assert!(r["ack_ms"]["p50"].as_f64().unwrap() > 0.0 && r["rows_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["server"]["pid"].as_u64(), Some(server.child.id() as u64), "the server found by its port: {r}");
    assert!(r["server"]["rss_max_bytes"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(count_rows(server.port, &setup, "ds_energy_consumption").await, 5000);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&setup).unwrap().permissions().mode() & 0o777,
        0o600,
        "the setup file holds credentials"
    );

    // The same members again, as Arrow IPC, for a duration at a rate.
    let r = load(
        &server,
        &data,
        &["--members", "20", "--format", "arrow", "--rate", "4000", "--duration", "2s", "--setup-file", setup_arg],
    )
    .await;
    assert_eq!(r["failed"].as_u64(), Some(0), "{r}");
    let arrow_rows = r["rows"].as_i64().unwrap();
    assert!((4000..=9000).contains(&arrow_rows), "about 2 s at 4,000 rows/s: {r}");
    assert_eq!(count_rows(server.port, &setup, "ds_energy_consumption").await, 5000 + arrow_rows);

    // Bank transactions (decimals) and browsing history (long strings), each set up anew.
    for workload in ["bank", "browsing"] {
        let r = load(&server, &data, &["--workload", workload, "--members", "10", "--batch", "100", "--rows", "1000"])
            .await;
        assert_eq!((r["rows"].as_u64(), r["failed"].as_u64()), (Some(1000), Some(0)), "{workload}: {r}");
    }

    // Mixed: ingest at a set rate while both read doors are read.
    let steady = ["--members", "20", "--rate", "2000", "--duration", "3s", "--setup-file", setup_arg];
    let r = load(&server, &data, &[&["--workload", "mixed", "--readers", "2"][..], &steady].concat()).await;
    assert_eq!(r["failed"].as_u64(), Some(0), "{r}");
    for door in ["sql", "mydex"] {
        let reads = &r["reads"][door];
        assert!(reads["ms"]["count"].as_u64().unwrap() > 0 && reads["failed"].as_u64() == Some(0), "{door}: {r}");
    }

    // Soak samples the server's gauges.
    let r = load(&server, &data, &[&["--workload", "soak", "--sample-every", "1s"][..], &steady].concat()).await;
    let samples = r["samples"].as_array().unwrap();
    assert!(samples.len() >= 2, "{r}");
    assert!(
        samples.iter().all(|s| s["server_rss_bytes"].as_u64().unwrap() > 0 && s["files"].as_f64().is_some()),
        "{r}"
    );

    // A server that refuses the operator token fails the run with a clear exit status.
    let url = format!("http://127.0.0.1:{}", server.port);
    let err = trove_load::run(config(&["--url", &url, "--admin-token", "wrong", "--rows", "10"])).await.unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(err.to_string().contains("401"), "{err}");
}
