//! The scoped table: a DataFusion [`TableProvider`] over exactly the members and columns of
//! a [`TableScope`]. It reads what ingest holds in one consistent snapshot (buffered rows,
//! hot files and settled files, see [`ingest::buffer`]), picks members and files by the
//! query's filters before DataFusion plans, and reads small files (most per-member files)
//! from a cache of decoded files and large ones with DataFusion's Parquet source (footers
//! cached, row groups and pages pruned). Nothing outside the scope is ever shown: cached and
//! buffered rows are projected to the scope's columns, the Parquet scan's file schema is
//! the scope's columns only, and hot files, which hold every member's rows, are read while
//! the query is planned (pages pruned by member) and then filtered row by row to the
//! scope's members here, whatever the Parquet reader did: a hot file's other members never
//! reach a plan.
//!
//! Rows are normally read as they are stored: a file holds one version of each id, and a
//! member's files and buffered rows cover disjoint id ranges. A member whose sources
//! overlap (a row was updated) or whose agreement grants only some columns is read in
//! memory instead, keeping the newest version of each row and nulling ungranted columns.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use async_trait::async_trait;
use catalog::MemberMap;
use catalog::{DatasetName, MemberId, ParquetFile};
use datafusion::arrow::array::{RecordBatch, new_null_array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, Result as DfResult};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, lit};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use futures::StreamExt;
use ingest::buffer::{Buffer, Buffered, Snapshot};
use object_store::ObjectStore;

use crate::prune::Pruner;
use crate::scope::{Access, TableScope};

/// What one request read: rows per (dataset, member) for the access log, and every file its
/// scans may open, for the final plan check. It also holds, for as long as the request
/// lives, the memory its scans materialised (counted in the query's pool), and the
/// request's deadline, which scans check while the query is planned.
#[derive(Debug, Default)]
pub struct Reads {
    rows: Mutex<BTreeMap<(DatasetName, MemberId), i64>>,
    files: Mutex<HashSet<String>>,
    /// When the request must end, and its limit in seconds (for the message).
    deadline: Option<(tokio::time::Instant, u64)>,
    held: Mutex<Vec<MemoryReservation>>,
}

impl Reads {
    /// The reads of a request that must end within `timeout` of now.
    pub fn new(timeout: std::time::Duration) -> Reads {
        Reads { deadline: Some((tokio::time::Instant::now() + timeout, timeout.as_secs())), ..Reads::default() }
    }

    /// Keeps `memory` counted until the request ends.
    pub(crate) fn hold(&self, memory: MemoryReservation) {
        self.held.lock().push(memory);
    }

    fn check_deadline(&self) -> DfResult<()> {
        match self.deadline {
            Some((d, secs)) if tokio::time::Instant::now() >= d => {
                Err(DataFusionError::External(Box::new(crate::QueryError::Timeout(secs))))
            }
            _ => Ok(()),
        }
    }

    fn record(&self, dataset: &DatasetName, rows: Vec<(MemberId, i64)>) {
        let mut all = self.rows.lock();
        for (member, n) in rows {
            *all.entry((dataset.clone(), member)).or_default() += n;
        }
    }

    /// Rows each member's data contributed to the scans (after pruning by member, event time
    /// and id), by dataset and member.
    pub fn rows(&self) -> BTreeMap<(DatasetName, MemberId), i64> {
        self.rows.lock().clone()
    }

    pub(crate) fn allows_file(&self, path: &str) -> bool {
        self.files.lock().contains(path)
    }
}

/// Where the rows come from: ingest's buffer and file index, the object store, and the
/// cache of decoded files.
#[derive(Debug, Clone)]
pub struct Sources {
    pub buffer: Arc<Buffer>,
    pub store: Arc<dyn ObjectStore>,
    pub cache: Arc<crate::cache::FileCache>,
    /// The URL the store is registered under in the query runtime.
    pub store_url: ObjectStoreUrl,
}

