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
    let mut file = describe(&sorted, schema, key.env, Some(key.member), String::new(), bytes.len() as i64);
    let path = file_path(key, file.min_event_time, file.min_id, file.max_id);
    file.path = path.to_string();
    put_new(store, &path, bytes).await?;
    Ok(file)
}

/// Writes a dataset's flushed rows (every member's) as one new, not yet recorded hot file,
/// sorted by member, then event time, then id. When a member's id may come twice
/// (`repeats`: an update) only its newest version is kept, so a hot file, like every
/// file, holds one version of each of a member's rows.
pub async fn write_hot_file(
    store: &Arc<dyn ObjectStore>,
    env: catalog::DataEnvironment,
    schema: &Arc<DatasetSchema>,
    batches: Vec<RecordBatch>,
    repeats: bool,
    now_ms: i64,
) -> Result<ParquetFile, crate::IngestError> {
    let schema2 = schema.clone();
    let sorted = crate::background::run(move || {
        let sorted = sort_by_member(&schema2, &batches)?;
        drop(batches);
        if repeats { newest_member_versions(sorted) } else { Ok(sorted) }
    })
    .await??;
    let bytes = write_parquet_in_pieces(schema, &sorted, Codec::Hot).await?;
    let path = crate::partition::hot_file_path(env, &schema.dataset.name, now_ms);
    let file = describe(&sorted, schema, env, None, path.to_string(), bytes.len() as i64);
    put_new(store, &path, bytes).await?;
    Ok(file)
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

/// Rows a background job encodes at once when a file is written in pieces.
const PIECE_ROWS: usize = 1 << 16;

/// Encodes `batch` as [`write_parquet`] does, one background job per [`PIECE_ROWS`] rows: a
/// flush of millions of rows is then many short jobs, each at the priority of its moment
/// (see `background`), rather than seconds of one core at the priority of its start.
async fn write_parquet_in_pieces(
    schema: &DatasetSchema,
    batch: &RecordBatch,
    codec: Codec,
) -> Result<Vec<u8>, crate::IngestError> {
    let out = Vec::with_capacity(batch.get_array_memory_size() / 4);
    let mut writer = ArrowWriter::try_new(out, schema.stored.clone(), Some(writer_properties(codec)))?;
    for start in (0..batch.num_rows()).step_by(PIECE_ROWS) {
        let piece = batch.slice(start, PIECE_ROWS.min(batch.num_rows() - start));
        writer = crate::background::run(move || writer.write(&piece).map(|()| writer)).await??;
    }
    Ok(crate::background::run(move || writer.into_inner()).await??)
}

fn write_parquet(schema: &DatasetSchema, batch: &RecordBatch, codec: Codec) -> Result<Vec<u8>, crate::IngestError> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 4);
    let mut writer = ArrowWriter::try_new(&mut out, schema.stored.clone(), Some(writer_properties(codec)))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(out)
}

/// The manifest row of a file holding `rows`.
fn describe(
    rows: &RecordBatch,
    schema: &DatasetSchema,
    environment: catalog::DataEnvironment,
    member: Option<catalog::MemberId>,
    path: String,
    size_bytes: i64,
) -> ParquetFile {
    let times = rows.column(schema.event_time_stored).as_primitive::<Int64Type>();
    let ids = rows.column_by_name(ROW_ID).expect("stored batches have ids").as_primitive::<Int64Type>();
    let versions = rows.column_by_name(ROW_VERSION).expect("stored batches have versions").as_primitive::<Int64Type>();
    ParquetFile {
        environment,
        dataset: schema.dataset.name.clone(),
        member,
        path,
        rows: rows.num_rows() as i64,
        size_bytes,
        min_event_time: min_i64(times),
        max_event_time: max_i64(times),
        min_id: min_i64(ids),
        max_id: max_i64(ids),
        max_version: max_i64(versions),
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

/// The rows of a several members' `batch` that are the newest version of their (member, id).
fn newest_member_versions(batch: RecordBatch) -> Result<RecordBatch, crate::IngestError> {
    let (members, ids) = (int_column(&batch, MEMBER_UID)?, int_column(&batch, ROW_ID)?);
    let keys = members.values().iter().copied().zip(ids.values().iter().copied());
    let rows = newest_rows(keys, int_column(&batch, ROW_VERSION)?.values());
    keep_rows(batch, rows)
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

fn min_i64(a: &datafusion::arrow::array::Int64Array) -> i64 {
    datafusion::arrow::compute::min(a).unwrap_or(0)
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
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, new_null_array};

    fn energy() -> Arc<DatasetSchema> {
        let d = catalog::builtin_datasets().into_iter().find(|d| d.name.as_str() == "ds_energy_consumption").unwrap();
        Arc::new(DatasetSchema::new(Arc::new(d)).unwrap())
    }

    /// Stored rows of (member, id, version, event time).
    fn rows(schema: &DatasetSchema, rows: &[(i64, i64, i64, i64)]) -> RecordBatch {
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

    fn values(batches: &[RecordBatch], name: &str) -> Vec<i64> {
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
        let file = write_hot_file(&store, env, &schema, vec![first, second], true, 1_000).await.unwrap();
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
