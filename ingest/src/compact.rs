//! Compaction: hot files settled into per-member files once the hot window is over, a
//! dataset's small hot files merged meanwhile (fewer files for every read to open), and a
//! member's small files of a dataset merged into few, well-sized ones: by event day for
//! recent data, by month once the data is cold, keeping only the newest version of each
//! row. New files are put first, then one catalog transaction swaps them for the old ones
//! and the read index follows (readers see either, never both), then the old objects are
//! deleted after a grace period for reads already planned.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use catalog::{Catalog, ErrorKind, ParquetFile};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::parquet::arrow::ParquetRecordBatchStreamBuilder;
use datafusion::parquet::arrow::async_reader::ParquetRecordBatchStream;
use futures::StreamExt;
use object_store::ObjectStore;
use object_store::path::Path;

use crate::IngestError;
use crate::buffer::Buffer;
use crate::partition::PartitionKey;
use crate::persist;
use crate::schema::{DatasetSchema, MEMBER_UID};

/// How long the manifest keeps tombstones of replaced files, so nodes following its change
/// feed see them (far longer than a node may go without following it).
pub const TOMBSTONES_KEPT_MS: i64 = 24 * 3600 * 1000;

/// What compaction aims for.
#[derive(Debug, Clone)]
pub struct CompactionConfig {
    /// Files below this size are "small".
    pub small_bytes: i64,
    /// A partition is compacted once it has this many small files.
    pub min_files: i64,
    /// Data whose newest event is older than this is merged by month instead of by day.
    pub cold_after_secs: i64,
    /// Replaced objects are deleted this long after the swap.
    pub delete_grace: Duration,
    /// Objects the manifest does not name are deleted once they are this old and were not
    /// replaced within it ([`crate::collect`]): longer than any put waits for its commit.
    pub orphan_grace: Duration,
    /// Rows stay in hot files (several members' rows) this long after they arrived, then
    /// are settled into per-member files.
    pub hot_window: Duration,
}

/// Hot files below this size are merged, once a dataset has `min_files` of them.
const HOT_SMALL_BYTES: i64 = 64 << 20;

/// At most this many bytes of hot files are merged in one step: the merged file is encoded
/// in memory before its put.
const HOT_STEP_BYTES: i64 = 128 << 20;

/// A merge of hot files sorts and encodes about this many rows at a time (whole members).
const MERGE_GROUP_ROWS: usize = 1 << 16;

/// At most this many hot files are settled in one step. Settling streams them (a row group
/// of each in memory at a time, about 30 MB), so a step is bounded by files, not bytes.
const SETTLE_STEP_FILES: usize = 16;

/// Rows decoded at a time from each hot file being settled.
const SETTLE_BATCH_ROWS: usize = 8192;

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            small_bytes: 32 << 20,
            min_files: 4,
            cold_after_secs: 7 * 86_400,
            delete_grace: Duration::from_secs(60),
            orphan_grace: Duration::from_secs(15 * 60),
            hot_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// The columns of a dataset (the ingester's cached [`DatasetSchema`]s).
pub type SchemaOf<'a> = dyn Fn(&Arc<catalog::Dataset>) -> Result<Arc<DatasetSchema>, IngestError> + Sync + 'a;

/// The compactor; deletions wait in `doomed` until their grace period is over.
#[derive(Debug)]
pub struct Compactor {
    config: CompactionConfig,
    doomed: Mutex<HashMap<String, Instant>>,
    /// Partitions whose last pass found nothing to merge (their small files are in
    /// different buckets), with their file count then: skipped until it changes, so they
    /// cannot starve the partitions behind them.
    settled: Mutex<std::collections::HashMap<PartitionKey, i64>>,
}

/// Which merged file a file's rows go to: its event day, or month when cold.
fn bucket(f: &ParquetFile, now_secs: i64, cold_after: i64) -> (bool, i64) {
    let day = f.min_event_time.div_euclid(86_400);
    if f.max_event_time < now_secs - cold_after { (true, day / 30) } else { (false, day) }
}

