//! Objects nobody records. A crash between a flush's put and its manifest commit, or during
//! compaction's grace period before it deletes the files it replaced, leaves objects the
//! manifest does not name: they cost storage, and an outside reader of the bucket (DuckDB
//! over every file) would see their rows twice. The collector deletes them once they are
//! older than a grace period and were not replaced within it, so the store holds exactly
//! what the manifest names. It runs on the compactor's task, after that round's compaction;
//! a flush's put waiting for its commit meanwhile is far younger than the grace period.

use std::collections::HashSet;
use std::sync::Arc;

use catalog::Catalog;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;

use crate::IngestError;
use crate::compact::Compactor;
use crate::partition::is_data_file;

/// Deletes the unrecorded Parquet objects of the store older than the compactor's
/// `orphan_grace` (at `now_ms`, epoch ms); returns how many.
pub(crate) async fn collect(
    store: &Arc<dyn ObjectStore>,
    catalog: &Catalog,
    compactor: &Compactor,
    now_ms: i64,
) -> Result<usize, IngestError> {
    let grace_ms = i64::try_from(compactor.config().orphan_grace.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms.saturating_sub(grace_ms);
    // List first, then read the manifest: a file committed in between is in the manifest.
    let listed: Vec<object_store::ObjectMeta> = store.list(None).try_collect().await?;
    let mut recorded: HashSet<String> = catalog.all_parquet_files().await?.into_iter().map(|f| f.path).collect();
    // Files replaced within the grace period may still be read by plans made before.
    recorded.extend(catalog.replaced_since(cutoff).await?);
    let garbage: Vec<object_store::Result<Path>> = listed
        .into_iter()
        .filter(|meta| {
            let path = meta.location.as_ref();
            is_data_file(path)
                && meta.last_modified.timestamp_millis() <= cutoff
                && !recorded.contains(path)
                && !compactor.is_doomed(path)
        })
        .map(|meta| Ok(meta.location))
        .collect();
    // In bulk: one request per thousand objects on S3, concurrent deletes elsewhere.
    let mut deleted = 0;
    let mut results = store.delete_stream(futures::stream::iter(garbage).boxed());
    while let Some(result) = results.next().await {
        match result {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
            Err(e) => return Err(e.into()),
        }
    }
    metrics::counter!("trove_ingest_collections_total").increment(1);
    metrics::counter!("trove_ingest_orphans_deleted_total").increment(deleted as u64);
    Ok(deleted)
}
