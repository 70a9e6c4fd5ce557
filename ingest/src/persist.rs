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
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::partition::{PartitionKey, file_path};
use crate::schema::{DatasetSchema, ROW_ID, ROW_VERSION, int_column};

/// How a file is compressed. parquet-rs makes a ZSTD context per column of every file,
/// which costs about 0.4 ms a file whatever its size: most of a flush round, which writes a
/// small file per member. Flushes therefore use LZ4 (no context to set up), and compaction,
/// which rewrites them into few large files, ZSTD for the smaller size (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// A flush: fast to write, rewritten by compaction.
    Flush,
    /// A compacted file: kept long, so small.
    Compacted,
}

fn writer_properties(codec: Codec) -> WriterProperties {
    let compression = match codec {
        Codec::Flush => Compression::LZ4_RAW,
        Codec::Compacted => Compression::ZSTD(ZstdLevel::try_new(1).expect("valid level")),
    };
    WriterProperties::builder()
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
    let mut out = Vec::with_capacity(sorted.get_array_memory_size() / 4);
    let mut writer = ArrowWriter::try_new(&mut out, schema.stored.clone(), Some(writer_properties(codec)))?;
    writer.write(&sorted)?;
    writer.close()?;
    Ok((out, sorted))
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
    let times = sorted.column(schema.event_time_stored).as_primitive::<Int64Type>();
    let ids = sorted.column_by_name(ROW_ID).expect("stored batches have ids").as_primitive::<Int64Type>();
    let (min_t, max_t) = (min_i64(times), max_i64(times));
    let (min_id, max_id) = (min_i64(ids), max_i64(ids));
    let max_version =
        max_i64(sorted.column_by_name(ROW_VERSION).expect("stored batches have versions").as_primitive::<Int64Type>());
    let path = file_path(key, min_t, min_id, max_id);
    let size = bytes.len() as i64;
    put_new(store, &path, bytes).await?;
    Ok(ParquetFile {
        environment: key.env,
        dataset: key.dataset.clone(),
        member: key.member,
        path: path.to_string(),
        rows: sorted.num_rows() as i64,
        size_bytes: size,
        min_event_time: min_t,
        max_event_time: max_t,
        min_id,
        max_id,
        max_version,
    })
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
pub async fn commit(
    store: &Arc<dyn ObjectStore>,
    catalog: &Catalog,
    files: &[ParquetFile],
    replaced: &[String],
) -> Result<(), crate::IngestError> {
    let recorded = async {
        #[cfg(feature = "failpoints")]
        let point = if replaced.is_empty() { "manifest-commit" } else { "compaction-swap" };
        fail::fail_point!(point, |_| Err(crate::IngestError::Unavailable(format!("failpoint {point}"))));
        Ok::<_, crate::IngestError>(catalog.commit_parquet_files(files, replaced).await?)
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

/// The rows of `batch` that are the newest version of their id (the batch itself when no id
/// repeats, the common case).
pub fn newest_versions(batch: RecordBatch) -> Result<RecordBatch, crate::IngestError> {
    let ids = batch.column_by_name(ROW_ID).expect("stored batches have ids").as_primitive::<Int64Type>();
    // A flush's rows of a member come in id order unless a row was updated: nothing to
    // drop, and no map of every id to build.
    if ids.values().windows(2).all(|w| w[0] < w[1]) {
        return Ok(batch);
    }
    let versions = batch.column_by_name(ROW_VERSION).expect("stored batches have versions").as_primitive::<Int64Type>();
    let mut newest: std::collections::HashMap<i64, (i64, usize)> = std::collections::HashMap::with_capacity(ids.len());
    for (row, (id, version)) in ids.values().iter().zip(versions.values()).enumerate() {
        let e = newest.entry(*id).or_insert((*version, row));
        if *version > e.0 {
            *e = (*version, row);
        }
    }
    if newest.len() == ids.len() {
        return Ok(batch);
    }
    let mut rows: Vec<u32> = newest.values().map(|(_, row)| *row as u32).collect();
    rows.sort_unstable();
    Ok(take_record_batch(&batch, &datafusion::arrow::array::UInt32Array::from(rows))?)
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