/// See the module docs.
#[derive(Debug)]
pub struct ScopedTable {
    scope: TableScope,
    schema: SchemaRef,
    sources: Sources,
    reads: Arc<Reads>,
}

impl ScopedTable {
    pub fn new(scope: TableScope, sources: Sources, reads: Arc<Reads>) -> ScopedTable {
        let schema = Arc::new(scope.schema.stored.project(&scope.columns).expect("scope columns are stored columns"));
        ScopedTable { scope, schema, sources, reads }
    }

    /// Rows held in memory (many small batches: a member's buffered rows or file), projected
    /// column by column into about as many partitions as cores, so operators above see a
    /// few large batches rather than thousands of tiny ones. `stored` batches have the
    /// stored schema, `visible` ones the table's; `blocks` (stored schema) are large
    /// already and become partitions of their own, projected without a copy.
    fn coalesce(
        &self,
        stored: &[RecordBatch],
        visible: &[RecordBatch],
        blocks: &[RecordBatch],
        projection: Option<&Vec<usize>>,
        partitions: usize,
    ) -> DfResult<(SchemaRef, Vec<Vec<RecordBatch>>)> {
        let columns: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&columns)?);
        // (batch, its index for each output column), in order.
        let stored_columns: Vec<usize> = columns.iter().map(|c| self.scope.columns[*c]).collect();
        let sources: Vec<(&RecordBatch, &[usize])> = stored
            .iter()
            .map(|b| (b, stored_columns.as_slice()))
            .chain(visible.iter().map(|b| (b, columns.as_slice())))
            .collect();
        let mut parts: Vec<Vec<RecordBatch>> = blocks
            .iter()
            .map(|b| Ok(vec![b.project(&stored_columns)?.with_schema(schema.clone())?]))
            .collect::<DfResult<_>>()?;
        for run in even_runs(sources.iter().map(|(b, _)| b.num_rows()).collect(), partitions) {
            let chunk = &sources[run];
            let arrays = (0..columns.len())
                .map(|j| {
                    let parts: Vec<&dyn datafusion::arrow::array::Array> =
                        chunk.iter().map(|(b, idx)| b.column(idx[j]).as_ref()).collect();
                    datafusion::arrow::compute::concat(&parts)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let rows = chunk.iter().map(|(b, _)| b.num_rows()).sum();
            let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
            parts.push(vec![RecordBatch::try_new_with_options(schema.clone(), arrays, &options)?]);
        }
        Ok((schema, parts))
    }

    /// The stored rows of small files, from the cache or read into it.
    async fn small_files(&self, files: &[Arc<ParquetFile>]) -> DfResult<Vec<RecordBatch>> {
        let cached = self.sources.cache.get_many(files.iter().map(|f| f.path.as_str()));
        let loaded: Vec<DfResult<RecordBatch>> = futures::stream::iter(files.iter().cloned().zip(cached))
            .map(|(f, hit): (Arc<ParquetFile>, Option<RecordBatch>)| async move {
                if let Some(b) = hit {
                    return Ok(b);
                }
                let b = self.read_file(&f.path).await?;
                self.sources.cache.insert(&f.path, b.clone());
                Ok(b)
            })
            .buffered(16)
            .collect()
            .await;
        loaded.into_iter().collect()
    }

    /// A whole file's stored columns, as one batch.
    async fn read_file(&self, path: &str) -> DfResult<RecordBatch> {
        let batches = ingest::persist::read_file(&self.sources.store, path)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(datafusion::arrow::compute::concat_batches(&self.scope.schema.stored, &batches)?)
    }

    /// The rows of `members` in the dataset's hot `files` (stored columns), read now: the
    /// Parquet reader skips pages outside the members' range, then every row is checked
    /// against `members` here (the isolation does not rest on pruning).
    async fn hot_rows(
        &self,
        state: &dyn Session,
        files: &[Arc<ParquetFile>],
        members: &[MemberId],
    ) -> DfResult<HotRows> {
        let (Some(lo), Some(hi)) = (members.iter().min(), members.iter().max()) else {
            return Ok(HotRows::default());
        };
        if files.is_empty() {
            return Ok(HotRows::default());
        }
        if self.sources.cache.keeps_hot() {
            return self.hot_rows_cached(files, members).await;
        }
        let stored = self.scope.schema.stored.clone();
        let member = datafusion::logical_expr::col(ingest::schema::MEMBER_UID);
        let mut predicate = member.clone().between(lit(lo.get()), lit(hi.get()));
        if members.len() <= HOT_IN_LIST {
            predicate = predicate.and(member.in_list(members.iter().map(|m| lit(m.get())).collect(), false));
        }
        let predicate = state.create_physical_expr(predicate, &DFSchema::try_from(stored.clone())?)?;
        let source = ParquetSource::new(stored.clone()).with_pushdown_filters(true).with_predicate(predicate);
        let partitions = state.config().target_partitions().clamp(1, files.len());
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
        for (i, f) in files.iter().enumerate() {
            groups[i % partitions].push(PartitionedFile::new(f.path.clone(), f.size_bytes as u64));
        }
        let config = FileScanConfigBuilder::new(self.sources.store_url.clone(), Arc::new(source))
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .build();
        let batches =
            datafusion::physical_plan::collect(DataSourceExec::from_data_source(config), state.task_ctx()).await?;
        let wanted: MemberMap<()> = members.iter().map(|m| (*m, ())).collect();
        let mut hot = HotRows::default();
        for batch in batches {
            let uids = ingest::schema::int_column(&batch, ingest::schema::MEMBER_UID)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let keep: datafusion::arrow::array::BooleanArray =
                uids.values().iter().map(|m| Some(MemberId::new(*m).is_ok_and(|m| wanted.contains_key(&m)))).collect();
            let batch = if keep.true_count() == batch.num_rows() {
                batch
            } else {
                datafusion::arrow::compute::filter_record_batch(&batch, &keep)?
            };
            if batch.num_rows() > 0 {
                hot.add(batch)?;
            }
        }
        Ok(hot)
    }

    /// [`ScopedTable::hot_rows`] from the decoded-file cache: each hot file decoded whole
    /// once (read into the cache on a miss), then the runs of `members` taken from it by one
    /// walk of its member runs, which are exact: no other member's row is taken.
    async fn hot_rows_cached(&self, files: &[Arc<ParquetFile>], members: &[MemberId]) -> DfResult<HotRows> {
        let mut wanted: Vec<i64> = members.iter().map(|m| m.get()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut hot = HotRows::default();
        for f in files {
            let file = match self.sources.cache.get_hot(&f.path) {
                Some(file) => file,
                None => {
                    let batch = self.read_file(&f.path).await?;
                    let runs =
                        ingest::schema::member_runs(&batch).map_err(|e| DataFusionError::External(Box::new(e)))?;
                    let file = Arc::new(crate::cache::HotFile { batch, runs });
                    self.sources.cache.insert_hot(&f.path, file.clone());
                    file
                }
            };
            let mut ranges: Vec<(usize, usize)> = Vec::new();
            let mut want = wanted.iter().peekable();
            for &(member, start, len) in &file.runs {
                while want.next_if(|w| **w < member).is_some() {}
                if want.peek() == Some(&&member) {
                    ranges.push((start, len));
                }
            }
            if let Some(batch) = ingest::buffer::take_ranges(&file.batch, &ranges)? {
                hot.add(batch)?;
            }
        }
        Ok(hot)
    }

    /// A member's rows read in memory (its buffered `rows` and every one of its `files`):
    /// newest versions only, ungranted columns null.
    async fn read_in_memory(
        &self,
        mut batches: Vec<RecordBatch>,
        files: &[Arc<ParquetFile>],
        mask: Option<&[bool]>,
    ) -> DfResult<Option<RecordBatch>> {
        for f in files {
            batches.push(self.read_file(&f.path).await?);
        }
        if batches.is_empty() {
            return Ok(None);
        }
        let all = datafusion::arrow::compute::concat_batches(&self.scope.schema.stored, &batches)?;
        let newest = ingest::persist::newest_versions(all).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut visible = newest.project(&self.scope.columns)?;
        if let Some(mask) = mask {
            let columns = visible
                .columns()
                .iter()
                .zip(mask)
                .map(|(c, keep)| if *keep { c.clone() } else { new_null_array(c.data_type(), c.len()) })
                .collect();
            visible = RecordBatch::try_new(self.schema.clone(), columns)?;
        }
        Ok(Some(visible))
    }
}

/// `batch` as slices of at most `rows` rows (no copy): operators above, and the functions
/// they evaluate, see batches of the session's size however large a member's rows or a
/// cached block are.
fn slices(batch: &RecordBatch, rows: usize) -> impl Iterator<Item = RecordBatch> + '_ {
    (0..batch.num_rows()).step_by(rows).map(move |start| batch.slice(start, rows.min(batch.num_rows() - start)))
}

