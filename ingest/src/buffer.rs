//! Acknowledged rows not yet in Parquet, per (environment, dataset), under one global byte
//! budget, and the index of the recorded files that hold the rest.
//!
//! Both live under one lock so that a read takes buffered rows and files in one consistent
//! snapshot: a flush moves rows from the first to the second atomically (after the manifest
//! commit), and compaction swaps files the same way, so every acknowledged row is seen
//! exactly once, without listing object storage or asking the catalog on the read path.
//!
//! A dataset's rows are kept as the writes brought them, not split by member: a write of
//! 1,000 readings for 1,000 meters is one chunk (its stored batch, sorted by member, and
//! where each member's rows start), kept without a copy. What a row costs therefore does
//! not depend on how many members there are: nothing is kept per member as rows arrive; a
//! reader finds and counts its members' rows chunk by chunk (a search per member, or per
//! run when it reads more members than a chunk holds), and a flush writes every chunk of a
//! dataset as one hot file.
//! (Copying each member's rows into builders of its own cost a kilobyte per member before
//! its first row, and a hash lookup and a copy per column for every member of every write.)
//! Small writes, a few rows each as the Mydex door sends them, are copied into one set of
//! builders and become a chunk every few thousand rows, so they do not cost an array header
//! each.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Instant;

use catalog::{DataEnvironment, DatasetName, MemberId, MemberMap, ParquetFile};
use datafusion::arrow::array::{AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::error::ArrowError;

use crate::columns::ColumnBuilder;
use crate::schema::{DatasetSchema, MEMBER_UID, ROW_ID, int_column, member_runs};

/// Writes of at least this many rows are kept as they are; smaller ones are gathered.
const CHUNK_MIN_ROWS: usize = 256;

/// Gathered small writes become a chunk at this many rows.
const PENDING_MAX_ROWS: usize = 4096;

/// Where each member's rows are in a member-sorted batch: (member, first row, rows).
type Runs = Vec<(MemberId, u32, u32)>;

/// Rows of one or more writes, sorted by member.
#[derive(Debug)]
struct Chunk {
    batch: RecordBatch,
    /// By member.
    runs: Runs,
    bytes: usize,
    /// Rows per WAL segment.
    segments: BTreeMap<u64, usize>,
}

impl Chunk {
    /// The ids of its rows, if the schema has them.
    fn ids(&self) -> Option<&[i64]> {
        Some(self.batch.column_by_name(ROW_ID)?.as_primitive_opt::<Int64Type>()?.values())
    }
}

/// `batch` sorted by member (stably: each member's rows keep their order, so their ids
/// too), with each member's run.
fn by_member(batch: RecordBatch) -> Result<(RecordBatch, Runs), crate::IngestError> {
    let members = int_column(&batch, MEMBER_UID)?.values();
    let batch = if members.windows(2).all(|w| w[0] <= w[1]) {
        batch
    } else {
        let mut order: Vec<u32> = (0..members.len() as u32).collect();
        order.sort_by_key(|&i| members[i as usize]);
        take_record_batch(&batch, &UInt32Array::from(order))?
    };
    let runs = member_runs(&batch)?;
    Ok((batch, to_runs(&runs)))
}

/// Runs as the buffer keeps them. Stored rows passed validation: every member uid is valid.
fn to_runs(runs: &[(i64, usize, usize)]) -> Runs {
    runs.iter().filter_map(|&(m, start, len)| Some((MemberId::new(m).ok()?, start as u32, len as u32))).collect()
}

/// Calls `each(i, start, len)` for every run of `runs` whose member is `members[i]`; both
/// ascending. Whichever side is behind skips ahead by galloping, so a few members among a
/// chunk of many, or many members over a chunk of few, cost a search each rather than a walk
/// over the other side.
fn matching_runs(runs: &[(MemberId, u32, u32)], members: &[MemberId], mut each: impl FnMut(usize, u32, u32)) {
    let (mut i, mut j) = (0, 0);
    while i < members.len() && j < runs.len() {
        let (member, run) = (members[i], runs[j]);
        if member < run.0 {
            i += gallop(&members[i..], |m| *m < run.0);
        } else if run.0 < member {
            j += gallop(&runs[j..], |r| r.0 < member);
        } else {
            each(i, run.1, run.2);
            i += 1;
            j += 1;
        }
    }
}

/// How many leading elements of `s` are `before` (a prefix of at least one).
fn gallop<T>(s: &[T], before: impl Fn(&T) -> bool) -> usize {
    let mut bound = 1;
    while bound < s.len() && before(&s[bound]) {
        bound *= 2;
    }
    let low = bound / 2;
    low + s[low..bound.min(s.len())].partition_point(before)
}

/// Small writes' rows, copied until there are enough for a chunk.
#[derive(Debug)]
struct Pending {
    columns: Vec<ColumnBuilder>,
    rows: usize,
    bytes: usize,
    segments: BTreeMap<u64, usize>,
}

/// What a reader plans with about one member's buffered rows of a dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Buffered {
    pub rows: usize,
    pub min_id: i64,
    pub max_id: i64,
    /// An id came again (an update) or out of order: only the newest version of each counts.
    pub repeats: bool,
}

