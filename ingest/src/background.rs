//! CPU work off the request path: Parquet encoding of flushes and compactions, and decoding
//! of the files a compaction merges, at most half as many jobs at once as there are cores.
//! Jobs are short (a flush encodes its hot file in pieces, see `persist`), and each runs at
//! the priority of the moment it starts:
//! - while every buffer is below its soft limit, on threads of their own at nice 10 (on
//!   Linux): when requests and background work both want the core, the kernel runs the
//!   requests first, so an acknowledgement does not wait behind a flush's sort and encoding;
//! - while a buffer is above it ([`Pressure`]), on tokio's blocking threads at normal
//!   priority: at low priority a saturated server would starve its flusher until the buffer
//!   refused writes (`BENCHMARKS.md`, "Ack latency").

use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Semaphore;

use crate::IngestError;

/// How many background jobs run at once (half the cores, at least one).
fn bound() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

fn permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| Semaphore::new(bound()))
}

/// Ingesters whose buffer is above its soft limit, process-wide like the threads.
static PRESSED: AtomicIsize = AtomicIsize::new(0);

/// One ingester's say in the priority of background work: pressed while its buffer is
/// above its soft limit.
#[derive(Debug, Default)]
pub(crate) struct Pressure(AtomicBool);

impl Pressure {
    pub(crate) fn set(&self, pressed: bool) {
        if self.0.swap(pressed, Ordering::Relaxed) != pressed {
            PRESSED.fetch_add(if pressed { 1 } else { -1 }, Ordering::Relaxed);
        }
    }
}

impl Drop for Pressure {
    fn drop(&mut self) {
        self.set(false);
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The low-priority threads, as many as jobs may run at once (a job holds a permit, so one
/// is always free for it).
fn low_priority_pool() -> &'static Mutex<std::sync::mpsc::Sender<Job>> {
    static POOL: OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..bound() {
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

/// Lowers the calling thread's priority by 10 nice levels (on Linux, nice is per thread).
/// Raising it again takes a privilege, hence threads of their own, not a priority per job.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: get/setpriority take plain integers; `who = 0` is the calling thread on Linux.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, (libc::getpriority(libc::PRIO_PROCESS, 0) + 10).min(19));
    }
}

/// Runs `f` on a background thread once a permit is free, without blocking the runtime.
pub(crate) async fn run<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, IngestError> {
    let permit = permits().acquire().await.map_err(|_| IngestError::Internal("background permits closed".into()))?;
    // The permit goes with the work: a caller that stops waiting does not free it early.
    if PRESSED.load(Ordering::Relaxed) > 0 {
        metrics::counter!("trove_background_jobs_total", "priority" => "normal").increment(1);
        return tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| IngestError::Internal(format!("a background task failed: {e}")));
    }
    metrics::counter!("trove_background_jobs_total", "priority" => "low").increment(1);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _permit = permit;
        let _ = tx.send(f());
    });
    low_priority_pool()
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

    async fn most_at_once() -> usize {
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..super::bound() + 3)
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
        most.load(Ordering::SeqCst)
    }

    fn nice() -> i32 {
        // SAFETY: getpriority takes plain integers; `who = 0` is the calling thread on Linux.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_at_most_the_bound_at_once_at_the_pressures_priority_and_survives_a_panic() {
        assert_eq!(most_at_once().await, super::bound(), "never more than the bound at once");
        assert!(super::run(|| panic!("boom")).await.is_err());
        assert_eq!(super::run(|| 2 + 2).await.unwrap(), 4, "a panic frees its permit and its thread");
        let base = nice();
        if cfg!(target_os = "linux") {
            assert_eq!(super::run(nice).await.unwrap(), (base + 10).min(19), "unpressed: low priority");
        }
        let pressure = super::Pressure::default();
        pressure.set(true);
        pressure.set(true);
        assert_eq!(super::run(nice).await.unwrap(), base, "pressed: normal priority");
        assert_eq!(most_at_once().await, super::bound(), "the bound holds under pressure too");
        drop(pressure);
        assert_eq!(super::PRESSED.load(Ordering::Relaxed), 0, "a dropped pressure is released once");
    }
}
