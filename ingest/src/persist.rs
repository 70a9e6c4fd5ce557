//! Buffered rows to Parquet in object storage: sorted by event time, dictionary encoding,
//! page statistics and page index, LZ4 for flushes and ZSTD for compacted files ([`Codec`]),
//! a unique name written with `PutMode::Create`, recorded in the manifest only after the put
//! succeeded.

use std::sync::Arc;

use catalog::{Catalog, ParquetFile};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::errors::Result as ParquetResult;
use datafusion::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::partition::{PartitionKey, file_path};
use crate::schema::{DatasetSchema, MEMBER_UID, ROW_ID, ROW_VERSION, int_column};

/// How a file is compressed. parquet-rs makes a ZSTD context per column of every file,
/// which costs about 0.4 ms a file whatever its size: most of settling, which writes a small
/// file per member. Hot and settled files therefore use LZ4 (no context to set up), and
/// compaction, which rewrites a member's files into few large ones, ZSTD for the smaller
/// size (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// A member's file settled from hot files: fast to write, rewritten by compaction.
    Settled,
    /// A compacted file: kept long, so small.
    Compacted,
    /// A hot file (several members' rows): written every flush, read by every read of its
    /// dataset until it is settled.
    Hot,
}

/// Rows per data page of a hot file.
const HOT_PAGE_ROWS: usize = 4096;

fn writer_properties(codec: Codec) -> WriterProperties {
    let compression = match codec {
        Codec::Settled | Codec::Hot => Compression::LZ4_RAW,
        Codec::Compacted => Compression::ZSTD(ZstdLevel::try_new(1).expect("valid level")),
    };
    // A hot file holds many members, sorted by member: small pages, so the page index
    // finds one member's rows in a few short ranges.
    let page_rows = if codec == Codec::Hot { HOT_PAGE_ROWS } else { usize::MAX };
    WriterProperties::builder()
        .set_data_page_row_count_limit(page_rows)
        .set_compression(compression)
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(1 << 20))
        .build()
}

/// Encodes rows of one partition as one Parquet file, sorted by event time then id, with
/// only the newest version of each row: a file never holds one id twice, which is what lets
/// readers skip de-duplication unless files' id ranges overlap.
/// Returns the bytes and the rows written.
pub fn encode(
    schema: &DatasetSchema,
    batches: &[RecordBatch],
    codec: Codec,
) -> Result<(Vec<u8>, RecordBatch), crate::IngestError> {
    let batch = newest_versions(concat_batches(&schema.stored, batches)?)?;
    let sorted = if in_order(&batch, schema)? { batch } else { sort_by_time(&batch, schema)? };
    Ok((write_parquet(schema, &sorted, codec)?, sorted))
}

/// Whether rows are already by event time then id (a meter's readings usually arrive so):
/// then the sort, and its copy of every column, is skipped.
fn in_order(batch: &RecordBatch, schema: &DatasetSchema) -> Result<bool, crate::IngestError> {
    let times = batch.column(schema.event_time_stored);
    if times.null_count() > 0 {
        return Ok(false);
    }
    let (times, ids) = (times.as_primitive::<Int64Type>().values(), int_column(batch, ROW_ID)?.values());
    Ok((1..batch.num_rows()).all(|i| (times[i - 1], ids[i - 1]) < (times[i], ids[i])))
}

fn sort_by_time(batch: &RecordBatch, schema: &DatasetSchema) -> Result<RecordBatch, crate::IngestError> {
    let sort = [
        SortColumn { values: batch.column(schema.event_time_stored).clone(), options: None },
        SortColumn { values: Arc::new(int_column(batch, ROW_ID)?.clone()), options: None },
    ];
    let indices = lexsort_to_indices(&sort, None)?;
    Ok(take_record_batch(batch, &indices)?)
}

