//! CPU work off the request path: Parquet encoding of flushes and compactions, and decoding
//! of the files a compaction merges, on tokio's blocking threads but at most half as many at
//! once as there are cores. A flush round encodes one file per member; run them all at once
//! and the scheduler shares the cores among them and the request threads alike, so
//! acknowledgements wait behind the round. Bounded, background work takes at most half the
//! cores and the requests keep the rest (`BENCHMARKS.md`, "Ack latency"). The threads keep
//! normal priority: lower, and a saturated server would never flush.

use std::sync::OnceLock;

use tokio::sync::Semaphore;

use crate::IngestError;

fn permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))))
}

/// Runs `f` on a blocking thread once a permit is free, without blocking the runtime.
pub(crate) async fn run<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, IngestError> {
    let permit = permits().acquire().await.map_err(|_| IngestError::Internal("background permits closed".into()))?;
    // The permit goes with the work: a caller that stops waiting does not free it early.
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(|e| IngestError::Internal(format!("a background task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_at_most_the_bound_at_once_and_survives_a_panic() {
        let bound = super::permits().available_permits();
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..bound + 3)
            .map(|_| {
                let (running, most) = (running.clone(), most.clone());
                tokio::spawn(super::run(move || {
                    most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), bound, "never more than the bound at once");
        assert!(super::run(|| panic!("boom")).await.is_err());
        assert_eq!(super::run(|| 2 + 2).await.unwrap(), 4, "a panic frees its permit");
    }
}
