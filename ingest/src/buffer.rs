//! Acknowledged rows not yet in Parquet, per (environment, dataset, member), under one
//! global byte budget, and the index of the recorded files that hold the rest.
//!
//! Both live under one lock so that a read takes a partition's buffered rows and its files
//! in one consistent snapshot: a flush moves rows from the first to the second atomically
//! (after the manifest commit), and compaction swaps files the same way, so every
//! acknowledged row is seen exactly once, without listing object storage or asking the
//! catalog on the read path.
//!
//! A request's batch holds rows of up to thousands of members; each member's rows are
//! copied into that member's own column builders. Keeping slices of the shared batch
//! instead would pin every batch until its last member flushed and cost a kilobyte of
//! array headers per member per request, far more than the rows (measured: 10 GB resident
//! for a 0.5 GB buffer). Builders grow amortized O(1) per row and account what they hold.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Instant;

use catalog::{DataEnvironment, DatasetName, MemberId, ParquetFile};
use datafusion::arrow::array::RecordBatch;

use crate::columns::ColumnBuilder;
use crate::partition::PartitionKey;
use crate::schema::DatasetSchema;

/// Rows frozen into a batch (by a flush that is running or failed).
#[derive(Debug)]
struct Frozen {
    batch: RecordBatch,
    bytes: usize,
    segments: BTreeMap<u64, usize>,
}

#[derive(Debug)]
struct Partition {
    schema: Arc<DatasetSchema>,
    columns: Vec<ColumnBuilder>,
    /// Rows in `columns`, their bytes and the WAL segments holding them.
    rows: usize,
    bytes: usize,
    segments: BTreeMap<u64, usize>,
    frozen: Vec<Frozen>,
    /// When the oldest unflushed row arrived: flushing by age keeps the WAL short.
    oldest: Instant,
    flushing: bool,
}

impl Partition {
    fn bytes(&self) -> usize {
        self.bytes + self.frozen.iter().map(|f| f.bytes).sum::<usize>()
    }

    fn is_empty(&self) -> bool {
        self.rows == 0 && self.frozen.is_empty()
    }

    /// Every buffered row, as batches a reader may keep. The builders are frozen rather than
    /// copied, so repeated reads of a partition that takes no new rows share one batch; the
    /// frozen batches a run of read-insert-read leaves behind are merged (outside a flush,
    /// which counts them) once there are more than a few.
    fn rows(&mut self) -> Vec<RecordBatch> {
        self.freeze();
        if self.frozen.len() > 4 && !self.flushing {
            let batches: Vec<RecordBatch> = self.frozen.iter().map(|f| f.batch.clone()).collect();
            let batch = datafusion::arrow::compute::concat_batches(&self.schema.stored, &batches)
                .expect("frozen batches share the schema");
            let mut segments = BTreeMap::new();
            let mut bytes = 0;
            for f in self.frozen.drain(..) {
                bytes += f.bytes;
                for (segment, rows) in f.segments {
                    *segments.entry(segment).or_default() += rows;
                }
            }
            self.frozen.push(Frozen { batch, bytes, segments });
        }
        self.frozen.iter().map(|f| f.batch.clone()).collect()
    }

    /// Moves the rows of the builders into a frozen batch.
    fn freeze(&mut self) {
        if self.rows == 0 {
            return;
        }
        let columns = self.columns.iter_mut().map(|c| c.finish()).collect();
        let batch = RecordBatch::try_new(self.schema.stored.clone(), columns).expect("builders follow the schema");
        let segments = std::mem::take(&mut self.segments);
        // Account what was counted in (the estimate), so the budget's sums stay exact.
        self.frozen.push(Frozen { batch, bytes: self.bytes, segments });
        self.rows = 0;
        self.bytes = 0;
    }
}

/// The rows of a partition handed to a flush.
#[derive(Debug)]
pub struct FlushBatch {
    pub key: PartitionKey,
    pub schema: Arc<DatasetSchema>,
    pub batches: Vec<RecordBatch>,
    frozen: usize,
}