/// Writes a partition's rows as a new, not yet recorded file. Object-store errors are
/// retried with backoff (up to `attempts`). Nobody reads the file until [`commit`] records it.
pub async fn write_file(
    store: &Arc<dyn ObjectStore>,
    key: &PartitionKey,
    schema: &Arc<DatasetSchema>,
    batches: Vec<RecordBatch>,
    codec: Codec,
) -> Result<ParquetFile, crate::IngestError> {
    let schema2 = schema.clone();
    let (bytes, sorted) = crate::background::run(move || encode(&schema2, &batches, codec)).await??;
    let mut file =
        Extent::of(&sorted, schema)?.describe(schema, key.env, Some(key.member), String::new(), bytes.len() as i64);
    let path = file_path(key, file.min_event_time, file.min_id, file.max_id);
    file.path = path.to_string();
    put_new(store, &path, bytes).await?;
    Ok(file)
}

/// A new hot file (several members' rows, sorted by member, then event time, then id),
/// written as groups of whole members arrive in member order: a flush appends its rows
/// once, a merge of hot files appends them a few thousand members at a time, so memory
/// holds one group and the encoded file, never every row decoded and sorted at once. Of
/// each (member, id) only the newest version is kept, so a hot file, like every file,
/// holds one version of each of a member's rows; a group must therefore hold every version
/// of its members' rows.
#[derive(Debug)]
pub struct HotFile {
    schema: Arc<DatasetSchema>,
    env: catalog::DataEnvironment,
    writer: Option<ArrowWriter<Vec<u8>>>,
    extent: Extent,
    /// The last member appended: groups must come in member order.
    last_member: Option<i64>,
}

impl HotFile {
    pub fn new(schema: &Arc<DatasetSchema>, env: catalog::DataEnvironment) -> Result<Self, crate::IngestError> {
        let writer = ArrowWriter::try_new(Vec::new(), schema.stored.clone(), Some(writer_properties(Codec::Hot)))?;
        Ok(HotFile { schema: schema.clone(), env, writer: Some(writer), extent: Extent::default(), last_member: None })
    }

    /// Appends the rows of members that all come after those appended so far. They are
    /// sorted in one background job and encoded in jobs of [`PIECE_ROWS`] rows, each at the
    /// priority of its moment (see `background`), so a flush of millions of rows is many
    /// short jobs rather than seconds of one core at the priority of its start.
    pub async fn append(&mut self, batches: Vec<RecordBatch>) -> Result<(), crate::IngestError> {
        let schema = self.schema.clone();
        let sorted = crate::background::run(move || {
            let sorted = sort_by_member(&schema, &batches)?;
            drop(batches);
            newest_member_versions(sorted)
        })
        .await??;
        if sorted.num_rows() == 0 {
            return Ok(());
        }
        let members = int_column(&sorted, MEMBER_UID)?.values();
        if self.last_member.is_some_and(|last| members[0] <= last) {
            return Err(crate::IngestError::Internal("hot file groups out of member order".into()));
        }
        self.last_member = members.last().copied();
        self.extent.add(&sorted, &self.schema)?;
        let mut writer = self.writer.take().ok_or_else(|| crate::IngestError::Internal("hot file failed".into()))?;
        for start in (0..sorted.num_rows()).step_by(PIECE_ROWS) {
            let piece = sorted.slice(start, PIECE_ROWS.min(sorted.num_rows() - start));
            writer = crate::background::run(move || writer.write(&piece).map(|()| writer)).await??;
        }
        self.writer = Some(writer);
        Ok(())
    }

    /// Puts the file (named for `arrived`, epoch ms: when its rows first arrived), not yet
    /// recorded: nobody reads it until [`commit`] records it.
    pub async fn finish(self, store: &Arc<dyn ObjectStore>, arrived: i64) -> Result<ParquetFile, crate::IngestError> {
        let writer = self.writer.ok_or_else(|| crate::IngestError::Internal("hot file failed".into()))?;
        let bytes = crate::background::run(move || writer.into_inner()).await??;
        let path = crate::partition::hot_file_path(self.env, &self.schema.dataset.name, arrived);
        let file = self.extent.describe(&self.schema, self.env, None, path.to_string(), bytes.len() as i64);
        put_new(store, &path, bytes).await?;
        Ok(file)
    }
}

