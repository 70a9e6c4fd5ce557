//! The one wall clock every crate reads. Stored and logged times are epoch milliseconds;
//! event times in rows are epoch seconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Epoch milliseconds now (0 before 1970, which a working clock never says).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Epoch seconds now.
pub fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}
