//! Acknowledged rows not yet in Parquet: Arrow batches per (environment, dataset, member)
//! under one global byte budget, each chunk tagged with the WAL segment that holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use catalog::{DataEnvironment, DatasetName, MemberId};
use datafusion::arrow::array::RecordBatch;

use crate::schema::DatasetSchema;

/// One member's rows of one dataset in one environment: the unit of flushing and of
/// Parquet files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    pub env: DataEnvironment,
    pub dataset: DatasetName,
    pub member: MemberId,
}

#[derive(Debug)]
struct Chunk {
    batch: RecordBatch,
    segment: u64,
    bytes: usize,
}

#[derive(Debug)]
struct Partition {
    schema: Arc<DatasetSchema>,
    chunks: Vec<Chunk>,
    bytes: usize,
    /// When the oldest unflushed chunk arrived: flushing by age keeps the WAL short.
    oldest: Instant,
    /// Leading chunks being written to Parquet right now.
    flushing: usize,
}

/// The rows of a partition handed to a flush.
#[derive(Debug)]
pub struct FlushBatch {
    pub key: PartitionKey,
    pub schema: Arc<DatasetSchema>,
    pub batches: Vec<RecordBatch>,
    chunks: usize,
}

#[derive(Debug, Default)]
struct State {
    partitions: HashMap<PartitionKey, Partition>,
    bytes: usize,
}

/// The buffer. Every method takes the lock briefly; no I/O happens under it.
#[derive(Debug, Default)]
pub struct Buffer {
    state: Mutex<State>,
}

impl Buffer {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // loses rows (every update is a push or a drain), so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds acknowledged rows. `bytes` is the rows' share of their batch's memory.
    pub fn insert(&self, key: PartitionKey, schema: &Arc<DatasetSchema>, batch: RecordBatch, segment: u64, bytes: usize) {
        let mut state = self.state();
        state.bytes += bytes;
        let p = state.partitions.entry(key).or_insert_with(|| Partition {
            schema: schema.clone(),
            chunks: Vec::new(),
            bytes: 0,
            oldest: Instant::now(),
            flushing: 0,
        });
        if p.chunks.is_empty() {
            p.oldest = Instant::now();
        }
        p.bytes += bytes;
        p.chunks.push(Chunk { batch, segment, bytes });
    }

    /// Bytes of buffered rows.
    pub fn bytes(&self) -> usize {
        self.state().bytes
    }

    /// Partitions due for a flush: older than `max_age` or larger than `max_bytes`, and
    /// then, while the buffer is above `soft_bytes`, the largest ones first.
    pub fn due(&self, max_age: std::time::Duration, max_bytes: usize, soft_bytes: usize) -> Vec<PartitionKey> {
        let state = self.state();
        let now = Instant::now();
        let mut idle: Vec<(&PartitionKey, &Partition)> = Vec::new();
        let mut due = Vec::new();
        for (k, p) in &state.partitions {
            if p.chunks.len() == p.flushing {
                continue;
            }
            if now.duration_since(p.oldest) >= max_age || p.bytes >= max_bytes {
                due.push(k.clone());
            } else {
                idle.push((k, p));
            }
        }
        let mut over = state.bytes.saturating_sub(soft_bytes);
        if over > 0 {
            idle.sort_by_key(|(_, p)| std::cmp::Reverse(p.bytes));
            for (k, p) in idle {
                if over == 0 {
                    break;
                }
                over = over.saturating_sub(p.bytes);
                due.push(k.clone());
            }
        }
        due
    }

    /// Hands the partition's rows to a flush; they stay readable until [`Buffer::end_flush`].
    pub fn begin_flush(&self, key: &PartitionKey) -> Option<FlushBatch> {
        let mut state = self.state();
        let p = state.partitions.get_mut(key)?;
        if p.flushing > 0 || p.chunks.is_empty() {
            return None;
        }
        p.flushing = p.chunks.len();
        Some(FlushBatch {
            key: key.clone(),
            schema: p.schema.clone(),
            batches: p.chunks.iter().map(|c| c.batch.clone()).collect(),
            chunks: p.flushing,
        })
    }

    /// Ends a flush: on success the flushed rows leave the buffer (they are in a recorded
    /// file now); on failure they stay and a later flush retries.
    pub fn end_flush(&self, flush: &FlushBatch, persisted: bool) {
        let mut state = self.state();
        let Some(p) = state.partitions.get_mut(&flush.key) else { return };
        p.flushing = 0;
        if !persisted {
            return;
        }
        let freed: usize = p.chunks.drain(..flush.chunks).map(|c| c.bytes).sum();
        p.bytes -= freed;
        p.oldest = Instant::now();
        if p.chunks.is_empty() {
            state.partitions.remove(&flush.key);
        }
        state.bytes -= freed;
    }

    /// The oldest WAL segment holding buffered rows: every older segment may be deleted.
    pub fn min_segment(&self) -> Option<u64> {
        self.state().partitions.values().flat_map(|p| p.chunks.iter().map(|c| c.segment)).min()
    }

    /// Every partition with buffered rows.
    pub fn keys(&self) -> Vec<PartitionKey> {
        self.state().partitions.keys().cloned().collect()
    }

    /// Buffered rows of one partition (for reads: fresh rows before they are flushed).
    pub fn rows(&self, key: &PartitionKey) -> Vec<RecordBatch> {
        self.state().partitions.get(key).map(|p| p.chunks.iter().map(|c| c.batch.clone()).collect()).unwrap_or_default()
    }
}