/// Writes a dataset's flushed rows (every member's) as one new, not yet recorded hot file.
pub async fn write_hot_file(
    store: &Arc<dyn ObjectStore>,
    env: catalog::DataEnvironment,
    schema: &Arc<DatasetSchema>,
    batches: Vec<RecordBatch>,
    now_ms: i64,
) -> Result<ParquetFile, crate::IngestError> {
    let mut file = HotFile::new(schema, env)?;
    file.append(batches).await?;
    file.finish(store, now_ms).await
}

/// Every row of `batches` as one batch sorted by member, then event time, then id. The
/// sort looks at those three columns only, and the rows are copied once, straight from the
/// batches (a flush's rows are most of the buffer: concatenating them first would hold
/// them a third time).
pub fn sort_by_member(schema: &DatasetSchema, batches: &[RecordBatch]) -> Result<RecordBatch, crate::IngestError> {
    use datafusion::arrow::array::Array;
    let key = |column: usize| -> Result<datafusion::arrow::array::ArrayRef, crate::IngestError> {
        let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(column).as_ref()).collect();
        Ok(datafusion::arrow::compute::concat(&parts)?)
    };
    let index = |name: &str| schema.stored.index_of(name).map_err(crate::IngestError::from);
    let (members, times, ids) = (key(index(MEMBER_UID)?)?, key(schema.event_time_stored)?, key(index(ROW_ID)?)?);
    let in_order = times.null_count() == 0 && {
        let m = members.as_primitive::<Int64Type>().values();
        let (t, i) = (times.as_primitive::<Int64Type>().values(), ids.as_primitive::<Int64Type>().values());
        (1..m.len()).all(|r| (m[r - 1], t[r - 1], i[r - 1]) < (m[r], t[r], i[r]))
    };
    if in_order {
        return Ok(concat_batches(&schema.stored, batches)?);
    }
    // The keys are plain integers: sorting them as tuples is several times faster than
    // Arrow's lexicographic sort, whose comparators are dynamic per column. A missing event
    // time sorts first, as Arrow's would.
    let (m, i) = (members.as_primitive::<Int64Type>().values(), ids.as_primitive::<Int64Type>().values());
    let times = times.as_primitive::<Int64Type>();
    let mut keys: Vec<(i64, i64, i64, u32, u32)> = Vec::with_capacity(m.len());
    let mut row = 0;
    for (b, batch) in batches.iter().enumerate() {
        for r in 0..batch.num_rows() {
            let t = if times.is_null(row) { i64::MIN } else { times.value(row) };
            keys.push((m[row], t, i[row], b as u32, r as u32));
            row += 1;
        }
    }
    keys.sort_unstable();
    let places: Vec<(usize, usize)> = keys.iter().map(|&(.., b, r)| (b as usize, r as usize)).collect();
    drop(keys);
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    Ok(datafusion::arrow::compute::interleave_record_batch(&refs, &places)?)
}

/// Rows a background job encodes at once when a hot file is written.
const PIECE_ROWS: usize = 1 << 16;

fn write_parquet(schema: &DatasetSchema, batch: &RecordBatch, codec: Codec) -> Result<Vec<u8>, crate::IngestError> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 4);
    let mut writer = ArrowWriter::try_new(&mut out, schema.stored.clone(), Some(writer_properties(codec)))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(out)
}

/// What the manifest records of a file's rows, gathered as they are written.
#[derive(Debug, Default, Clone, Copy)]
struct Extent {
    rows: i64,
    event_time: Option<(i64, i64)>,
    id: Option<(i64, i64)>,
    max_version: Option<i64>,
}

