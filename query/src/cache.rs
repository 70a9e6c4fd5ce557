//! Decoded Parquet files kept in memory, least recently used first out, under a byte budget
//! (a `moka` cache weighed in bytes).
//!
//! Per-member files are small (a member-day of 15-minute readings is 96 rows), so a read
//! across thousands of members would otherwise open and decode thousands of files per query.
//! Files are immutable and uniquely named, so a cached file never goes stale; it holds a
//! file's stored columns, and the scoped table projects and filters it like any other rows.
//!
//! A hot file (every member's rows of a flush, sorted by member) is read by every read of
//! its dataset while it is hot: it is kept decoded whole, with where each member's rows
//! are, so a read of a few members slices it and a read of thousands takes their rows in
//! one pass.
//!
//! A read across thousands of members also finds the same thousands of files concatenated
//! as a *block*, keyed by the exact list of their paths: a day of 10,000 members is then a
//! few large batches instead of 10,000 lookups and a copy of each. A block holds exactly the
//! rows of the files it names, so it serves nothing a read of those files would not.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    File(String),
    /// A block: its file count and first and last paths; the whole list is checked on a hit.
    Block(usize, String, String),
}

#[derive(Debug)]
enum Entry {
    File(RecordBatch),
    Hot(Arc<HotFile>),
    Block { paths: Vec<String>, parts: Vec<RecordBatch> },
}

/// A decoded hot file: its rows (sorted by member) and each member's run of them.
#[derive(Debug)]
pub struct HotFile {
    pub batch: RecordBatch,
    /// (member uid, first row, rows), by member.
    pub runs: Vec<(i64, usize, usize)>,
}

impl Entry {
    fn bytes(&self) -> usize {
        match self {
            Entry::File(b) => b.get_array_memory_size(),
            Entry::Hot(h) => h.batch.get_array_memory_size() + h.runs.len() * 24,
            // The path list is dwarfed by the rows, but counted: a block of 10,000 files holds
            // about 1 MB of paths.
            Entry::Block { paths, parts } => {
                parts.iter().map(RecordBatch::get_array_memory_size).sum::<usize>()
                    + paths.iter().map(String::len).sum::<usize>()
            }
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct FileCache {
    limit: usize,
    entries: Cache<Key, Arc<Entry>>,
}

impl FileCache {
    /// Bytes the cached entries hold (as their weights count them).
    pub fn bytes(&self) -> usize {
        self.entries.weighted_size() as usize
    }

    pub fn new(limit: usize) -> FileCache {
        // Least recently used out, as a file cache read by repeated queries wants; moka's
        // weights are u32, and no entry over the limit is kept, so the cap only matters for
        // limits over 4 GiB.
        let entries = Cache::builder()
            .max_capacity(limit as u64)
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|_, e: &Arc<Entry>| u32::try_from(e.bytes()).unwrap_or(u32::MAX))
            .build();
        FileCache { limit, entries }
    }

    /// Whether a file of this many bytes on disk is worth keeping (small ones are).
    pub fn takes(&self, size_bytes: i64) -> bool {
        self.limit > 0 && (size_bytes as usize) < self.limit / 64
    }

    /// The cached files among `paths`, in order.
    pub fn get_many<'a>(&self, paths: impl IntoIterator<Item = &'a str>) -> Vec<Option<RecordBatch>> {
        paths
            .into_iter()
            .map(|p| match self.entries.get(&Key::File(p.to_owned())).as_deref() {
                Some(Entry::File(batch)) => Some(batch.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn insert(&self, path: &str, batch: RecordBatch) {
        self.put(Key::File(path.to_owned()), Entry::File(batch));
    }

    /// Whether hot files are kept (the cache is on).
    pub fn keeps_hot(&self) -> bool {
        self.limit > 0
    }

    pub fn get_hot(&self, path: &str) -> Option<Arc<HotFile>> {
        match self.entries.get(&Key::File(path.to_owned())).as_deref() {
            Some(Entry::Hot(hot)) => Some(hot.clone()),
            _ => None,
        }
    }

    pub fn insert_hot(&self, path: &str, hot: Arc<HotFile>) {
        self.put(Key::File(path.to_owned()), Entry::Hot(hot));
    }

    /// The block of exactly these files, in this order, if cached.
    pub fn get_block(&self, paths: &[&str]) -> Option<Vec<RecordBatch>> {
        match self.entries.get(&block_key(paths)?).as_deref() {
            Some(Entry::Block { paths: held, parts }) if held.iter().map(String::as_str).eq(paths.iter().copied()) => {
                Some(parts.clone())
            }
            _ => None,
        }
    }

    /// Keeps `parts`, the concatenated rows of the files at `paths` in order, as a block.
    pub fn insert_block(&self, paths: &[&str], parts: Vec<RecordBatch>) {
        if let Some(key) = block_key(paths) {
            self.put(key, Entry::Block { paths: paths.iter().map(|p| (*p).to_owned()).collect(), parts });
        }
    }

    fn put(&self, key: Key, entry: Entry) {
        if entry.bytes() > self.limit {
            return;
        }
        self.entries.insert(key, Arc::new(entry));
        metrics::gauge!("trove_query_file_cache_bytes").set(self.entries.weighted_size() as f64);
    }
}

fn block_key(paths: &[&str]) -> Option<Key> {
    Some(Key::Block(paths.len(), (*paths.first()?).to_owned(), (*paths.last()?).to_owned()))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int64Array;

    use super::*;

    fn batch(n: usize) -> RecordBatch {
        RecordBatch::try_from_iter([("a", Arc::new(Int64Array::from(vec![1i64; n])) as _)]).unwrap()
    }

    #[test]
    fn keeps_the_recently_used_within_its_budget() {
        let one = batch(1000).get_array_memory_size();
        let cache = FileCache::new(one * 2 + one / 2);
        // moka applies reads and writes to its eviction order in batches: settle each step.
        let settled = |step: &dyn Fn()| {
            step();
            cache.entries.run_pending_tasks();
        };
        settled(&|| cache.insert("a", batch(1000)));
        settled(&|| cache.insert("b", batch(1000)));
        settled(&|| assert!(cache.get_many(["a"])[0].is_some(), "a is now the most recently used"));
        settled(&|| cache.insert("c", batch(1000)));
        let got = cache.get_many(["a", "b", "c"]);
        assert_eq!(
            got.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, false, true],
            "b was least recently used"
        );
        assert!(cache.takes(10) && !FileCache::new(0).takes(10));
    }

    #[test]
    fn a_block_serves_only_its_exact_file_list() {
        let cache = FileCache::new(1 << 20);
        cache.insert_block(&["a", "b", "c"], vec![batch(3)]);
        assert_eq!(cache.get_block(&["a", "b", "c"]).unwrap()[0].num_rows(), 3);
        assert!(cache.get_block(&["a", "x", "c"]).is_none(), "same count and ends, another file between");
        assert!(cache.get_block(&["a", "c"]).is_none());
        assert!(cache.get_block(&[]).is_none());
        assert!(cache.get_many(["a"])[0].is_none(), "a block is not a file");
    }
}
