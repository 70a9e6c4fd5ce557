//! CPU work off the request path: Parquet encoding of flushes and compactions, and decoding
//! of the files a compaction merges, on a pool of half as many threads as there are cores.
//! A flush round encodes one file per member; run each on a thread of its own and the
//! scheduler shares the cores among all of them and the request threads alike, so
//! acknowledgements wait behind the round. With the pool, background work takes at most
//! half the cores and the requests keep the rest (`BENCHMARKS.md`, "Ack latency"). The
//! threads keep normal priority: lower, and a saturated server would never flush.

use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

use crate::IngestError;

type Job = Box<dyn FnOnce() + Send>;

fn pool() -> &'static Mutex<Sender<Job>> {
    static POOL: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("trove-background-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("spawn a background thread");
        }
        Mutex::new(tx)
    })
}

/// Runs `f` on a background thread and waits for its result without blocking the runtime.
pub(crate) async fn run<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, IngestError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    pool().lock().unwrap_or_else(|p| p.into_inner()).send(job).map_err(|_| IngestError::Internal("background pool gone".into()))?;
    match rx.await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(_)) => Err(IngestError::Internal("a background task panicked".into())),
        Err(_) => Err(IngestError::Internal("a background task was dropped".into())),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_work_on_a_pool_thread_and_survives_a_panic() {
        let name = super::run(|| std::thread::current().name().map(str::to_owned)).await.unwrap();
        assert!(name.is_some_and(|n| n.starts_with("trove-background-")));
        assert!(super::run(|| panic!("boom")).await.is_err());
        assert_eq!(super::run(|| 2 + 2).await.unwrap(), 4, "the thread lives on after a panic");
    }
}