impl Extent {
    fn of(rows: &RecordBatch, schema: &DatasetSchema) -> Result<Extent, crate::IngestError> {
        let mut extent = Extent::default();
        extent.add(rows, schema)?;
        Ok(extent)
    }

    fn add(&mut self, rows: &RecordBatch, schema: &DatasetSchema) -> Result<(), crate::IngestError> {
        use datafusion::arrow::compute::{max, min};
        let range = |a: &datafusion::arrow::array::Int64Array, was: Option<(i64, i64)>| match (min(a), max(a), was) {
            (Some(lo), Some(hi), Some((l, h))) => Some((lo.min(l), hi.max(h))),
            (Some(lo), Some(hi), None) => Some((lo, hi)),
            _ => was,
        };
        self.rows += rows.num_rows() as i64;
        self.event_time = range(rows.column(schema.event_time_stored).as_primitive::<Int64Type>(), self.event_time);
        self.id = range(int_column(rows, ROW_ID)?, self.id);
        self.max_version = max(int_column(rows, ROW_VERSION)?).max(self.max_version);
        Ok(())
    }

    /// The manifest row of the file.
    fn describe(
        &self,
        schema: &DatasetSchema,
        environment: catalog::DataEnvironment,
        member: Option<catalog::MemberId>,
        path: String,
        size_bytes: i64,
    ) -> ParquetFile {
        let (min_event_time, max_event_time) = self.event_time.unwrap_or_default();
        let (min_id, max_id) = self.id.unwrap_or_default();
        ParquetFile {
            environment,
            dataset: schema.dataset.name.clone(),
            member,
            path,
            rows: self.rows,
            size_bytes,
            min_event_time,
            max_event_time,
            min_id,
            max_id,
            max_version: self.max_version.unwrap_or_default(),
        }
    }
}

/// The highest row id and row version of each member in a hot file (its `member_uid`, `id`
/// and `_version` columns only), by member: where a restarted node's id counters resume,
/// and which of a member's WAL rows are in files already.
pub async fn hot_file_max_ids(
    store: &Arc<dyn ObjectStore>,
    path: &str,
) -> Result<Vec<(i64, i64, i64)>, crate::IngestError> {
    let bytes = store.get(&Path::from(path)).await?.bytes().await?;
    crate::background::run(move || {
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
        let columns = [MEMBER_UID, ROW_ID, ROW_VERSION];
        let mask = datafusion::parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), columns);
        let mut out: Vec<(i64, i64, i64)> = Vec::new();
        for batch in builder.with_projection(mask).build()? {
            let batch = batch?;
            let (ids, versions) = (int_column(&batch, ROW_ID)?, int_column(&batch, ROW_VERSION)?);
            for (member, start, len) in crate::schema::member_runs(&batch)? {
                let (id, version) = (max_i64(&ids.slice(start, len)), max_i64(&versions.slice(start, len)));
                match out.last_mut() {
                    Some((m, i, v)) if *m == member => (*i, *v) = ((*i).max(id), (*v).max(version)),
                    _ => out.push((member, id, version)),
                }
            }
        }
        Ok(out)
    })
    .await?
}