impl Compactor {
    pub fn new(config: CompactionConfig) -> Self {
        Compactor { config, doomed: Mutex::new(HashMap::new()), settled: Mutex::new(Default::default()) }
    }

    /// One pass: settles hot files older than the hot window and merges small hot files,
    /// merges the small files of up to 32 partitions, then deletes replaced objects whose
    /// grace period is over. Returns the number of files replaced.
    pub async fn run(
        &self,
        catalog: &Catalog,
        store: &Arc<dyn ObjectStore>,
        buffer: &Buffer,
        schema_of: &SchemaOf<'_>,
        now_secs: i64,
    ) -> Result<usize, IngestError> {
        let cutoff = (now_secs * 1000).saturating_sub(self.hot_window_ms());
        let mut replaced = self.rewrite_hot(catalog, store, buffer, schema_of, cutoff).await?;
        let candidates = catalog.compaction_candidates(self.config.small_bytes, self.config.min_files, 100_000).await?;
        let work: Vec<(PartitionKey, i64)> = {
            let settled = self.settled.lock();
            candidates
                .into_iter()
                .map(|((env, dataset, member), files)| (PartitionKey { env, dataset, member }, files))
                .filter(|(key, files)| settled.get(key) != Some(files))
                .collect()
        };
        metrics::gauge!("trove_ingest_compaction_backlog_partitions").set(work.len() as f64);
        for (key, count) in work.into_iter().take(32) {
            let schema = schema_of(&Arc::new(catalog.dataset(&key.dataset).await?))?;
            let (env, member) = (key.env, key.member);
            let files = catalog.parquet_files(env, &key.dataset, member).await?;
            let mut buckets: BTreeMap<(bool, i64), Vec<ParquetFile>> = BTreeMap::new();
            for f in files.into_iter().filter(|f| f.size_bytes < self.config.small_bytes) {
                buckets.entry(bucket(&f, now_secs, self.config.cold_after_secs)).or_default().push(f);
            }
            let groups: Vec<Vec<ParquetFile>> = buckets.into_values().filter(|g| g.len() >= 2).collect();
            if groups.is_empty() {
                self.settled.lock().insert(key.clone(), count);
            }
            for group in groups {
                match self.merge(catalog, store, buffer, &key, &schema, &group).await {
                    Ok(()) => replaced += group.len(),
                    Err(IngestError::Catalog(e)) if e.kind() == ErrorKind::Conflict => {
                        tracing::info!("another compactor merged these files first");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.delete_doomed(store, false).await;
        catalog.purge_manifest_tombstones(now_secs * 1000 - TOMBSTONES_KEPT_MS).await?;
        metrics::counter!("trove_ingest_compacted_files_total").increment(replaced as u64);
        Ok(replaced)
    }

    async fn merge(
        &self,
        catalog: &Catalog,
        store: &Arc<dyn ObjectStore>,
        buffer: &Buffer,
        key: &PartitionKey,
        schema: &Arc<DatasetSchema>,
        group: &[ParquetFile],
    ) -> Result<(), IngestError> {
        let mut batches: Vec<RecordBatch> = Vec::new();
        for f in group {
            batches.extend(persist::read_file_in_background(store, &f.path).await?);
        }
        let old: Vec<String> = group.iter().map(|f| f.path.clone()).collect();
        let file = persist::write_file(store, key, schema, batches, persist::Codec::Compacted).await?;
        buffer.claim(old.iter().cloned().chain([file.path.clone()]));
        if let Err(e) = persist::commit(store, catalog, std::slice::from_ref(&file), &old, None).await {
            buffer.release(old.iter().chain([&file.path]));
            return Err(e);
        }
        buffer.swap_files(&[file], &old);
        let at = Instant::now();
        self.doomed.lock().extend(old.into_iter().map(|p| (p, at)));
        Ok(())
    }

    /// The hot window in milliseconds (at least 1).
    fn hot_window_ms(&self) -> i64 {
        i64::try_from(self.config.hot_window.as_millis()).unwrap_or(i64::MAX).max(1)
    }

    /// Hot files: those whose window of arrivals ended before `cutoff` (epoch ms) settled
    /// into per-member files (at most [`SETTLE_STEP_FILES`] per dataset and pass), then each
    /// dataset's small younger ones merged into one (at most [`HOT_STEP_BYTES`]). Returns the
    /// number of files replaced.
    pub(crate) async fn rewrite_hot(
        &self,
        catalog: &Catalog,
        store: &Arc<dyn ObjectStore>,
        buffer: &Buffer,
        schema_of: &SchemaOf<'_>,
        cutoff: i64,
    ) -> Result<usize, IngestError> {
        let mut by_table: BTreeMap<(catalog::DataEnvironment, catalog::DatasetName), Vec<(ParquetFile, i64)>> =
            BTreeMap::new();
        for (f, arrived) in catalog.hot_files_before(i64::MAX).await? {
            if !buffer.indexes_hot(&f) {
                continue;
            }
            by_table.entry((f.environment, f.dataset.clone())).or_default().push((f, arrived));
        }
        // A window's arrivals (windows aligned to the epoch: with the default 24 h, UTC days)
        // settle together, once the last of them is a window old, so a member gets one file
        // per window rather than one per hot file; rows stay hot one to two windows.
        let window = self.hot_window_ms();
        let settles = |arrived: i64| arrived.div_euclid(window).saturating_add(1).saturating_mul(window) <= cutoff;
        let mut replaced = 0;
        for ((_, dataset), files) in by_table {
            let schema = schema_of(&Arc::new(catalog.dataset(&dataset).await?))?;
            let (due, young): (Vec<_>, Vec<_>) = files.into_iter().partition(|(_, arrived)| settles(*arrived));
            let small: Vec<_> = young.into_iter().filter(|(f, _)| f.size_bytes < HOT_SMALL_BYTES).collect();
            for (group, settle) in [(due, true), (small, false)] {
                if group.is_empty() || (!settle && (group.len() as i64) < self.config.min_files) {
                    continue;
                }
                let step: Vec<(ParquetFile, i64)> = if settle {
                    group.into_iter().take(SETTLE_STEP_FILES).collect()
                } else {
                    let mut bytes = 0;
                    group
                        .into_iter()
                        .take_while(|(f, _)| {
                            bytes += f.size_bytes;
                            bytes - f.size_bytes < HOT_STEP_BYTES
                        })
                        .collect()
                };
                let n = step.len();
                match self.rewrite_hot_step(catalog, store, buffer, &schema, &step, settle).await {
                    Ok(()) => replaced += n,
                    Err(IngestError::Catalog(e)) if e.kind() == ErrorKind::Conflict => {
                        tracing::info!("another compactor rewrote these hot files first");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(replaced)
    }

    /// Rewrites hot `files` (with when each arrived): as one file per member (`settle`) or
    /// as one hot file, swapped for them in one catalog transaction.
    async fn rewrite_hot_step(
        &self,
        catalog: &Catalog,
        store: &Arc<dyn ObjectStore>,
        buffer: &Buffer,
        schema: &Arc<DatasetSchema>,
        files: &[(ParquetFile, i64)],
        settle: bool,
    ) -> Result<(), IngestError> {
        let Some((first, arrived)) = files.first() else { return Ok(()) };
        let (env, arrived) = (first.environment, files.iter().map(|(_, a)| *a).min().unwrap_or(*arrived));
        let old: Vec<String> = files.iter().map(|(f, _)| f.path.clone()).collect();
        let new: Vec<ParquetFile> = if settle {
            settle_by_member(store, schema, env, files).await?
        } else {
            vec![merge_hot(store, schema, env, files, arrived).await?]
        };
        buffer.claim(old.iter().cloned().chain(new.iter().map(|f| f.path.clone())));
        let arrived = (!settle).then_some(arrived);
        if let Err(e) = persist::commit(store, catalog, &new, &old, arrived).await {
            buffer.release(old.iter().chain(new.iter().map(|f| &f.path)));
            return Err(e);
        }
        buffer.swap_files(&new, &old);
        let at = Instant::now();
        self.doomed.lock().extend(old.into_iter().map(|p| (p, at)));
        let what = if settle { "trove_ingest_settled_files_total" } else { "trove_ingest_merged_hot_files_total" };
        metrics::counter!(what).increment(files.len() as u64);
        Ok(())
    }

    /// Whether `path` was replaced and waits for its grace period to end.
    pub(crate) fn is_doomed(&self, path: &str) -> bool {
        self.doomed.lock().contains_key(path)
    }

    /// The settings it runs with.
    pub(crate) fn config(&self) -> &CompactionConfig {
        &self.config
    }

    /// Deletes replaced objects whose grace period is over, or all of them (at shutdown,
    /// when no read is planned any more).
    pub(crate) async fn delete_doomed(&self, store: &Arc<dyn ObjectStore>, all: bool) {
        let due: Vec<String> = {
            let mut doomed = self.doomed.lock();
            let grace = if all { Duration::ZERO } else { self.config.delete_grace };
            let due: Vec<String> =
                doomed.iter().filter(|(_, at)| at.elapsed() >= grace).map(|(p, _)| p.clone()).collect();
            for p in &due {
                doomed.remove(p);
            }
            due
        };
        // In bulk: a compaction pass over many members replaces hundreds of thousands of
        // files, one request per thousand on S3, concurrent deletes elsewhere.
        let paths = futures::stream::iter(due.into_iter().map(|p| Ok(Path::from(p)))).boxed();
        let mut results = store.delete_stream(paths);
        while let Some(result) = results.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                // An orphan costs space, not correctness: the manifest no longer names it, and
                // the collector deletes it later.
                Err(e) => tracing::warn!(error = %e, "could not delete a compacted file"),
            }
        }
    }
}

/// Writes the rows of hot `files` as one file per member. Each hot file is sorted by member,
/// so the files are merged as streams: the smallest member at the front of any of them takes
/// its run from each, is written, and the next follows. Memory holds a row group of each file
/// and the member files being written, however large the files are.
async fn settle_by_member(
    store: &Arc<dyn ObjectStore>,
    schema: &Arc<DatasetSchema>,
    env: catalog::DataEnvironment,
    files: &[(ParquetFile, i64)],
) -> Result<Vec<ParquetFile>, IngestError> {
    let mut cursors = HotCursor::open_all(store, files).await?;
    let mut writes = futures::stream::FuturesUnordered::new();
    let mut written = Vec::new();
    while let Some((member, parts)) = HotCursor::next_member(&mut cursors).await? {
        let member = catalog::MemberId::new(member).map_err(|e| IngestError::Internal(e.to_string()))?;
        let key = PartitionKey { env, dataset: schema.dataset.name.clone(), member };
        writes.push(async move { persist::write_file(store, &key, schema, parts, persist::Codec::Settled).await });
        // A few puts in flight; the merge waits for the oldest beyond that.
        if writes.len() >= 8
            && let Some(file) = writes.next().await
        {
            written.push(file?);
        }
    }
    while let Some(file) = writes.next().await {
        written.push(file?);
    }
    Ok(written)
}

/// Merges hot `files` into one hot file (named for `arrived`, when their oldest rows
/// arrived), as streams like [`settle_by_member`], but a range of members at a time: each
/// group takes every row below a member bound from every file (about
/// [`MERGE_GROUP_ROWS`] rows, whole members), one slice per file batch rather than one
/// per member, so a million members with a few rows each cost what a few members do. The
/// files may hold versions of one row; the hot file keeps the newest.
async fn merge_hot(
    store: &Arc<dyn ObjectStore>,
    schema: &Arc<DatasetSchema>,
    env: catalog::DataEnvironment,
    files: &[(ParquetFile, i64)],
    arrived: i64,
) -> Result<ParquetFile, IngestError> {
    let mut cursors = HotCursor::open_all(store, files).await?;
    let mut file = persist::HotFile::new(schema, env)?;
    while let Some(group) = HotCursor::next_group(&mut cursors, MERGE_GROUP_ROWS).await? {
        file.append(group).await?;
    }
    file.finish(store, arrived).await
}

/// A hot file read as a stream of batches, and where its next row is.
struct HotCursor {
    stream: ParquetRecordBatchStream<persist::StoreReader>,
    batch: RecordBatch,
    at: usize,
}

impl HotCursor {
    /// `None` if the file holds no row.
    async fn open(store: &Arc<dyn ObjectStore>, file: &ParquetFile) -> Result<Option<HotCursor>, IngestError> {
        let reader = persist::StoreReader::new(store, file);
        let stream = ParquetRecordBatchStreamBuilder::new(reader).await?.with_batch_size(SETTLE_BATCH_ROWS).build()?;
        let mut cursor = HotCursor { batch: RecordBatch::new_empty(stream.schema().clone()), stream, at: 0 };
        Ok(cursor.fill().await?.then_some(cursor))
    }

    /// Cursors of the `files` that hold rows.
    async fn open_all(store: &Arc<dyn ObjectStore>, files: &[(ParquetFile, i64)]) -> Result<Vec<Self>, IngestError> {
        let mut cursors = Vec::new();
        for (f, _) in files {
            if let Some(c) = HotCursor::open(store, f).await? {
                cursors.push(c);
            }
        }
        Ok(cursors)
    }

    /// The smallest member at the front of any cursor and its rows from each, taken; cursors
    /// at the end of their file are dropped. `None` once every file is read.
    async fn next_member(cursors: &mut Vec<Self>) -> Result<Option<(i64, Vec<RecordBatch>)>, IngestError> {
        let Some(member) = cursors.iter().map(HotCursor::member).min() else { return Ok(None) };
        Ok(Some((member, Self::take_all_below(cursors, member.saturating_add(1)).await?)))
    }

    /// Every row of the members from the smallest at the front of any cursor up to a bound
    /// chosen so that no cursor gives much more than its share of `rows` from the batch it
    /// holds (at least one whole member); cursors at the end of their file are dropped.
    /// `None` once every file is read.
    async fn next_group(cursors: &mut Vec<Self>, rows: usize) -> Result<Option<Vec<RecordBatch>>, IngestError> {
        let Some(first) = cursors.iter().map(HotCursor::member).min() else { return Ok(None) };
        let share = (rows / cursors.len()).max(1);
        let bound = cursors
            .iter()
            .map(|c| {
                let members = c.members();
                members[(c.at + share).min(members.len() - 1)]
            })
            .min()
            .unwrap_or(first)
            .max(first.saturating_add(1));
        Ok(Some(Self::take_all_below(cursors, bound).await?))
    }

    /// The rows below `bound` at the front of every cursor; cursors at the end of their
    /// file are dropped.
    async fn take_all_below(cursors: &mut Vec<Self>, bound: i64) -> Result<Vec<RecordBatch>, IngestError> {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < cursors.len() {
            if cursors[i].take_below(bound, &mut parts).await? {
                i += 1;
            } else {
                cursors.swap_remove(i);
            }
        }
        Ok(parts)
    }

    /// Reads the next batch with rows; `false` at the end of the file.
    async fn fill(&mut self) -> Result<bool, IngestError> {
        while let Some(batch) = self.stream.next().await {
            let batch = batch?;
            if batch.num_rows() > 0 {
                (self.batch, self.at) = (batch, 0);
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn members(&self) -> &[i64] {
        self.batch.column_by_name(MEMBER_UID).map_or(&[], |c| c.as_primitive::<Int64Type>().values())
    }

    /// The member of the next row.
    fn member(&self) -> i64 {
        self.members()[self.at]
    }

    /// Takes the rows at the front whose member is below `bound` into `parts`; `false` once
    /// the file has no row left.
    async fn take_below(&mut self, bound: i64, parts: &mut Vec<RecordBatch>) -> Result<bool, IngestError> {
        loop {
            let n = self.members()[self.at..].partition_point(|m| *m < bound);
            if n == 0 {
                return Ok(true);
            }
            parts.push(self.batch.slice(self.at, n));
            self.at += n;
            if self.at < self.batch.num_rows() {
                return Ok(true);
            }
            if !self.fill().await? {
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::tests::{energy, rows, values};
    use crate::schema::{ROW_ID, ROW_VERSION};

    #[tokio::test]
    async fn hot_files_merge_as_streams_into_one_sorted_file_with_the_newest_versions() {
        let schema = energy();
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let env = catalog::DataEnvironment::Production;
        // Three hot files over 12,000 members, more rows than one merge group: the first
        // gives each member rows 1-4, the second rows 5-8 and a new version of row 2 for
        // every seventh member, the third one more row for every third member.
        let members = 12_000;
        let file = |rows_of: &dyn Fn(i64) -> Vec<(i64, i64, i64, i64)>, arrived: i64| {
            let all: Vec<_> = (1..=members).flat_map(rows_of).collect();
            let batch = rows(&schema, &all);
            let (store, schema) = (&store, &schema);
            async move { (persist::write_hot_file(store, env, schema, vec![batch], arrived).await.unwrap(), arrived) }
        };
        let files = [
            file(&|m| (1..=4).map(|i| (m, i, 10, 100 + i)).collect(), 3_000).await,
            file(
                &|m| (5..=8).map(|i| (m, i, 20, 100 + i)).chain((m % 7 == 0).then_some((m, 2, 30, 102))).collect(),
                2_000,
            )
            .await,
            file(&|m| if m % 3 == 0 { vec![(m, 9, 40, 50)] } else { vec![] }, 4_000).await,
        ];
        assert!(files.iter().map(|(f, _)| f.rows as usize).sum::<usize>() > MERGE_GROUP_ROWS);
        let merged = merge_hot(&store, &schema, env, &files, 2_000).await.unwrap();
        let expected = members * 8 + members / 3;
        assert_eq!((merged.rows, merged.min_event_time, merged.max_event_time), (expected, 50, 108));
        assert_eq!((merged.min_id, merged.max_id, merged.max_version, merged.member), (1, 9, 40, None));
        assert!(merged.path.contains("/hot/h00000000002000_"), "named for its oldest arrival: {}", merged.path);
        let all = persist::read_file(&store, &merged.path).await.unwrap();
        let (uids, ids, versions) = (values(&all, MEMBER_UID), values(&all, ROW_ID), values(&all, ROW_VERSION));
        assert_eq!(uids.len() as i64, expected, "every row once");
        let mut want = Vec::new();
        for m in 1..=members {
            // By member, then event time: every third member's row 9 (time 50) comes first.
            if m % 3 == 0 {
                want.push((m, 9, 40));
            }
            for i in 1..=8 {
                want.push((
                    m,
                    i,
                    if i == 2 && m % 7 == 0 {
                        30
                    } else if i <= 4 {
                        10
                    } else {
                        20
                    },
                ));
            }
        }
        let got: Vec<_> = (0..uids.len()).map(|r| (uids[r], ids[r], versions[r])).collect();
        assert_eq!(got, want);
    }
}
