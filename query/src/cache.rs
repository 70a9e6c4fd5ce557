//! Decoded Parquet files kept in memory, least recently used first out, under a byte budget.
//!
//! Per-member files are small (a member-day of 15-minute readings is 96 rows), so a read
//! across thousands of members would otherwise open and decode thousands of files per query.
//! Files are immutable and uniquely named, so a cached file never goes stale; it holds a
//! file's stored columns, and the scoped table projects and filters it like any other rows.

use std::collections::HashMap;
use std::sync::Mutex;

use datafusion::arrow::array::RecordBatch;

#[derive(Debug, Default)]
struct State {
    /// Path → (decoded file, last use).
    files: HashMap<String, (RecordBatch, u64)>,
    bytes: usize,
    tick: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct FileCache {
    limit: usize,
    state: Mutex<State>,
}

impl FileCache {
    pub fn new(limit: usize) -> FileCache {
        FileCache { limit, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a file of this many bytes on disk is worth keeping (small ones are).
    pub fn takes(&self, size_bytes: i64) -> bool {
        self.limit > 0 && (size_bytes as usize) < self.limit / 64
    }

    /// The cached files among `paths`, in order, under one lock (a read across thousands of
    /// members asks for thousands at once).
    pub fn get_many<'a>(&self, paths: impl IntoIterator<Item = &'a str>) -> Vec<Option<RecordBatch>> {
        let mut state = self.state();
        let state = &mut *state;
        state.tick += 1;
        let tick = state.tick;
        paths
            .into_iter()
            .map(|p| {
                let (batch, used) = state.files.get_mut(p)?;
                *used = tick;
                Some(batch.clone())
            })
            .collect()
    }

    pub fn insert(&self, path: &str, batch: RecordBatch) {
        let bytes = batch.get_array_memory_size();
        let mut state = self.state();
        let state = &mut *state;
        state.tick += 1;
        if let Some((old, _)) = state.files.insert(path.to_owned(), (batch, state.tick)) {
            state.bytes -= old.get_array_memory_size();
        }
        state.bytes += bytes;
        if state.bytes > self.limit {
            // Evict the least recently used down to 90 % of the budget, so the sort is paid
            // once per many insertions.
            let mut by_use: Vec<(u64, String)> = state.files.iter().map(|(p, (_, used))| (*used, p.clone())).collect();
            by_use.sort_unstable();
            for (_, path) in by_use {
                if state.bytes <= self.limit / 10 * 9 {
                    break;
                }
                if let Some((b, _)) = state.files.remove(&path) {
                    state.bytes -= b.get_array_memory_size();
                }
            }
        }
        metrics::gauge!("trove_query_file_cache_bytes").set(state.bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int64Array;

    use super::*;

    fn batch(n: usize) -> RecordBatch {
        RecordBatch::try_from_iter([("a", Arc::new(Int64Array::from(vec![1i64; n])) as _)]).unwrap()
    }

    #[test]
    fn keeps_the_recently_used_within_its_budget() {
        let one = batch(1000).get_array_memory_size();
        let cache = FileCache::new(one * 2 + one / 2);
        cache.insert("a", batch(1000));
        cache.insert("b", batch(1000));
        assert!(cache.get_many(["a"])[0].is_some(), "a is now the most recently used");
        cache.insert("c", batch(1000));
        let got = cache.get_many(["a", "b", "c"]);
        assert_eq!(got.iter().map(Option::is_some).collect::<Vec<_>>(), [true, false, true], "b was least recently used");
        assert!(cache.takes(10) && !FileCache::new(0).takes(10));
    }
}
