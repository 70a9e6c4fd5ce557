//! Replay: at start, the WAL's records back into the buffer, skipping rows whose version a
//! recorded file already holds (they were flushed before the stop), with the row-id
//! counters (resumed from the manifest, the hot files' id columns and the WAL), idempotency
//! keys and access-log entries they carry.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use catalog::{Catalog, DatasetName, MemberId};
use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::{filter_record_batch, max};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;

use super::record::{decode_reads, decode_record};
use super::sequencer::Counters;
use crate::IngestError;
use crate::buffer::Buffer;
use crate::idempotency::Keys;
use crate::schema::{DatasetSchema, ROW_ID, ROW_VERSION, int_column, member_runs};
use crate::wal;
use crate::writelog::WriteLog;

/// What replay rebuilt.
pub(super) struct Replayed {
    pub(super) buffer: Arc<Buffer>,
    /// The manifest's change-feed position the file index was loaded at.
    pub(super) manifest_seq: i64,
    /// The last row id given per (environment, dataset) and member.
    pub(super) counters: Counters,
    /// The highest row version seen: new versions continue above it.
    pub(super) last_version: i64,
    pub(super) schemas: HashMap<DatasetName, Arc<DatasetSchema>>,
    pub(super) keys: Arc<Keys>,
    pub(super) write_log: Arc<WriteLog>,
}

pub(super) async fn replay(
    wal_dir: &Path,
    catalog: &Catalog,
    store: &Arc<dyn ObjectStore>,
    auth: Arc<catalog::cache::AuthCache>,
) -> Result<Replayed, IngestError> {
    let buffer = Arc::new(Buffer::default());
    // The feed's position first: files committed while they load come again, harmlessly.
    let manifest_seq = catalog.manifest_seq().await?;
    let files = catalog.all_parquet_files().await?;
    let mut counters: Counters = HashMap::new();
    // Per member, the newest row version its files hold: every row of the member at or below
    // it is in a file (a flush holds every row sequenced before it began).
    let mut persisted: Counters = HashMap::new();
    let mut last_version = 0i64;
    for (env, dataset, member, max_id, max_version) in catalog.max_row_ids().await? {
        last_version = last_version.max(max_version);
        // Hot files (no member) are read below, member by member: a dataset-wide watermark
        // would skip rows another node's newer versions outran.
        if let Some(member) = member {
            counters.entry((env, dataset.clone())).or_default().insert(member, max_id);
            persisted.entry((env, dataset)).or_default().insert(member, max_version);
        }
    }
    // Hot files do not say which members' rows they hold: their member, id and version
    // columns do (bounded by the hot window, and read a few files at a time).
    let hot: Vec<_> = futures::stream::iter(files.iter().filter(|f| f.member.is_none()))
        .map(|f| async move {
            let ids = crate::persist::hot_file_max_ids(store, &f.path).await?;
            Ok::<_, IngestError>(((f.environment, f.dataset.clone()), ids))
        })
        .buffer_unordered(4)
        .try_collect()
        .await?;
    for (table, ids) in hot {
        for (member, max_id, max_version) in ids {
            let Ok(member) = MemberId::new(member) else { continue };
            let counter = counters.entry(table.clone()).or_default().entry(member).or_insert(0);
            *counter = (*counter).max(max_id);
            let done = persisted.entry(table.clone()).or_default().entry(member).or_insert(0);
            *done = (*done).max(max_version);
        }
    }
    buffer.load_files(files);
    let mut schemas: HashMap<DatasetName, Arc<DatasetSchema>> = HashMap::new();
    let mut replayed = 0usize;
    let mut records = 0usize;
    let keys = Arc::new(Keys::default());
    let write_log = Arc::new(WriteLog::new(wal_dir, auth));
    std::fs::create_dir_all(wal_dir)?;
    // A segment at a time: a WAL that fell behind holds gigabytes.
    for segment in wal::segment_ids(wal_dir)? {
        let dir = wal_dir.to_owned();
        let read = tokio::task::spawn_blocking(move || wal::replay_segment(&dir, segment))
            .await
            .map_err(|e| IngestError::Internal(e.to_string()))??;
        for payload in read.records() {
            records += 1;
            if let Some(entries) = decode_reads(payload)? {
                write_log.reads(segment, entries);
                continue;
            }
            let (header, batches) = decode_record(payload)?;
            if let Some(w) = header.idempotent_write(batches.iter().map(RecordBatch::num_rows).sum()) {
                keys.in_segment(segment, w);
            }
            let schema = match schemas.get(&header.dataset) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(DatasetSchema::new(Arc::new(catalog.dataset(&header.dataset).await?))?);
                    schemas.insert(header.dataset.clone(), s.clone());
                    s
                }
            };
            for batch in batches {
                let ids = int_column(&batch, ROW_ID)?;
                let versions = int_column(&batch, ROW_VERSION)?;
                last_version = last_version.max(max(versions).unwrap_or(0));
                let table = (header.env, header.dataset.clone());
                let mut keep = Vec::with_capacity(batch.num_rows());
                for (member, start, len) in member_runs(&batch)? {
                    let Ok(member) = MemberId::new(member) else {
                        keep.extend(std::iter::repeat_n(false, len));
                        continue;
                    };
                    let done = persisted.get(&table).and_then(|t| t.get(&member)).copied().unwrap_or(0);
                    let most = max(&ids.slice(start, len)).unwrap_or(0);
                    let counter = counters.entry(table.clone()).or_default().entry(member).or_insert(0);
                    *counter = (*counter).max(most);
                    // Rows whose version is in a recorded file were flushed before the crash
                    // (a flush holds every row of its dataset sequenced before it began).
                    keep.extend(versions.values()[start..start + len].iter().map(|v| *v > done));
                }
                let fresh = filter_record_batch(&batch, &BooleanArray::from(keep))?;
                if fresh.num_rows() > 0 {
                    replayed += fresh.num_rows();
                    let runs = member_runs(&fresh)?;
                    let bytes = fresh.get_array_memory_size();
                    buffer.insert_runs(header.env, &schema, &fresh, &runs, segment, bytes);
                }
            }
        }
    }
    if replayed > 0 {
        tracing::info!(rows = replayed, records, "replayed the WAL");
    }
    Ok(Replayed { buffer, manifest_seq, counters, last_version, schemas, keys, write_log })
}