/// Hot-file reads for at most this many members also prune pages by each member's uid
/// (beyond the range of them all).
const HOT_IN_LIST: usize = 64;

/// Rows of the scope's members read from hot files, and what they hold per member.
#[derive(Debug, Default)]
struct HotRows {
    batches: Vec<RecordBatch>,
    /// Each batch's member runs: (member, first row, rows).
    runs: Vec<Vec<(i64, usize, usize)>>,
    members: MemberMap<Buffered>,
}

impl HotRows {
    fn add(&mut self, batch: RecordBatch) -> DfResult<()> {
        let external = |e: ingest::IngestError| DataFusionError::External(Box::new(e));
        let runs = ingest::schema::member_runs(&batch).map_err(external)?;
        let ids = ingest::schema::int_column(&batch, ingest::schema::ROW_ID).map_err(external)?;
        for &(member, start, len) in &runs {
            let member = MemberId::new(member).map_err(|e| DataFusionError::Internal(e.to_string()))?;
            self.members.entry(member).or_default().add(&ids.values()[start..start + len]);
        }
        self.batches.push(batch);
        self.runs.push(runs);
        Ok(())
    }

    fn of(&self, member: MemberId) -> Buffered {
        self.members.get(&member).copied().unwrap_or_default()
    }

    /// The rows of `members` (slices of the batches read).
    fn rows(&self, members: &MemberMap<()>) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        for (batch, runs) in self.batches.iter().zip(&self.runs) {
            let all = runs.iter().all(|(m, _, _)| MemberId::new(*m).is_ok_and(|m| members.contains_key(&m)));
            if all {
                out.push(batch.clone());
                continue;
            }
            for &(m, start, len) in runs {
                if MemberId::new(m).is_ok_and(|m| members.contains_key(&m)) {
                    out.push(batch.slice(start, len));
                }
            }
        }
        out
    }
}

