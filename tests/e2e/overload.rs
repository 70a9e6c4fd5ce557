//! Overload: twice the rate the server sustains, offered open loop (each batch sent when
//! due, as independent clients would), against small, explicit memory limits. The excess
//! must get 429/503 with `Retry-After`, nothing else may answer 5xx, memory must not follow
//! the load offered, the process must keep serving, and after a SIGKILL in the middle of it every
//! acknowledged row is stored exactly once.

use std::time::Duration;

use test_helpers::Objects;

use crate::durability::Run;

const BUFFER_BYTES: u64 = 8 << 20;
const INFLIGHT_BYTES: u64 = 1 << 20;

/// Resident memory of `pid` (0 once it is gone).
fn rss(pid: u32) -> u64 {
    test_helpers::rss_bytes(pid).unwrap_or(0)
}

#[tokio::test]
async fn twice_the_sustainable_rate_is_refused_cleanly() {
    let mut run = Run::new(Objects::Local);
    run.pause_each_second = false;
    run.flags = ["--buffer-bytes", &BUFFER_BYTES.to_string(), "--ingest-inflight-bytes", &INFLIGHT_BYTES.to_string()]
        .map(String::from)
        .to_vec();
    let server = run.up(&[]).await;

    // What it sustains: enough closed-loop writers to keep it busy, each waiting for its answer.
    let probe = std::time::Instant::now();
    let writers = run.writers(&server, 8, 500);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = writers.stop(&mut run).await;
    let sustained = (tally.acked as f64 / probe.elapsed().as_secs_f64()) as u64;
    assert_eq!(tally.refused_without_retry_after + tally.other_5xx + tally.unanswered, 0, "{tally:?}");

    let pid = server.child.id();
    let base = rss(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(base));
    let files = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (peak, files) = (peak.clone(), files.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(pid), std::sync::atomic::Ordering::Relaxed);
                let open = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
                files.fetch_max(open, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let seconds = 8;
    let tally = run.offer(&server, 2 * sustained, 500, Duration::from_secs(seconds)).await;
    sampler.abort();
    let (peak, files) =
        (peak.load(std::sync::atomic::Ordering::Relaxed), files.load(std::sync::atomic::Ordering::Relaxed));
    // With 9 MiB of configured buffers, growth past 512 MiB means memory follows the load
    // offered rather than the limits (the figure itself is in the summary line).
    let budget = base + (512 << 20);
    let line = format!(
        "overload: sustained {sustained} rows/s, offered {} rows/s for {seconds} s: {} rows acknowledged ({:.0} rows/s), {} batches refused with Retry-After, {} without, {} other 5xx, {} unanswered; RSS {} MiB at rest, {} MiB at most (budget {} MiB), {files} files open at most",
        2 * sustained,
        tally.acked,
        tally.acked as f64 / seconds as f64,
        tally.refused,
        tally.refused_without_retry_after,
        tally.other_5xx,
        tally.unanswered,
        base >> 20,
        peak >> 20,
        budget >> 20,
    );
    println!("{line}");
    assert!(tally.refused > 0, "the excess is refused: {line}");
    assert_eq!(tally.refused_without_retry_after + tally.other_5xx + tally.unanswered, 0, "{line}");
    assert!(tally.acked as f64 >= 0.15 * (sustained * seconds) as f64, "it kept serving under overload: {line}");
    assert!(peak <= budget, "{line}");

    // A crash at the end of it: every acknowledged row is still stored exactly once.
    server.kill();
    run.verify("overload").await;
}
