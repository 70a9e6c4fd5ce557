//! The one wall clock every crate reads, held by the [`Catalog`](crate::Catalog) so that a
//! test can set it (as influxdb3's `iox_time::TimeProvider` is). Stored and logged times are
//! epoch milliseconds; event times in rows are epoch seconds.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What time it is.
pub trait Clock: Debug + Send + Sync + 'static {
    /// Epoch milliseconds now.
    fn now_ms(&self) -> i64;

    /// Epoch seconds now.
    fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// 0 before 1970, which a working clock never says.
    fn now_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock that says what it is told: for tests of anything that depends on the date.
#[derive(Debug)]
pub struct MockClock(AtomicI64);

impl MockClock {
    /// A clock stopped at `ms` epoch milliseconds.
    pub fn new(ms: i64) -> MockClock {
        MockClock(AtomicI64::new(ms))
    }

    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for MockClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}