/// Reads of at least this many small files are served from a cached block.
const BLOCK_MIN_FILES: usize = 256;

/// `rows` concatenated, in order, into about `parts` batches of about equal rows.
fn concat_parts(schema: &SchemaRef, rows: &[RecordBatch], parts: usize) -> DfResult<Vec<RecordBatch>> {
    even_runs(rows.iter().map(RecordBatch::num_rows).collect(), parts)
        .into_iter()
        .map(|run| Ok(datafusion::arrow::compute::concat_batches(schema, &rows[run])?))
        .collect()
}

/// Consecutive runs of batches of `sizes` rows, about `parts` of them with about equal rows.
fn even_runs(sizes: Vec<usize>, parts: usize) -> Vec<std::ops::Range<usize>> {
    let per_part = sizes.iter().sum::<usize>().div_ceil(parts.max(1)).max(1);
    let mut runs = Vec::new();
    let mut start = 0;
    while start < sizes.len() {
        let mut end = start;
        let mut rows = 0;
        while end < sizes.len() && (rows < per_part || end == start) {
            rows += sizes[end];
            end += 1;
        }
        runs.push(start..end);
        start = end;
    }
    runs
}

/// Whether a member's sources may hold one id twice: files' id ranges overlap each other
/// or the buffered or hot rows', or an id came again among the buffered or hot rows (an
/// update).
fn may_repeat_ids(files: &[Arc<ParquetFile>], buffered: &Buffered, hot: &Buffered) -> bool {
    if buffered.repeats || hot.repeats {
        return true;
    }
    let mut ranges: Vec<(i64, i64)> = files.iter().map(|f| (f.min_id, f.max_id)).collect();
    for rows in [buffered, hot] {
        if rows.rows > 0 {
            ranges.push((rows.min_id, rows.max_id));
        }
    }
    ranges.sort_unstable();
    ranges.windows(2).any(|w| w[1].0 <= w[0].1)
}