/// Member uids are already well spread integers: hashing them with SipHash was a tenth of
/// ingest CPU. A multiplicative hash is enough (and keys are not attacker-chosen here: they
/// passed the agreement check).
#[derive(Debug, Default, Clone, Copy)]
pub struct MemberHasher(u64);

impl std::hash::Hasher for MemberHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_i64(&mut self, v: i64) {
        self.0 = (v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
}

pub type MemberMap<V> = HashMap<MemberId, V, std::hash::BuildHasherDefault<MemberHasher>>;

/// One (environment, dataset): its members' buffered rows and recorded files.
#[derive(Debug, Default)]
struct Table {
    partitions: MemberMap<Partition>,
    /// Shared with snapshots (a read of 10,000 members copies 10,000 pointers, not lists);
    /// changed copy-on-write.
    files: MemberMap<Arc<Vec<Arc<ParquetFile>>>>,
}

/// What a read of one partition sees: buffered rows (stored schema) and recorded files.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub rows: Vec<RecordBatch>,
    pub files: Arc<Vec<Arc<ParquetFile>>>,
}

#[derive(Debug, Default)]
struct State {
    tables: HashMap<(DataEnvironment, DatasetName), Table>,
    /// Paths this node is committing (flushed files, compaction's new and replaced files):
    /// the change feed leaves them to [`Buffer::end_flush`] and [`Buffer::swap_files`], which
    /// apply them together with the rows they replace.
    own: std::collections::HashSet<String>,
    bytes: usize,
    /// Buffered rows per WAL segment, so the oldest needed segment is found at once.
    segments: BTreeMap<u64, usize>,
}

impl State {
    fn partition_mut(&mut self, key: &PartitionKey) -> Option<&mut Partition> {
        self.tables.get_mut(&(key.env, key.dataset.clone()))?.partitions.get_mut(&key.member)
    }
}

/// Adds a file to a partition's index unless it is there already (the manifest's change
/// feed repeats this node's own changes).
fn add_file(files: &mut Arc<Vec<Arc<ParquetFile>>>, file: &ParquetFile) {
    if !files.iter().any(|f| f.path == file.path) {
        Arc::make_mut(files).push(Arc::new(file.clone()));
    }
}

/// Fixed cost of a partition's builders, counted against the budget.
const PARTITION_OVERHEAD: usize = 1024;

/// The buffer. Every method takes the lock briefly; no I/O happens under it.
#[derive(Debug, Default)]
pub struct Buffer {
    state: Mutex<State>,
}