/// One member's rows of a hot file (stored columns): only row groups whose member range
/// holds it are read, and only its rows decoded past the `member_uid` column.
pub async fn read_member_rows(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    member: catalog::MemberId,
) -> Result<Vec<RecordBatch>, crate::IngestError> {
    use datafusion::parquet::arrow::ProjectionMask;
    use datafusion::parquet::arrow::arrow_reader::{ArrowPredicateFn, RowFilter};
    use datafusion::parquet::file::statistics::Statistics;
    let bytes = store.get(&Path::from(path)).await?.bytes().await?;
    crate::background::run(move || {
        let uid = member.get();
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
        let column = builder
            .parquet_schema()
            .columns()
            .iter()
            .position(|c| c.name() == MEMBER_UID)
            .ok_or_else(|| crate::IngestError::Internal("a hot file without member uids".into()))?;
        let groups: Vec<usize> = (0..builder.metadata().num_row_groups())
            .filter(|g| match builder.metadata().row_group(*g).column(column).statistics() {
                Some(Statistics::Int64(s)) => {
                    s.min_opt().is_none_or(|lo| *lo <= uid) && s.max_opt().is_none_or(|hi| *hi >= uid)
                }
                _ => true,
            })
            .collect();
        let mask = ProjectionMask::leaves(builder.parquet_schema(), [column]);
        let predicate = ArrowPredicateFn::new(mask, move |batch: RecordBatch| {
            let uids = batch.column(0).as_primitive::<Int64Type>();
            Ok(uids.iter().map(|m| Some(m == Some(uid))).collect())
        });
        let reader =
            builder.with_row_groups(groups).with_row_filter(RowFilter::new(vec![Box::new(predicate)])).build()?;
        Ok(reader.collect::<Result<Vec<_>, _>>()?)
    })
    .await?
}

/// Every row of a recorded file (stored columns), decoded.
pub async fn read_file(store: &Arc<dyn ObjectStore>, path: &str) -> Result<Vec<RecordBatch>, crate::IngestError> {
    decode_file(store.get(&Path::from(path)).await?.bytes().await?)
}

/// The same, decoded on a background thread: for compaction, which is not waited for.
pub async fn read_file_in_background(
    store: &Arc<dyn ObjectStore>,
    path: &str,
) -> Result<Vec<RecordBatch>, crate::IngestError> {
    let bytes = store.get(&Path::from(path)).await?.bytes().await?;
    crate::background::run(move || decode_file(bytes)).await?
}

fn decode_file(bytes: bytes::Bytes) -> Result<Vec<RecordBatch>, crate::IngestError> {
    Ok(ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?.collect::<Result<Vec<_>, _>>()?)
}

/// Records written files in the manifest in one transaction, swapping them for `replaced`
/// ones (compaction): the point where their rows count as persisted. If the commit fails the
/// files are deleted (never recorded, never read) rather than left as orphans.
/// `arrived` (epoch ms) is when the rows first arrived, if not now (merged hot files).
pub async fn commit(
    store: &Arc<dyn ObjectStore>,
    catalog: &Catalog,
    files: &[ParquetFile],
    replaced: &[String],
    arrived: Option<i64>,
) -> Result<(), crate::IngestError> {
    let recorded = async {
        #[cfg(feature = "failpoints")]
        let point = if replaced.is_empty() { "manifest-commit" } else { "compaction-swap" };
        fail::fail_point!(point, |_| Err(crate::IngestError::Unavailable(format!("failpoint {point}"))));
        Ok::<_, crate::IngestError>(catalog.commit_parquet_files_arrived(files, replaced, arrived).await?)
    };
    if let Err(e) = recorded.await {
        for f in files {
            let _ = store.delete(&Path::from(f.path.as_str())).await;
        }
        return Err(e);
    }
    metrics::counter!("trove_ingest_files_written_total").increment(files.len() as u64);
    metrics::counter!("trove_ingest_bytes_written_total").increment(files.iter().map(|f| f.size_bytes as u64).sum());
    Ok(())
}

