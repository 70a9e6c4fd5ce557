//! The flusher: a task that, every tick, writes each due dataset's rows as one hot Parquet
//! file and records it in the manifest, follows the manifest's change feed (other nodes' files),
//! and drops WAL segments once no buffered row needs them (their idempotency keys and
//! access-log entries moved to the catalog first). Beside it, the compactor's task runs
//! compaction rounds and collects unrecorded objects.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::FutureExt;

use super::sequencer::Command;
use super::{Ingester, stop_on_panic};
use crate::IngestError;
use crate::buffer::FlushBatch;
use crate::wal;

impl Ingester {
    pub(super) async fn flush_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.flush_tick) => {},
                _ = stop.changed() => return,
            }
            let round = async {
                self.flush_round(false).await;
                if let Err(e) = self.follow_manifest().await {
                    tracing::warn!(error = %e, "could not read the manifest's changes; retrying");
                }
                let buffered = self.buffer.bytes();
                self.pressure.set(buffered >= self.config.buffer_soft_bytes);
                metrics::gauge!("trove_ingest_buffer_bytes").set(buffered as f64);
                metrics::gauge!("trove_process_resident_bytes").set(self.resident.bytes() as f64);
                metrics::gauge!("trove_ingest_files").set(self.buffer.file_count() as f64);
            };
            if std::panic::AssertUnwindSafe(round).catch_unwind().await.is_err() {
                stop_on_panic("the flusher");
            }
        }
    }

    /// The compactor: a task of its own, so that merging and settling hot files (seconds of
    /// background work) never hold up a flush; and the collector of unrecorded objects.
    pub(super) async fn compact_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut last_compaction = Instant::now();
        let mut last_collection: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.flush_tick) => {},
                _ = stop.changed() => return,
            }
            let round = async {
                if last_compaction.elapsed() >= self.config.compact_interval {
                    last_compaction = Instant::now();
                    if let Err(e) = self.compact_round().await {
                        tracing::warn!(error = %e, "compaction failed; it retries on its next round");
                    }
                }
                if last_collection.is_none_or(|at| at.elapsed() >= COLLECT_EVERY) {
                    last_collection = Some(Instant::now());
                    let now = self.catalog.clock().now_ms();
                    match crate::collect::collect(&self.store, &self.catalog, &self.compactor, now).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "deleted objects the manifest does not name"),
                        Err(e) => {
                            tracing::warn!(error = %e, "collecting unrecorded objects failed; retrying in an hour")
                        }
                    }
                }
            };
            if std::panic::AssertUnwindSafe(round).catch_unwind().await.is_err() {
                stop_on_panic("the compactor");
            }
        }
    }

    /// Brings the read index up to the manifest: files other nodes flushed or compacted.
    /// This node's own flushes and compactions come back too, and are left to the index
    /// updates that follow their commits (see `Buffer::claim`).
    pub async fn follow_manifest(&self) -> Result<(), IngestError> {
        let behind = self.manifest_synced.lock().elapsed() > MANIFEST_RELOAD_AFTER;
        if behind {
            // Tombstones this node has not seen may be purged: reload the whole manifest.
            let seq = self.catalog.manifest_seq().await?;
            self.buffer.replace_files(self.catalog.all_parquet_files().await?);
            self.manifest_seq.store(seq, Ordering::Release);
            tracing::info!("reloaded the file index from the manifest");
        } else {
            let since = self.manifest_seq.load(Ordering::Acquire);
            let changes = self.catalog.manifest_changes(since).await?;
            if changes.latest != since {
                self.buffer.apply_manifest(changes.added, &changes.removed);
                self.manifest_seq.store(changes.latest, Ordering::Release);
            }
        }
        *self.manifest_synced.lock() = Instant::now();
        Ok(())
    }

    /// One compaction pass; returns how many files were merged away.
    pub async fn compact_round(&self) -> Result<usize, IngestError> {
        self.compactor
            .run(&self.catalog, &self.store, &self.buffer, &|d| self.schema(d), self.catalog.clock().now_secs())
            .await
    }

    /// Settles every hot file into per-member files now, whatever its age, one step of
    /// each dataset per call (tests and benchmarks of the settled layout; an operator who
    /// wants every file under its member's prefix). Returns how many hot files it replaced.
    pub async fn settle_hot_files(&self) -> Result<usize, IngestError> {
        self.compactor.rewrite_hot(&self.catalog, &self.store, &self.buffer, &|d| self.schema(d), i64::MAX).await
    }

    /// Flushes due datasets (or all: every buffered row, in as many files as the flush cap
    /// takes), then deletes WAL segments no buffered row needs. Returns how many files
    /// failed to be written or recorded.
    pub async fn flush_round(&self, all: bool) -> usize {
        let tables = if all {
            self.buffer.keys()
        } else {
            self.buffer.due(self.config.flush_age, self.config.flush_bytes, self.config.buffer_soft_bytes)
        };
        let mut failed = 0;
        for (env, dataset) in tables {
            loop {
                let Some(flush) = self.buffer.begin_flush(env, &dataset, self.config.flush_bytes) else {
                    // The flusher's own round is flushing it while a caller flushes
                    // everything: that caller waits for it, then takes what is left.
                    if all && self.buffer.is_flushing(env, &dataset) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    break;
                };
                let partial = flush.partial();
                let f = self.flush(flush).await;
                failed += f;
                // A due dataset gets one file a round (the next tick takes the rest), so that
                // rows arriving meanwhile never keep the flusher from its other work.
                if f > 0 || !all || !partial {
                    break;
                }
            }
        }
        metrics::counter!("trove_ingest_flushes_total", "result" => "error").increment(failed as u64);
        self.storage_failing.store(failed > 0, Ordering::Relaxed);
        // Read the writer's segment before the buffer's oldest: rows are buffered before the
        // writer moves to a newer segment, so no needed segment can slip between the reads.
        let current = self.current_segment.load(Ordering::Acquire);
        let keep_from = self.buffer.min_segment().map_or(current, |m| m.min(current));
        // Keys and access-log entries of the records about to go must be in the catalog first.
        // They move about once a second, not every round: the access log's member index
        // takes a page write per member read, so a second of reads across the same members
        // costs about what one read does.
        {
            let mut moved = self.catalog_moved.lock();
            // The first round after a start moves at once: a server restarted often must
            // still trim the WAL it replayed.
            if !all && moved.is_some_and(|at| at.elapsed() < CATALOG_MOVE_EVERY) {
                return failed;
            }
            *moved = Some(Instant::now());
        }
        if let Err(e) = self.keys.persist_below(&self.catalog, keep_from, self.catalog.clock().now_ms()).await {
            tracing::warn!(error = %e, "could not save idempotency keys; keeping the WAL segments");
            return failed;
        }
        if let Err(e) = self.write_log.persist_below(&self.catalog, keep_from).await {
            tracing::warn!(error = %e, "could not write the access log; keeping the WAL segments");
            return failed;
        }
        let dir = self.config.wal_dir.clone();
        match tokio::task::spawn_blocking(move || wal::remove_below(&dir, keep_from)).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(removed = n, "dropped persisted WAL segments"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not drop WAL segments"),
            _ => {}
        }
        // Everything acknowledged is in Parquet: close the segment so the next round can
        // drop it (and move its access-log entries and keys to the catalog).
        if self.buffer.min_segment().is_none()
            && let Some(tx) = self.sequencer.lock().as_ref()
        {
            let _ = tx.send(Command::Rotate);
        }
        failed
    }

    /// Writes a dataset's flush as one hot file (every member's rows, sorted by member:
    /// one put and one catalog row however many members wrote), records it and ends the
    /// flush. Returns 1 if the file failed; then the rows stay buffered (and in the WAL) for
    /// the next round.
    async fn flush(&self, flush: FlushBatch) -> usize {
        let now = self.catalog.clock().now_ms();
        let written = async {
            let file =
                crate::persist::write_hot_file(&self.store, flush.env, &flush.schema, flush.batches(), now).await?;
            self.buffer.claim([file.path.clone()]);
            if let Err(e) =
                crate::persist::commit(&self.store, &self.catalog, std::slice::from_ref(&file), &[], None).await
            {
                self.buffer.release([&file.path]);
                return Err(e);
            }
            Ok::<_, IngestError>(file)
        };
        match written.await {
            Ok(file) => {
                metrics::counter!("trove_ingest_flushes_total", "result" => "success").increment(1);
                metrics::counter!("trove_ingest_flushed_rows_total").increment(flush.rows() as u64);
                self.buffer.end_flush(&flush, Some(&file));
                0
            }
            Err(e) => {
                tracing::warn!(error = %e, dataset = %flush.dataset, "flush failed; the rows stay buffered and in the WAL");
                self.buffer.end_flush(&flush, None);
                1
            }
        }
    }
}

/// A node that has not followed the manifest's change feed for this long reloads the whole
/// manifest, because tombstones are purged after [`crate::compact::TOMBSTONES_KEPT_MS`].
const MANIFEST_RELOAD_AFTER: Duration = Duration::from_secs(3600);

/// How often the flusher deletes objects the manifest does not name (it lists the store),
/// the first time on its first round.
const COLLECT_EVERY: Duration = Duration::from_secs(3600);

/// How often flush rounds move keys and access-log entries of closed WAL segments to the
/// catalog (and drop those segments); a forced round always does.
const CATALOG_MOVE_EVERY: Duration = Duration::from_secs(1);