#[async_trait]
impl datafusion::catalog::TableProvider for ScopedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Used to pick members and files and to prune row groups, and applied again above.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // Planning yields here, so the request's deadline (a timeout around planning) can
        // fire between scans; past it, scanning stops.
        tokio::task::yield_now().await;
        self.reads.check_deadline()?;
        let pruner = Pruner::new(state, &self.schema, filters, self.scope.event_time());
        let dataset = &self.scope.schema.dataset.name;
        let members = pruner.members(self.scope.members(pruner.named_members().as_ref()));
        let snapshot = self.sources.buffer.snapshot(self.scope.env, dataset, members.iter().copied());
        let hot = self.hot_rows(state, &snapshot.hot, &members).await?;
        // Members whose hot rows are read as they are stored (the others are read in memory).
        let mut hot_fast: MemberMap<()> = MemberMap::default();
        let mut fast_files: Vec<Arc<ParquetFile>> = Vec::new();
        // Members read from their files: where in `counts`, and how many of `fast_files`.
        let mut fast_members: Vec<(usize, usize)> = Vec::new();
        // Rows in memory: in the stored schema (buffered, cached files) or already in the
        // table's (read in memory with versions resolved).
        let mut stored: Vec<RecordBatch> = Vec::new();
        let mut visible: Vec<RecordBatch> = Vec::new();
        let mut counts: Vec<(MemberId, i64)> = Vec::with_capacity(members.len());
        // Members read from their files whose buffered rows are read as stored.
        let mut fast_buffered: Vec<MemberId> = Vec::new();
        let mut found = snapshot.members.iter().peekable();
        let none = Snapshot::default();
        for member in &members {
            let member_snapshot = found.next_if(|(m, _)| m == member).map_or(&none, |(_, s)| s);
            let in_hot = hot.of(*member);
            let Snapshot { buffered, files } = member_snapshot;
            if files.is_empty() && buffered.rows == 0 && in_hot.rows == 0 {
                // Members without data still count as read (0 rows): the access log says
                // the query looked at them.
                counts.push((*member, 0));
                continue;
            }
            let mask = match self.scope.access(*member) {
                Access::Masked(mask) => Some(mask),
                Access::All => None,
                // `members` holds none of these: fail closed all the same.
                Access::Hidden => continue,
            };
            if mask.is_some() || may_repeat_ids(files, buffered, &in_hot) {
                // Every file: pruning by event time could keep an old version whose newer
                // one moved out of the range.
                let mut rows = snapshot.rows(&[*member])?;
                if in_hot.rows > 0 {
                    rows.extend(hot.rows(&MemberMap::from_iter([(*member, ())])));
                }
                let rows = self.read_in_memory(rows, files, mask.as_deref()).await?;
                counts.push((*member, rows.as_ref().map_or(0, |b| b.num_rows() as i64)));
                visible.extend(rows);
                continue;
            }
            if in_hot.rows > 0 {
                hot_fast.insert(*member, ());
            }
            // Counted once the files are pruned, all members' at once.
            fast_files.extend(files.iter().cloned());
            counts.push((*member, (buffered.rows + in_hot.rows) as i64));
            fast_members.push((counts.len() - 1, files.len()));
            if buffered.rows > 0 {
                fast_buffered.push(*member);
            }
        }
        stored.extend(snapshot.rows(&fast_buffered)?);
        // Only the fast members' hot rows, checked again member by member: what is read in
        // memory must not come twice, and nobody else's row may pass.
        stored.extend(hot.rows(&hot_fast));
        let keep = pruner.files(&fast_files);
        let mut kept = keep.iter();
        let mut files = fast_files.iter();
        for (count, n) in fast_members {
            counts[count].1 +=
                files.by_ref().take(n).zip(kept.by_ref()).filter(|(_, k)| **k).map(|(f, _)| f.rows).sum::<i64>();
        }
        let fast_files: Vec<Arc<ParquetFile>> =
            fast_files.into_iter().zip(keep).filter_map(|(f, keep)| keep.then_some(f)).collect();
        self.reads.record(dataset, counts);
        // Small files come from the decoded-file cache (read into it on a miss, a bounded
        // number at a time), many at once as one cached block; large ones are scanned by
        // DataFusion's Parquet source.
        let (small, large): (Vec<_>, Vec<_>) =
            fast_files.into_iter().partition(|f| self.sources.cache.takes(f.size_bytes));
        let partitions = state.config().target_partitions().max(1);
        let mut blocks: Vec<RecordBatch> = Vec::new();
        if small.len() >= BLOCK_MIN_FILES {
            let paths: Vec<&str> = small.iter().map(|f| f.path.as_str()).collect();
            if let Some(parts) = self.sources.cache.get_block(&paths) {
                blocks = parts;
            } else {
                let rows = self.small_files(&small).await?;
                blocks = concat_parts(&self.scope.schema.stored, &rows, partitions)?;
                self.sources.cache.insert_block(&paths, blocks.clone());
            }
        } else {
            stored.extend(self.small_files(&small).await?);
        }
        self.reads.files.lock().extend(large.iter().map(|f| f.path.clone()));
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !large.is_empty() {
            let mut source = ParquetSource::new(self.schema.clone()).with_pushdown_filters(true);
            if let Some(predicate) = conjunction(filters.iter().cloned()) {
                let df_schema = DFSchema::try_from(self.schema.clone())?;
                if let Ok(p) = state.create_physical_expr(predicate, &df_schema) {
                    source = source.with_predicate(p);
                }
            }
            let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions.min(large.len())];
            let mut sizes = vec![0i64; groups.len()];
            for f in &large {
                let smallest = (0..groups.len()).min_by_key(|i| sizes[*i]).expect("at least one group");
                sizes[smallest] += f.size_bytes;
                groups[smallest].push(PartitionedFile::new(f.path.clone(), f.size_bytes as u64));
            }
            let config = FileScanConfigBuilder::new(self.sources.store_url.clone(), Arc::new(source))
                .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
            inputs.push(DataSourceExec::from_data_source(config));
        }
        if !stored.is_empty() || !visible.is_empty() || !blocks.is_empty() {
            // The copy counts in the query's memory, held while the query runs: a query
            // naming a table many times fails at its limit, one copy past it at most. (The
            // batches copied from cannot be sized beforehand: a member's buffered rows are
            // slices whose buffers count whole.)
            let (schema, parts) = self.coalesce(&stored, &visible, &blocks, projection, partitions)?;
            let memory = MemoryConsumer::new("trove scan").register(&state.runtime_env().memory_pool);
            memory.try_grow(parts[blocks.len()..].iter().flatten().map(RecordBatch::get_array_memory_size).sum())?;
            self.reads.hold(memory);
            let batch_size = state.config().batch_size().max(1);
            let parts: Vec<Vec<RecordBatch>> =
                parts.iter().map(|p| p.iter().flat_map(|b| slices(b, batch_size)).collect()).collect();
            inputs.push(DataSourceExec::from_data_source(
                MemorySourceConfig::try_new(&parts, schema, None)?.with_limit(limit),
            ));
        }
        if inputs.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        UnionExec::try_new(inputs)
    }
}