/// The rows of a several members' `batch`, sorted by member, that are the newest version of
/// their (member, id): each member's rows are looked at on their own, and kept whole
/// without a map when their ids increase (no row updated, the common case).
fn newest_member_versions(batch: RecordBatch) -> Result<RecordBatch, crate::IngestError> {
    let (ids, versions) = (int_column(&batch, ROW_ID)?.values(), int_column(&batch, ROW_VERSION)?.values());
    let mut keep: Option<Vec<u32>> = None;
    for (_, start, len) in crate::schema::member_runs(&batch)? {
        let (run, end) = (&ids[start..start + len], (start + len) as u32);
        let newest = if run.windows(2).all(|w| w[0] < w[1]) {
            None
        } else {
            newest_rows(run.iter().copied(), &versions[start..start + len])
        };
        match (newest, &mut keep) {
            (None, None) => {}
            (None, Some(keep)) => keep.extend(start as u32..end),
            (Some(rows), keep) => {
                keep.get_or_insert_with(|| (0..start as u32).collect()).extend(rows.iter().map(|r| r + start as u32))
            }
        }
    }
    keep_rows(batch, keep)
}

/// The rows of `batch` that are the newest version of their id (the batch itself when no id
/// repeats, the common case).
pub fn newest_versions(batch: RecordBatch) -> Result<RecordBatch, crate::IngestError> {
    let ids = int_column(&batch, ROW_ID)?;
    // A flush's rows of a member come in id order unless a row was updated: nothing to
    // drop, and no map of every id to build.
    if ids.values().windows(2).all(|w| w[0] < w[1]) {
        return Ok(batch);
    }
    let rows = newest_rows(ids.values().iter().copied(), int_column(&batch, ROW_VERSION)?.values());
    keep_rows(batch, rows)
}

/// For rows with these `keys` and `versions`, the rows holding each key's highest version,
/// in row order; `None` when no key repeats (every row is kept).
fn newest_rows<K: std::hash::Hash + Eq>(keys: impl ExactSizeIterator<Item = K>, versions: &[i64]) -> Option<Vec<u32>> {
    let n = keys.len();
    let mut newest: std::collections::HashMap<K, (i64, usize)> = std::collections::HashMap::with_capacity(n);
    for (row, (key, version)) in keys.zip(versions).enumerate() {
        let e = newest.entry(key).or_insert((*version, row));
        if *version > e.0 {
            *e = (*version, row);
        }
    }
    if newest.len() == n {
        return None;
    }
    let mut rows: Vec<u32> = newest.values().map(|(_, row)| *row as u32).collect();
    rows.sort_unstable();
    Some(rows)
}

/// `batch` with only `rows` (all of it for `None`).
fn keep_rows(batch: RecordBatch, rows: Option<Vec<u32>>) -> Result<RecordBatch, crate::IngestError> {
    match rows {
        None => Ok(batch),
        Some(rows) => Ok(take_record_batch(&batch, &datafusion::arrow::array::UInt32Array::from(rows))?),
    }
}

fn max_i64(a: &datafusion::arrow::array::Int64Array) -> i64 {
    datafusion::arrow::compute::max(a).unwrap_or(0)
}