impl Buffered {
    /// Counts rows with these ids (in their order): a reader of hot files counts a
    /// member's rows there the same way.
    pub fn add(&mut self, ids: &[i64]) {
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else { return };
        let increasing = ids.windows(2).all(|w| w[0] < w[1]);
        let (lo, hi) = if increasing {
            (first, last)
        } else {
            (ids.iter().copied().min().unwrap_or(first), ids.iter().copied().max().unwrap_or(last))
        };
        if self.rows == 0 {
            (self.min_id, self.max_id, self.repeats) = (lo, hi, !increasing);
        } else {
            self.repeats |= !increasing || first <= self.max_id;
            self.min_id = self.min_id.min(lo);
            self.max_id = self.max_id.max(hi);
        }
        self.rows += ids.len();
    }
}

/// One (environment, dataset): its buffered rows and recorded files.
#[derive(Debug, Default)]
struct Table {
    schema: Option<Arc<DatasetSchema>>,
    chunks: Vec<Arc<Chunk>>,
    pending: Option<Pending>,
    bytes: usize,
    /// When the oldest unflushed row arrived: flushing by age keeps the WAL short.
    oldest: Option<Instant>,
    /// How many of the first chunks a running flush holds.
    flushing: Option<usize>,
    /// Settled files per member. Shared with snapshots (a read of 10,000 members copies
    /// 10,000 pointers, not lists); changed copy-on-write.
    files: MemberMap<Arc<Vec<Arc<ParquetFile>>>>,
    /// Hot files: every member's rows of a flush, sorted by member.
    hot: Arc<Vec<Arc<ParquetFile>>>,
}

impl Table {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.pending.as_ref().is_none_or(|p| p.rows == 0)
    }

    /// The pending rows, sorted by member; `keep` leaves them pending (a reader's copy).
    fn pending_chunk(&mut self, keep: bool) -> Option<Chunk> {
        let schema = self.schema.as_ref()?;
        let p = self.pending.as_mut().filter(|p| p.rows > 0)?;
        let columns = p.columns.iter_mut().map(|c| if keep { c.finish_cloned() } else { c.finish() }).collect();
        // Builders follow the schema and member uids are one of its columns.
        let batch = RecordBatch::try_new(schema.stored.clone(), columns).ok()?;
        let (batch, runs) = by_member(batch).ok()?;
        let segments = if keep { p.segments.clone() } else { std::mem::take(&mut p.segments) };
        let chunk = Chunk { batch, runs, bytes: p.bytes, segments };
        if !keep {
            p.rows = 0;
            p.bytes = 0;
        }
        Some(chunk)
    }

    /// Makes the pending rows a chunk.
    fn freeze(&mut self) {
        if let Some(chunk) = self.pending_chunk(false) {
            self.chunks.push(Arc::new(chunk));
        }
    }
}

/// A dataset's rows handed to a flush: every chunk buffered when it began.
#[derive(Debug)]
pub struct FlushBatch {
    pub env: DataEnvironment,
    pub dataset: DatasetName,
    pub schema: Arc<DatasetSchema>,
    chunks: Vec<Arc<Chunk>>,
    /// Rows buffered when it began stay for a later flush.
    partial: bool,
}

impl FlushBatch {
    /// Whether rows buffered when it began were left for a later flush (its cap).
    pub fn partial(&self) -> bool {
        self.partial
    }

    /// Rows in the flush.
    pub fn rows(&self) -> usize {
        self.chunks.iter().map(|c| c.batch.num_rows()).sum()
    }

    /// The rows, each chunk's batch (sorted by member within the chunk).
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.chunks.iter().map(|c| c.batch.clone()).collect()
    }
}

/// What a read of one member sees: how many rows are buffered, and its recorded files.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub buffered: Buffered,
    pub files: Arc<Vec<Arc<ParquetFile>>>,
}

