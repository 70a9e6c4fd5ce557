//! CPU work off the request path: Parquet encoding of flushes and compactions, and decoding
//! of the files a compaction merges, on threads of their own, at most half as many as there
//! are cores, at a lower scheduling priority (nice 10, on Linux). When requests and
//! background work both want a core the kernel runs the requests first, so an
//! acknowledgement does not wait behind a flush's sort and encoding (`BENCHMARKS.md`, "Ack
//! latency"); background work still gets every idle cycle and about a tenth of a busy
//! core, so a saturated server still flushes, and if that is too slow the buffer's limit
//! pushes back on writers (429).

use std::sync::{Arc, Mutex, OnceLock};

use crate::IngestError;

type Job = Box<dyn FnOnce() + Send>;

/// How many background threads run (half the cores, at least one).
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

fn pool() -> &'static Mutex<std::sync::mpsc::Sender<Job>> {
    static POOL: OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads() {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("trove-background-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            // A panic ends the job (its caller gets an error), not the thread.
                            Ok(job) => drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))),
                            Err(_) => return,
                        }
                    }
                })
                .expect("the background threads start");
        }
        Mutex::new(tx)
    })
}

/// Lowers the calling thread's priority (on Linux, nice is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers; `who = 0` is the calling thread on Linux.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Runs `f` on a background thread, without blocking the runtime.
pub(crate) async fn run<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, IngestError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    pool()
        .lock()
        .map_err(|_| IngestError::Internal("the background queue is poisoned".into()))?
        .send(job)
        .map_err(|_| IngestError::Internal("the background threads stopped".into()))?;
    rx.await.map_err(|_| IngestError::Internal("a background task failed".into()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_at_most_the_bound_at_once_and_survives_a_panic() {
        let bound = super::threads();
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