/// Puts a new object: never over an existing one (`PutMode::Create`; file names are unique,
/// so an existing object means a bug, not a retry). The store's client retries transient
/// failures itself (object_store's `RetryConfig`); a put that still fails fails its flush,
/// whose rows stay buffered for the next round.
pub async fn put_new(store: &Arc<dyn ObjectStore>, path: &Path, bytes: Vec<u8>) -> Result<(), crate::IngestError> {
    fail::fail_point!("parquet-put", |_| Err(crate::IngestError::Unavailable("failpoint parquet-put".into())));
    let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
    store.put_opts(path, PutPayload::from(bytes), opts).await?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, new_null_array};

    pub(crate) fn energy() -> Arc<DatasetSchema> {
        let d = catalog::builtin_datasets().into_iter().find(|d| d.name.as_str() == "ds_energy_consumption").unwrap();
        Arc::new(DatasetSchema::new(Arc::new(d)).unwrap())
    }

    /// Stored rows of (member, id, version, event time).
    pub(crate) fn rows(schema: &DatasetSchema, rows: &[(i64, i64, i64, i64)]) -> RecordBatch {
        let column = |f: fn(&(i64, i64, i64, i64)) -> i64| Arc::new(rows.iter().map(f).collect::<Int64Array>());
        let mut cols: Vec<datafusion::arrow::array::ArrayRef> =
            schema.stored.fields().iter().map(|f| new_null_array(f.data_type(), rows.len())).collect();
        cols[0] = column(|r| r.0);
        cols[1] = Arc::new(Int64Array::from(vec![0; rows.len()]));
        cols[2] = column(|r| r.1);
        cols[3] = column(|r| r.2);
        cols[schema.event_time_stored] = column(|r| r.3);
        RecordBatch::try_new(schema.stored.clone(), cols).unwrap()
    }

    pub(crate) fn values(batches: &[RecordBatch], name: &str) -> Vec<i64> {
        batches.iter().flat_map(|b| int_column(b, name).unwrap().values().to_vec()).collect()
    }

    #[tokio::test]
    async fn a_hot_file_sorts_members_and_gives_back_only_the_member_asked_for() {
        let schema = energy();
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let env = catalog::DataEnvironment::Production;
        // Two writes, members interleaved; member 2's row 1 updated (version 7 over 3).
        let first = rows(&schema, &[(2, 1, 3, 100), (1, 1, 1, 100), (3, 1, 2, 50)]);
        let second = rows(&schema, &[(1, 2, 4, 200), (2, 2, 5, 150), (2, 1, 7, 100)]);
        let file = write_hot_file(&store, env, &schema, vec![first, second], 1_000).await.unwrap();
        assert_eq!(file.member, None);
        assert!(file.path.starts_with("production/ds_energy_consumption/hot/h00000000001000_"), "{}", file.path);
        assert_eq!((file.rows, file.max_version, file.min_event_time, file.max_event_time), (5, 7, 50, 200));
        let all = read_file(&store, &file.path).await.unwrap();
        assert_eq!(values(&all, MEMBER_UID), [1, 1, 2, 2, 3], "by member, then event time");
        assert_eq!(values(&all, ROW_VERSION), [1, 4, 7, 5, 2], "only the newest version of member 2's row 1");
        // Member 1's and 2's ids overlap: a member's read never takes another's rows.
        for (member, ids) in [(1, vec![1, 2]), (2, vec![1, 2]), (3, vec![1])] {
            let m = catalog::MemberId::new(member).unwrap();
            let mine = read_member_rows(&store, &file.path, m).await.unwrap();
            assert!(values(&mine, MEMBER_UID).iter().all(|u| *u == member));
            assert_eq!(values(&mine, ROW_ID), ids);
        }
        let nobody = read_member_rows(&store, &file.path, catalog::MemberId::new(4).unwrap()).await.unwrap();
        assert_eq!(nobody.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
        assert_eq!(hot_file_max_ids(&store, &file.path).await.unwrap(), [(1, 2, 4), (2, 2, 7), (3, 1, 2)]);
    }
}

/// A Parquet file in the object store read by ranges, for streaming reads
/// (`ParquetRecordBatchStreamBuilder`): the footer first, then each row group's columns.
#[derive(Debug)]
pub(crate) struct StoreReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl StoreReader {
    pub(crate) fn new(store: &Arc<dyn ObjectStore>, file: &ParquetFile) -> Self {
        let size = u64::try_from(file.size_bytes).unwrap_or_default();
        StoreReader { store: store.clone(), path: Path::from(file.path.as_str()), size }
    }
}

fn parquet_error(e: object_store::Error) -> datafusion::parquet::errors::ParquetError {
    datafusion::parquet::errors::ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, ParquetResult<bytes::Bytes>> {
        async move { self.store.get_range(&self.path, range).await.map_err(parquet_error) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, ParquetResult<Vec<bytes::Bytes>>> {
        async move { self.store.get_ranges(&self.path, &ranges).await.map_err(parquet_error) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata =
                ParquetMetaDataReader::new().with_arrow_reader_options(options).load_and_finish(self, size).await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}