/// What a read of a dataset sees, in one consistent step: the members with rows or
/// settled files, the dataset's hot files (which may hold any member's rows), and the
/// buffered rows themselves ([`TableSnapshot::rows`]).
#[derive(Debug, Default)]
pub struct TableSnapshot {
    pub members: Vec<(MemberId, Snapshot)>,
    pub hot: Arc<Vec<Arc<ParquetFile>>>,
    chunks: Vec<Arc<Chunk>>,
}

/// `members` ascending, each once (borrowed as they are when they already are).
fn ascending(members: Cow<'_, [MemberId]>) -> Cow<'_, [MemberId]> {
    if members.is_sorted_by(|a, b| a < b) {
        return members;
    }
    let mut members = members.into_owned();
    members.sort_unstable();
    members.dedup();
    Cow::Owned(members)
}

/// What `chunks` (in the order they were made) buffer of each of `members` (ascending).
fn count(chunks: &[Arc<Chunk>], members: &[MemberId]) -> Vec<Buffered> {
    let mut buffered = vec![Buffered::default(); members.len()];
    for chunk in chunks {
        let ids = chunk.ids();
        matching_runs(&chunk.runs, members, |i, start, len| match ids {
            Some(ids) => buffered[i].add(&ids[start as usize..(start + len) as usize]),
            None => buffered[i].rows += len as usize,
        });
    }
    // Small writes gathered into one chunk may be older than large writes kept as chunks
    // before it, so a member's ids can be counted out of order: only an id that came twice
    // (an update) is a repeat. The members in doubt are checked in one more pass.
    let (doubt, at): (Vec<MemberId>, Vec<usize>) =
        members.iter().zip(&buffered).enumerate().filter(|(_, (_, b))| b.repeats).map(|(i, (m, _))| (*m, i)).unzip();
    if !doubt.is_empty() {
        let mut ids: Vec<Vec<i64>> = vec![Vec::new(); doubt.len()];
        for chunk in chunks {
            if let Some(chunk_ids) = chunk.ids() {
                matching_runs(&chunk.runs, &doubt, |j, start, len| {
                    ids[j].extend_from_slice(&chunk_ids[start as usize..(start + len) as usize]);
                });
            }
        }
        for (mut ids, i) in ids.into_iter().zip(at) {
            ids.sort_unstable();
            buffered[i].repeats = ids.windows(2).any(|w| w[0] == w[1]);
        }
    }
    buffered
}

impl TableSnapshot {
    /// The buffered rows of `members`: one batch per chunk that holds any (a slice when
    /// they are one run, the chunk itself when they are all of it).
    pub fn rows(&self, members: &[MemberId]) -> Result<Vec<RecordBatch>, ArrowError> {
        let members = ascending(Cow::Borrowed(members));
        let mut out = Vec::new();
        let mut ranges = Vec::new();
        for c in &self.chunks {
            ranges.clear();
            matching_runs(&c.runs, &members, |_, start, len| ranges.push((start as usize, len as usize)));
            out.extend(take_ranges(&c.batch, &ranges)?);
        }
        Ok(out)
    }
}

/// The rows of `batch` in `ranges` ((first row, rows), in order) as one batch: a slice when
/// they are one range, the batch itself when they are all of it, `None` when none.
pub fn take_ranges(batch: &RecordBatch, ranges: &[(usize, usize)]) -> Result<Option<RecordBatch>, ArrowError> {
    let rows: usize = ranges.iter().map(|r| r.1).sum();
    Ok(match ranges {
        [] => None,
        [(start, len)] => Some(batch.slice(*start, *len)),
        _ if rows == batch.num_rows() => Some(batch.clone()),
        _ => {
            let indices: UInt32Array = ranges.iter().flat_map(|&(s, l)| (s as u32..(s + l) as u32).map(Some)).collect();
            Some(take_record_batch(batch, &indices)?)
        }
    })
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

/// Adds a file to its table's index (a member's files, or the hot files) unless it is
/// there already (the manifest's change feed repeats this node's own changes).
fn add_file(tables: &mut HashMap<(DataEnvironment, DatasetName), Table>, file: &ParquetFile) {
    let table = tables.entry((file.environment, file.dataset.clone())).or_default();
    let files = match file.member {
        Some(member) => table.files.entry(member).or_default(),
        None => &mut table.hot,
    };
    if !files.iter().any(|f| f.path == file.path) {
        Arc::make_mut(files).push(Arc::new(file.clone()));
    }
}

/// Drops a file from the index, wherever its path says it is.
fn remove_file(tables: &mut HashMap<(DataEnvironment, DatasetName), Table>, path: &str) {
    let Some((env, dataset, member)) = crate::partition::owner_of(path) else { return };
    let Some(table) = tables.get_mut(&(env, dataset)) else { return };
    let files = match member {
        Some(member) => match table.files.get_mut(&member) {
            Some(files) => files,
            None => return,
        },
        None => &mut table.hot,
    };
    if files.iter().any(|f| f.path == path) {
        Arc::make_mut(files).retain(|f| f.path != path);
    }
}

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

    /// Buffers a stored, member-sorted batch whose member runs are `runs` (as
    /// [`member_runs`] finds them); `bytes` is its memory. Large batches are kept as they
    /// are, small ones copied into pending rows.
    pub fn insert_runs(
        &self,
        env: DataEnvironment,
        schema: &Arc<DatasetSchema>,
        batch: &RecordBatch,
        runs: &[(i64, usize, usize)],
        segment: u64,
        bytes: usize,
    ) {
        let rows = batch.num_rows();
        if rows == 0 {
            return;
        }
        let mut state = self.state();
        let state = &mut *state;
        let table = state.tables.entry((env, schema.dataset.name.clone())).or_default();
        if table.schema.is_none() {
            table.schema = Some(schema.clone());
        }
        let runs = to_runs(runs);
        let sorted = runs.windows(2).all(|w| w[0].0 < w[1].0);
        let chunk = rows >= CHUNK_MIN_ROWS && sorted;
        // A chunk's runs are a row's worth of bytes when every row is another member's.
        let bytes = if chunk { bytes + std::mem::size_of_val(runs.as_slice()) } else { bytes };
        if chunk {
            let segments = BTreeMap::from([(segment, rows)]);
            table.chunks.push(Arc::new(Chunk { batch: batch.clone(), runs, bytes, segments }));
        } else {
            let p = table.pending.get_or_insert_with(|| Pending {
                columns: schema.stored.fields().iter().map(|f| ColumnBuilder::new(f.data_type())).collect(),
                rows: 0,
                bytes: 0,
                segments: BTreeMap::new(),
            });
            for (c, a) in p.columns.iter_mut().zip(batch.columns()) {
                c.extend(a, 0, rows);
            }
            p.rows += rows;
            p.bytes += bytes;
            *p.segments.entry(segment).or_default() += rows;
            if p.rows >= PENDING_MAX_ROWS {
                table.freeze();
            }
        }
        table.bytes += bytes;
        table.oldest.get_or_insert_with(Instant::now);
        *state.segments.entry(segment).or_default() += rows;
        state.bytes += bytes;
    }

    /// Bytes of buffered rows.
    pub fn bytes(&self) -> usize {
        self.state().bytes
    }

    /// Recorded files in the index, over every partition.
    pub fn file_count(&self) -> usize {
        self.state().tables.values().map(|t| t.hot.len() + t.files.values().map(|f| f.len()).sum::<usize>()).sum()
    }

    /// Datasets due for a flush: their oldest row older than `max_age` or their rows larger
    /// than `max_bytes`, and then, while the buffer is above `soft_bytes`, the largest first.
    pub fn due(
        &self,
        max_age: std::time::Duration,
        max_bytes: usize,
        soft_bytes: usize,
    ) -> Vec<(DataEnvironment, DatasetName)> {
        let state = self.state();
        let now = Instant::now();
        let mut idle = Vec::new();
        let mut due = Vec::new();
        for (key, table) in &state.tables {
            if table.flushing.is_some() || table.is_empty() {
                continue;
            }
            if table.oldest.is_some_and(|o| now.duration_since(o) >= max_age) || table.bytes >= max_bytes {
                due.push(key.clone());
            } else if state.bytes > soft_bytes {
                idle.push((key.clone(), table.bytes));
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

    /// Whether a flush of the dataset is running.
    pub fn is_flushing(&self, env: DataEnvironment, dataset: &DatasetName) -> bool {
        self.state().tables.get(&(env, dataset.clone())).is_some_and(|t| t.flushing.is_some())
    }

    /// Hands a dataset's oldest rows, about `max_bytes` of them (at least one chunk), to a
    /// flush; they stay readable until [`Buffer::end_flush`]. The cap bounds what a flush
    /// copies and encodes at once: a flush that fell behind drains in several files rather
    /// than sorting the whole buffer in one.
    pub fn begin_flush(&self, env: DataEnvironment, dataset: &DatasetName, max_bytes: usize) -> Option<FlushBatch> {
        let mut state = self.state();
        let table = state.tables.get_mut(&(env, dataset.clone()))?;
        if table.flushing.is_some() {
            return None;
        }
        table.freeze();
        if table.chunks.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let n = table
            .chunks
            .iter()
            .take_while(|c| {
                bytes += c.bytes;
                bytes - c.bytes < max_bytes
            })
            .count();
        table.flushing = Some(n);
        let (schema, chunks) = (table.schema.clone()?, table.chunks[..n].to_vec());
        Some(FlushBatch { env, dataset: dataset.clone(), schema, chunks, partial: n < table.chunks.len() })
    }

    /// Ends a flush: once its hot `file` is recorded, the file joins the index and the
    /// flushed rows leave the buffer, in one step for readers; without one (the flush
    /// failed) every row stays for a later flush.
    pub fn end_flush(&self, flush: &FlushBatch, file: Option<&ParquetFile>) {
        let mut state = self.state();
        let state = &mut *state;
        let key = (flush.env, flush.dataset.clone());
        let Some(table) = state.tables.get_mut(&key) else { return };
        table.flushing = None;
        let Some(file) = file else { return };
        // Only flushes remove chunks, one at a time per dataset, and chunks are only ever
        // appended: the flushed ones are still the first.
        let mut freed = 0;
        for c in table.chunks.drain(..flush.chunks.len()) {
            freed += c.bytes;
            for (segment, rows) in &c.segments {
                if let std::collections::btree_map::Entry::Occupied(mut e) = state.segments.entry(*segment) {
                    *e.get_mut() = e.get().saturating_sub(*rows);
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
            }
        }
        table.bytes = table.bytes.saturating_sub(freed);
        state.bytes = state.bytes.saturating_sub(freed);
        table.freeze();
        // What a partial flush left is as old as it was: due again at once.
        if table.is_empty() {
            table.oldest = None;
        } else if !flush.partial {
            table.oldest = Some(Instant::now());
        }
        state.own.remove(&file.path);
        add_file(&mut state.tables, file);
    }

    /// The oldest WAL segment holding buffered rows: every older segment may be deleted.
    pub fn min_segment(&self) -> Option<u64> {
        self.state().segments.keys().next().copied()
    }

    /// Every dataset with buffered rows.
    pub fn keys(&self) -> Vec<(DataEnvironment, DatasetName)> {
        self.state().tables.iter().filter(|(_, t)| !t.is_empty()).map(|(k, _)| k.clone()).collect()
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
        let state = &mut *state;
        for f in added {
            if !state.own.contains(&f.path) {
                add_file(&mut state.tables, &f);
            }
        }
        for path in removed {
            if !state.own.contains(path) {
                remove_file(&mut state.tables, path);
            }
        }
    }

    /// Replaces the whole file index with `files` (the manifest, reloaded by a node that fell
    /// behind the change feed). Files this node is committing stay as they are: compaction
    /// may have swapped them in the manifest already, and [`Buffer::swap_files`] swaps them
    /// here, so their rows are never in neither.
    pub fn replace_files(&self, files: impl IntoIterator<Item = ParquetFile>) {
        {
            let mut state = self.state();
            let state = &mut *state;
            let own = &state.own;
            for table in state.tables.values_mut() {
                table.files.retain(|_, files| {
                    Arc::make_mut(files).retain(|f| own.contains(&f.path));
                    !files.is_empty()
                });
                Arc::make_mut(&mut table.hot).retain(|f| own.contains(&f.path));
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

    /// Whether `file`, a hot file, is in the index. Compaction rewrites only those: a hot file
    /// a flush has recorded but not yet indexed ([`Buffer::end_flush`] follows the commit)
    /// must not be replaced before it is there, or the index would keep it.
    pub fn indexes_hot(&self, file: &ParquetFile) -> bool {
        let state = self.state();
        let table = state.tables.get(&(file.environment, file.dataset.clone()));
        table.is_some_and(|t| t.hot.iter().any(|f| f.path == file.path))
    }

    /// Swaps files in the index once the manifest has swapped them (compaction, settling),
    /// in one step for readers.
    pub fn swap_files(&self, added: &[ParquetFile], replaced: &[String]) {
        let mut state = self.state();
        let state = &mut *state;
        for path in replaced {
            remove_file(&mut state.tables, path);
            state.own.remove(path);
        }
        for f in added {
            add_file(&mut state.tables, f);
            state.own.remove(&f.path);
        }
    }

    /// What a read of these members sees, in one consistent step: members with neither
    /// rows nor files are left out.
    pub fn snapshot(
        &self,
        env: DataEnvironment,
        dataset: &DatasetName,
        members: impl IntoIterator<Item = MemberId>,
    ) -> TableSnapshot {
        let asked = ascending(Cow::Owned(members.into_iter().collect())).into_owned();
        let (files, hot, chunks) = {
            let mut state = self.state();
            let Some(table) = state.tables.get_mut(&(env, dataset.clone())) else { return TableSnapshot::default() };
            let files: Vec<_> = asked.iter().map(|m| table.files.get(m).cloned().unwrap_or_default()).collect();
            let mut chunks = table.chunks.clone();
            // Pending rows are copied for the reader, not made a chunk: a loop of small
            // writes and reads would otherwise leave a chunk of a few rows per read.
            chunks.extend(table.pending_chunk(true).map(Arc::new));
            (files, table.hot.clone(), chunks)
        };
        // Counted outside the lock, from the chunks themselves: counting per member as rows
        // came (and again after every flush) was a tenth of ingest at a million members.
        let buffered = count(&chunks, &asked);
        let members = (asked.into_iter().zip(buffered).zip(files))
            .filter(|((_, buffered), files)| !files.is_empty() || buffered.rows > 0)
            .map(|((member, buffered), files)| (member, Snapshot { buffered, files }))
            .collect();
        TableSnapshot { members, hot, chunks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::Int64Type;

    /// An energy file's manifest row: a member's (`m`) or a hot file, named `name`.
    fn file(name: &str, m: Option<i64>) -> ParquetFile {
        ParquetFile {
            environment: DataEnvironment::Production,
            dataset: "ds_energy_consumption".parse().unwrap(),
            member: m.map(|m| MemberId::new(m).unwrap()),
            path: match m {
                Some(m) => format!("production/ds_energy_consumption/{m}/{name}"),
                None => format!("production/ds_energy_consumption/hot/{name}"),
            },
            rows: 2,
            size_bytes: 1,
            min_event_time: 0,
            max_event_time: 0,
            min_id: 1,
            max_id: 3,
            max_version: 3,
        }
    }

    #[test]
    fn a_flush_takes_chunks_up_to_its_cap_and_what_it_leaves_stays_as_old_as_it_was() {
        let schema = crate::persist::tests::energy();
        let buffer = Buffer::default();
        let (env, name) = (DataEnvironment::Production, &schema.dataset.name);
        // Three writes of 300 rows of one member, each a chunk of its own (100 bytes each, and
        // 16 for its one run).
        for (write, segment) in [(0, 1), (1, 2), (2, 3)] {
            let rows: Vec<_> = (1..=300).map(|i| (1, write * 300 + i, 1, i)).collect();
            let batch = crate::persist::tests::rows(&schema, &rows);
            buffer.insert_runs(env, &schema, &batch, &[(1, 0, 300)], segment, 100);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let flush = buffer.begin_flush(env, name, 150).unwrap();
        assert_eq!(flush.rows(), 600, "chunks until the cap is reached");
        buffer.end_flush(&flush, Some(&file("h1", None)));
        assert_eq!((buffer.min_segment(), buffer.bytes()), (Some(3), 116));
        let due = buffer.due(std::time::Duration::from_millis(40), usize::MAX, usize::MAX);
        assert_eq!(due, [(env, name.clone())], "the rows left are due by their age, not the flush's end");
        let flush = buffer.begin_flush(env, name, 150).unwrap();
        assert_eq!(flush.rows(), 300);
    }

    #[test]
    fn reads_find_and_count_their_members_rows_in_every_chunk() {
        let schema = crate::persist::tests::energy();
        let buffer = Buffer::default();
        let (env, name) = (DataEnvironment::Production, &schema.dataset.name);
        // Writes over members 1-1,000 in steps that differ per write: some chunks hold every
        // member, some a few; writes of 10 rows are gathered as pending rows. The fifth repeats
        // member 2's first id (an update).
        let mut written: Vec<(i64, i64)> = Vec::new();
        let mut id = 0;
        for (write, (step, rows)) in [(1, 1000), (7, 300), (250, 4), (3, 10), (1, 400), (2, 10)].into_iter().enumerate()
        {
            let mut batch_rows = Vec::new();
            for r in 0..rows {
                let member = 1 + (r * step) % 1000;
                id += 1;
                let id = if write == 4 && member == 2 { 2 } else { id };
                batch_rows.push((member, id, id, id));
                written.push((member, id));
            }
            batch_rows.sort_by_key(|r| r.0);
            let batch = crate::persist::tests::rows(&schema, &batch_rows);
            let runs = member_runs(&batch).unwrap();
            buffer.insert_runs(env, &schema, &batch, &runs, 1, 10);
        }
        let ids = |batches: &[RecordBatch]| {
            let mut ids = crate::persist::tests::values(batches, ROW_ID);
            ids.sort_unstable();
            ids
        };
        for asked in [vec![2], vec![1, 500, 999], (1..=1000).step_by(3).collect(), (1..=2000).collect::<Vec<i64>>()] {
            let members: Vec<MemberId> = asked.iter().map(|&m| MemberId::new(m).unwrap()).collect();
            let snapshot = buffer.snapshot(env, name, members.iter().rev().copied());
            for &member in members.iter().step_by(97) {
                let mine: Vec<i64> = written.iter().filter(|(m, _)| *m == member.get()).map(|(_, id)| *id).collect();
                let counted = snapshot.members.iter().find(|(m, _)| *m == member).map(|(_, s)| s.buffered);
                assert_eq!(counted.map_or(0, |b| b.rows), mine.len(), "member {member}");
                if let Some(b) = counted {
                    assert_eq!((b.min_id, b.max_id), (*mine.iter().min().unwrap(), *mine.iter().max().unwrap()));
                    assert_eq!(b.repeats, member.get() == 2, "member {member}");
                }
                let mut mine = mine;
                mine.sort_unstable();
                assert_eq!(ids(&snapshot.rows(&[member, member]).unwrap()), mine, "member {member}");
            }
            let mut all: Vec<i64> = written.iter().filter(|(m, _)| asked.contains(m)).map(|(_, id)| *id).collect();
            all.sort_unstable();
            assert_eq!(ids(&snapshot.rows(&members).unwrap()), all);
            assert!(snapshot.rows(&[MemberId::new(5000).unwrap()]).unwrap().is_empty(), "a member without rows");
        }
    }

    #[test]
    fn a_reloaded_index_keeps_the_files_this_node_is_committing() {
        let file = |name: &str| file(name, None);
        let buffer = Buffer::default();
        buffer.load_files([file("old"), file("other")]);
        assert!(buffer.indexes_hot(&file("old")) && !buffer.indexes_hot(&file("new")));
        // Compaction swapped "old" for "new" in the manifest but not yet in the index when
        // the manifest is reloaded: "old" stays until the swap, "new" comes with it.
        buffer.claim(["production/ds_energy_consumption/hot/old".into(), file("new").path]);
        buffer.replace_files([file("new")]);
        assert!(buffer.indexes_hot(&file("old")), "the rows are never in neither");
        assert!(!buffer.indexes_hot(&file("new")) && !buffer.indexes_hot(&file("other")));
        buffer.swap_files(&[file("new")], &[file("old").path]);
        assert!(buffer.indexes_hot(&file("new")) && !buffer.indexes_hot(&file("old")));
    }

    #[test]
    fn the_oldest_needed_segment_follows_flushes() {
        let d = catalog::builtin_datasets().into_iter().find(|d| d.name.as_str() == "ds_energy_consumption").unwrap();
        let schema = Arc::new(DatasetSchema::new(Arc::new(d)).unwrap());
        // Stored columns: member_uid, instance, id, _version, then the dataset's fields.
        let batch = |m: i64, n: i64| {
            let cols = schema
                .stored
                .fields()
                .iter()
                .map(|f| datafusion::arrow::array::new_null_array(f.data_type(), 1))
                .collect::<Vec<_>>();
            let mut cols = cols;
            cols[0] = Arc::new(Int64Array::from(vec![m]));
            cols[1] = Arc::new(Int64Array::from(vec![0]));
            cols[2] = Arc::new(Int64Array::from(vec![n]));
            cols[3] = Arc::new(Int64Array::from(vec![n]));
            RecordBatch::try_new(schema.stored.clone(), cols).unwrap()
        };
        let member = |m: i64| MemberId::new(m).unwrap();
        let buffer = Buffer::default();
        let insert = |m: i64, n: i64, segment: u64| {
            buffer.insert_runs(DataEnvironment::Production, &schema, &batch(m, n), &[(m, 0, 1)], segment, 10)
        };
        let (env, name) = (DataEnvironment::Production, &schema.dataset.name);
        insert(1, 1, 3);
        insert(2, 2, 4);
        insert(1, 3, 5);
        assert_eq!((buffer.min_segment(), buffer.bytes()), (Some(3), 30));
        let flush = buffer.begin_flush(env, name, usize::MAX).unwrap();
        assert!(buffer.begin_flush(env, name, usize::MAX).is_none(), "one flush at a time");
        buffer.end_flush(&flush, None);
        assert_eq!(buffer.min_segment(), Some(3), "a failed flush keeps the rows and their segment");
        let flush = buffer.begin_flush(env, name, usize::MAX).unwrap();
        assert_eq!(flush.rows(), 3);
        insert(1, 4, 6);
        let rows = |m: i64| -> (TableSnapshot, Vec<RecordBatch>) {
            let s = buffer.snapshot(env, name, [member(m)]);
            let rows = s.rows(&[member(m)]).unwrap();
            (s, rows)
        };
        let ids = |b: &RecordBatch| b.column(2).as_primitive::<Int64Type>().values().to_vec();
        let (one, batches) = rows(1);
        assert_eq!(one.members[0].1.buffered, Buffered { rows: 3, min_id: 1, max_id: 4, repeats: false });
        assert_eq!(batches.iter().flat_map(ids).collect::<Vec<_>>(), [1, 3, 4], "readers see flushing rows too");
        buffer.end_flush(&flush, Some(&file("h1", None)));
        assert_eq!(buffer.min_segment(), Some(6), "the flushed rows' segments go; the later write's stays");
        assert_eq!(rows(1).1.iter().flat_map(ids).collect::<Vec<_>>(), [4], "the flushed rows left");
        assert!(rows(2).1.is_empty());
        let hot =
            |s: &TableSnapshot| s.hot.iter().map(|f| f.path.rsplit('/').next().unwrap().to_owned()).collect::<Vec<_>>();
        assert_eq!(hot(&rows(2).0), ["h1"], "every member's read sees the hot file");
        let flush = buffer.begin_flush(env, name, usize::MAX).unwrap();
        buffer.end_flush(&flush, Some(&file("h2", None)));
        assert_eq!(buffer.min_segment(), None, "everything is in files");
        assert_eq!(buffer.bytes(), 0);
        insert(1, 4, 7);
        insert(1, 4, 8);
        assert!(rows(1).0.members[0].1.buffered.repeats, "an id that comes again is an update");
        let names = |s: &TableSnapshot| {
            s.members
                .iter()
                .flat_map(|(_, m)| m.files.iter())
                .map(|f| f.path.rsplit('/').next().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let path = |m: i64, name: &str| format!("production/ds_energy_consumption/{m}/{name}");
        let hot_path = |name: &str| format!("production/ds_energy_consumption/hot/{name}");
        // Settling: hot files swapped for per-member files in one step.
        buffer.swap_files(&[file("a", Some(1)), file("b", Some(2))], &[hot_path("h1"), hot_path("h2")]);
        assert!(hot(&rows(1).0).is_empty());
        assert_eq!(names(&rows(1).0), ["a"]);
        assert_eq!(names(&rows(2).0), ["b"]);
        buffer.swap_files(&[file("c", Some(1))], &[path(1, "a")]);
        assert_eq!(names(&rows(1).0), ["c"], "compaction swaps files");
        // The change feed: repeats are ignored, other nodes' replacements applied, and paths
        // this node is committing left to its own flush or compaction.
        buffer.apply_manifest([file("c", Some(1)), file("e", Some(1)), file("h3", None)], &[path(2, "b")]);
        assert_eq!(names(&rows(1).0), ["c", "e"]);
        assert_eq!(hot(&rows(1).0), ["h3"]);
        assert!(rows(2).0.members.is_empty());
        buffer.claim([path(1, "f"), path(1, "e")]);
        buffer.apply_manifest([file("f", Some(1))], &[path(1, "e"), hot_path("h3")]);
        assert_eq!(names(&rows(1).0), ["c", "e"], "paths being committed here are left to this node");
        assert!(hot(&rows(1).0).is_empty(), "another node settled a hot file");
        buffer.swap_files(&[file("f", Some(1))], &[path(1, "e")]);
        assert_eq!(names(&rows(1).0), ["c", "f"]);
        buffer.replace_files([file("g", Some(2)), file("h4", None)]);
        assert_eq!(names(&rows(1).0), Vec::<String>::new());
        assert_eq!(names(&rows(2).0), ["g"]);
        assert_eq!(hot(&rows(2).0), ["h4"]);
    }
}
