//! Fault injection (built with `--features failpoints`): each failpoint of the write path's
//! I/O steps set to fail, then to panic, for one server life under the durability harness's
//! writers. The point must be reached; while it fails, no write that needed it is
//! acknowledged (they get 503 with `Retry-After`, or no answer when the process stops on the
//! panic), nothing else answers 5xx, and after all of them every acknowledged row is stored
//! exactly once.

use std::time::{Duration, Instant};

use test_helpers::Objects;

use crate::durability::Run;

/// The failpoints, and whether every write passes through them before its 200.
const POINTS: &[(&str, bool)] = &[
    ("wal-write", true),
    ("wal-fsync", true),
    ("parquet-put", false),
    ("manifest-commit", false),
    ("compaction-swap", false),
    ("idempotency-record", false),
    ("access-log-record", false),
];

#[tokio::test]
async fn failing_io_steps_never_acknowledge_a_lost_row() {
    let mut run = Run::new(Objects::Local);
    let mut lines = Vec::new();
    for (point, on_ack_path) in POINTS {
        for action in ["return", "panic"] {
            let spec = format!("{point}={action}");
            let mut server = run.up(&[("FAILPOINTS", &spec)]).await;
            let writers = run.writers(&server, 2, 50);
            let started = Instant::now();
            // A failing point logs its name; a panicking one stops the process.
            let reached = loop {
                let hit = if action == "panic" {
                    server.exited()
                } else {
                    server.log_contains(&format!("failpoint {point}"))
                };
                if hit || started.elapsed() > Duration::from_secs(30) {
                    break hit;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            // Go on a little while the fault holds, then crash if it is still up.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let alive = !server.exited();
            let tally = writers.stop(&mut run).await;
            server.kill();
            // Recovery without the fault: the batches it left unanswered are retried.
            run.up(&[]).await.kill();
            let line = format!("{spec}: reached {reached}, {tally:?}, still serving {alive}");
            println!("faults: {line}");
            assert!(reached, "{line}");
            assert_eq!(tally.other_5xx, 0, "{line}");
            assert_eq!(tally.refused_without_retry_after, 0, "{line}");
            if *on_ack_path {
                assert_eq!(tally.acked, 0, "a write whose WAL append failed was acknowledged: {line}");
                if action == "return" {
                    assert!(tally.refused > 0, "{line}");
                }
            }
            if action == "panic" {
                assert!(!alive, "a panic in the write path stops the process: {line}");
            }
            lines.push(line);
        }
    }
    let summary = run.verify("faults").await;
    println!("faults: {} failpoint settings, 0 violations; {summary}", lines.len());
}

/// A fault in the write path that is not storage (a bug, here a failpoint where the
/// sequencer encodes a record) is a 500 without `Retry-After` and a log line: telling the
/// client to come back later would have it retry a bug forever. The server keeps serving.
#[tokio::test]
async fn an_internal_fault_is_a_500_not_a_retry() {
    let mut run = Run::new(Objects::Local);
    let mut server = run.up(&[("FAILPOINTS", "sequencer-encode=return")]).await;
    let resp = run.send_once(&server, 10).await;
    let (status, retry, kind) =
        (resp.status(), resp.headers().contains_key("retry-after"), resp.headers()["content-type"].clone());
    assert_eq!((status.as_u16(), retry), (500, false));
    assert_eq!(kind, "application/problem+json");
    assert!(server.log_contains("failpoint sequencer-encode"), "the fault is logged");
    assert!(!server.exited(), "and the server keeps serving");
    server.kill();
    println!("faults: an internal fault answered 500 without Retry-After");
}