impl Buffer {
    fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // loses rows (every update is an append or a removal), so keep serving.
        self.state.lock()
    }

    /// Copies each member's run of rows of a stored, member-sorted batch into that
    /// member's builders, under one lock. `bytes` is the batch's memory, shared out by rows.
    pub fn insert_runs(
        &self,
        env: DataEnvironment,
        schema: &Arc<DatasetSchema>,
        batch: &RecordBatch,
        runs: &[(MemberId, usize, usize)],
        segment: u64,
        bytes: usize,
    ) {
        let rows = batch.num_rows().max(1);
        let mut state = self.state();
        let state = &mut *state;
        let table = state.tables.entry((env, schema.dataset.name.clone())).or_default();
        let mut added_total = 0;
        for &(member, start, len) in runs {
            let p = table.partitions.entry(member).or_insert_with(|| Partition {
                schema: schema.clone(),
                columns: schema.stored.fields().iter().map(|f| ColumnBuilder::new(f.data_type())).collect(),
                rows: 0,
                bytes: 0,
                segments: BTreeMap::new(),
                frozen: Vec::new(),
                oldest: Instant::now(),
                flushing: false,
            });
            let share = bytes * len / rows;
            let added = if p.is_empty() {
                p.oldest = Instant::now();
                share + PARTITION_OVERHEAD
            } else {
                share
            };
            for (c, a) in p.columns.iter_mut().zip(batch.columns()) {
                c.extend(a, start, len);
            }
            p.rows += len;
            p.bytes += added;
            *p.segments.entry(segment).or_default() += len;
            added_total += added;
        }
        *state.segments.entry(segment).or_default() += batch.num_rows();
        state.bytes += added_total;
    }

    /// Bytes of buffered rows.
    pub fn bytes(&self) -> usize {
        self.state().bytes
    }

    /// Recorded files in the index, over every partition.
    pub fn file_count(&self) -> usize {
        self.state().tables.values().flat_map(|t| t.files.values()).map(|f| f.len()).sum()
    }

    /// Partitions due for a flush: older than `max_age` or larger than `max_bytes`, and
    /// then, while the buffer is above `soft_bytes`, the largest ones first.
    pub fn due(&self, max_age: std::time::Duration, max_bytes: usize, soft_bytes: usize) -> Vec<PartitionKey> {
        let state = self.state();
        let now = Instant::now();
        let mut idle: Vec<(PartitionKey, usize)> = Vec::new();
        let mut due = Vec::new();
        for ((env, dataset), table) in &state.tables {
            for (member, p) in &table.partitions {
                if p.flushing {
                    continue;
                }
                let key = || PartitionKey { env: *env, dataset: dataset.clone(), member: *member };
                let bytes = p.bytes();
                if now.duration_since(p.oldest) >= max_age || bytes >= max_bytes {
                    due.push(key());
                } else if state.bytes > soft_bytes {
                    idle.push((key(), bytes));
                }
            }
        }
        let mut over = state.bytes.saturating_sub(soft_bytes);
        if over > 0 {
            idle.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
            for (k, bytes) in idle {
                if over == 0 {
                    break;
                }
                over = over.saturating_sub(bytes);
                due.push(k);
            }
        }
        due
    }

    /// Hands the partition's rows to a flush; they stay readable until [`Buffer::end_flush`].
    pub fn begin_flush(&self, key: &PartitionKey) -> Option<FlushBatch> {
        let mut state = self.state();
        let p = state.partition_mut(key)?;
        if p.flushing || p.is_empty() {
            return None;
        }
        p.freeze();
        p.flushing = true;
        Some(FlushBatch {
            key: key.clone(),
            schema: p.schema.clone(),
            batches: p.frozen.iter().map(|f| f.batch.clone()).collect(),
            frozen: p.frozen.len(),
        })
    }

    /// Ends a flush: on success (`file` is the recorded file) the flushed rows leave the
    /// buffer and the file joins the index, in one step for readers; on failure they stay
    /// and a later flush retries.
    pub fn end_flush(&self, flush: &FlushBatch, file: Option<&ParquetFile>) {
        let mut state = self.state();
        let state = &mut *state;
        let Some(table) = state.tables.get_mut(&(flush.key.env, flush.key.dataset.clone())) else { return };
        let Some(p) = table.partitions.get_mut(&flush.key.member) else { return };
        p.flushing = false;
        let Some(file) = file else { return };
        add_file(table.files.entry(flush.key.member).or_default(), file);
        state.own.remove(&file.path);
        let mut freed = 0;
        for f in p.frozen.drain(..flush.frozen) {
            freed += f.bytes;
            for (segment, rows) in f.segments {
                if let std::collections::btree_map::Entry::Occupied(mut e) = state.segments.entry(segment) {
                    *e.get_mut() = e.get().saturating_sub(rows);
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
            }
        }
        if p.is_empty() {
            table.partitions.remove(&flush.key.member);
        } else {
            p.oldest = Instant::now();
        }
        state.bytes = state.bytes.saturating_sub(freed);
    }

    /// The oldest WAL segment holding buffered rows: every older segment may be deleted.
    pub fn min_segment(&self) -> Option<u64> {
        self.state().segments.keys().next().copied()
    }

    /// Every partition with buffered rows.
    pub fn keys(&self) -> Vec<PartitionKey> {
        let state = self.state();
        let mut out = Vec::new();
        for ((env, dataset), table) in &state.tables {
            out.extend(table.partitions.keys().map(|m| PartitionKey {
                env: *env,
                dataset: dataset.clone(),
                member: *m,
            }));
        }
        out
    }

    /// Adds recorded files to the index (at start-up: the manifest).
    pub fn load_files(&self, files: impl IntoIterator<Item = ParquetFile>) {
        self.apply_manifest(files, &[]);
    }

    /// Follows the manifest's change feed (files other nodes flushed or compacted): adds the
    /// files not indexed yet, then drops the replaced ones, in one step for readers. This
    /// node's own changes come back through the feed too, and are already applied.
    pub fn apply_manifest(&self, added: impl IntoIterator<Item = ParquetFile>, removed: &[String]) {
        let mut state = self.state();
        for f in added {
            if state.own.contains(&f.path) {
                continue;
            }
            let table = state.tables.entry((f.environment, f.dataset.clone())).or_default();
            add_file(table.files.entry(f.member).or_default(), &f);
        }
        for path in removed {
            if state.own.contains(path) {
                continue;
            }
            let Some(key) = crate::partition::partition_of(path) else { continue };
            if let Some(files) =
                state.tables.get_mut(&(key.env, key.dataset)).and_then(|t| t.files.get_mut(&key.member))
                && files.iter().any(|f| &f.path == path)
            {
                Arc::make_mut(files).retain(|f| &f.path != path);
            }
        }
    }

    /// Replaces the whole file index with `files` (the manifest, reloaded by a node that fell
    /// behind the change feed). Only for the flusher task, between its own commits.
    pub fn replace_files(&self, files: impl IntoIterator<Item = ParquetFile>) {
        {
            let mut state = self.state();
            for table in state.tables.values_mut() {
                table.files.clear();
            }
        }
        self.apply_manifest(files, &[]);
    }

    /// Marks paths this node is about to commit (see `State::own`); [`Buffer::end_flush`],
    /// [`Buffer::swap_files`] or [`Buffer::release`] ends the mark.
    pub fn claim(&self, paths: impl IntoIterator<Item = String>) {
        self.state().own.extend(paths);
    }

    /// Ends the marks of paths whose commit failed.
    pub fn release<'a>(&self, paths: impl IntoIterator<Item = &'a String>) {
        let mut state = self.state();
        for p in paths {
            state.own.remove(p);
        }
    }

    /// Swaps files in the index once the manifest has swapped them (compaction). Flushes and
    /// compaction take turns on the flusher task, so a file is in the index before
    /// compaction can replace it.
    pub fn swap_files(&self, added: &[ParquetFile], replaced: &[String]) {
        let mut state = self.state();
        for f in added {
            let table = state.tables.entry((f.environment, f.dataset.clone())).or_default();
            let files = table.files.entry(f.member).or_default();
            if files.iter().any(|old| replaced.contains(&old.path)) {
                Arc::make_mut(files).retain(|old| !replaced.contains(&old.path));
            }
            add_file(files, f);
            state.own.remove(&f.path);
        }
        for path in replaced {
            state.own.remove(path);
        }
    }

    /// What a read of these members' partitions sees, in one consistent step: members with
    /// neither rows nor files are left out.
    pub fn snapshot(
        &self,
        env: DataEnvironment,
        dataset: &DatasetName,
        members: impl IntoIterator<Item = MemberId>,
    ) -> Vec<(MemberId, Snapshot)> {
        let mut state = self.state();
        let Some(table) = state.tables.get_mut(&(env, dataset.clone())) else { return Vec::new() };
        let mut out = Vec::new();
        for member in members {
            let files = table.files.get(&member).cloned().unwrap_or_default();
            let rows = table.partitions.get_mut(&member).map(Partition::rows).unwrap_or_default();
            if !files.is_empty() || !rows.is_empty() {
                out.push((member, Snapshot { rows, files }));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::Int64Type;

    #[test]
    fn the_oldest_needed_segment_follows_flushes() {
        let d = catalog::builtin_datasets().into_iter().find(|d| d.name.as_str() == "ds_energy_consumption").unwrap();
        let schema = Arc::new(DatasetSchema::new(Arc::new(d)).unwrap());
        let batch = |n: i64| {
            let cols = schema
                .stored
                .fields()
                .iter()
                .map(|f| datafusion::arrow::array::new_null_array(f.data_type(), 1))
                .collect::<Vec<_>>();
            let mut cols = cols;
            cols[0] = Arc::new(Int64Array::from(vec![n]));
            cols[1] = Arc::new(Int64Array::from(vec![0]));
            cols[2] = Arc::new(Int64Array::from(vec![n]));
            cols[3] = Arc::new(Int64Array::from(vec![n]));
            RecordBatch::try_new(schema.stored.clone(), cols).unwrap()
        };
        let key = |m: i64| PartitionKey {
            env: DataEnvironment::Production,
            dataset: schema.dataset.name.clone(),
            member: MemberId::new(m).unwrap(),
        };
        let buffer = Buffer::default();
        let insert = |m: i64, n: i64, segment: u64| {
            buffer.insert_runs(
                DataEnvironment::Production,
                &schema,
                &batch(n),
                &[(MemberId::new(m).unwrap(), 0, 1)],
                segment,
                10,
            )
        };
        insert(1, 1, 3);
        insert(2, 2, 4);
        insert(1, 3, 5);
        assert_eq!((buffer.min_segment(), buffer.bytes()), (Some(3), 30 + 2 * PARTITION_OVERHEAD));
        let flush = buffer.begin_flush(&key(1)).unwrap();
        assert!(buffer.begin_flush(&key(1)).is_none(), "one flush at a time");
        buffer.end_flush(&flush, None);
        assert_eq!(buffer.min_segment(), Some(3), "a failed flush keeps the rows and their segment");
        let flush = buffer.begin_flush(&key(1)).unwrap();
        assert_eq!(flush.batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);
        insert(1, 4, 6);
        let rows = |m: i64| -> Snapshot {
            let mut s = buffer.snapshot(DataEnvironment::Production, &schema.dataset.name, [MemberId::new(m).unwrap()]);
            s.pop().map(|(_, s)| s).unwrap_or_default()
        };
        assert_eq!(rows(1).rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 3, "readers see flushing rows too");
        let file = |path: &str, m: i64| ParquetFile {
            environment: DataEnvironment::Production,
            dataset: schema.dataset.name.clone(),
            member: MemberId::new(m).unwrap(),
            path: format!("production/ds_energy_consumption/{m}/{path}"),
            rows: 2,
            size_bytes: 1,
            min_event_time: 0,
            max_event_time: 0,
            min_id: 1,
            max_id: 3,
            max_version: 3,
        };
        buffer.end_flush(&flush, Some(&file("a", 1)));
        assert_eq!(buffer.min_segment(), Some(4), "rows that arrived during the flush stay");
        let names =
            |s: &Snapshot| s.files.iter().map(|f| f.path.rsplit('/').next().unwrap().to_owned()).collect::<Vec<_>>();
        let path = |m: i64, name: &str| format!("production/ds_energy_consumption/{m}/{name}");
        let snap = rows(1);
        assert_eq!(names(&snap), ["a"], "the flushed rows are in the file now");
        let left = snap.rows;
        assert_eq!(left.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
        assert_eq!(left[0].column(2).as_primitive::<Int64Type>().value(0), 4);
        let flush = buffer.begin_flush(&key(2)).unwrap();
        buffer.end_flush(&flush, Some(&file("b", 2)));
        assert_eq!(buffer.min_segment(), Some(6));
        buffer.swap_files(&[file("c", 1)], &[path(1, "a")]);
        assert_eq!(names(&rows(1)), ["c"], "compaction swaps files");
        // The change feed: repeats are ignored, other nodes' replacements applied, and paths
        // this node is committing left to its own flush or compaction.
        buffer.apply_manifest([file("c", 1), file("e", 1)], &[path(2, "b")]);
        assert_eq!(names(&rows(1)), ["c", "e"]);
        assert!(rows(2).files.is_empty());
        buffer.claim([path(1, "f"), path(1, "e")]);
        buffer.apply_manifest([file("f", 1)], &[path(1, "e")]);
        assert_eq!(names(&rows(1)), ["c", "e"], "paths being committed here are left to this node");
        buffer.swap_files(&[file("f", 1)], &[path(1, "e")]);
        assert_eq!(names(&rows(1)), ["c", "f"]);
        buffer.replace_files([file("g", 2)]);
        assert!(rows(1).files.is_empty());
        assert_eq!(names(&rows(2)), ["g"]);
    }
}
