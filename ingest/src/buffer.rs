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
    /// Buffered chunks per WAL segment, so the oldest needed segment is found at once.
    segments: std::collections::BTreeMap<u64, usize>,
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
        *state.segments.entry(segment).or_default() += 1;
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
        let mut freed = 0;
        let mut segments = Vec::with_capacity(flush.chunks);
        for c in p.chunks.drain(..flush.chunks) {
            freed += c.bytes;
            segments.push(c.segment);
        }
        p.bytes -= freed;
        p.oldest = Instant::now();
        if p.chunks.is_empty() {
            state.partitions.remove(&flush.key);
        }
        state.bytes -= freed;
        for segment in segments {
            if let std::collections::btree_map::Entry::Occupied(mut e) = state.segments.entry(segment) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }

    /// The oldest WAL segment holding buffered rows: every older segment may be deleted.
    pub fn min_segment(&self) -> Option<u64> {
        self.state().segments.keys().next().copied()
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    #[test]
    fn the_oldest_needed_segment_follows_flushes() {
        let d = catalog::builtin_datasets().into_iter().find(|d| d.name.as_str() == "ds_energy_consumption").unwrap();
        let schema = Arc::new(DatasetSchema::new(Arc::new(d)));
        let batch = |n: i64| {
            let cols = schema.stored.fields().iter().map(|f| datafusion::arrow::array::new_null_array(f.data_type(), 1)).collect::<Vec<_>>();
            let mut cols = cols;
            cols[0] = Arc::new(Int64Array::from(vec![n]));
            cols[1] = Arc::new(Int64Array::from(vec![0]));
            cols[2] = Arc::new(Int64Array::from(vec![n]));
            RecordBatch::try_new(schema.stored.clone(), cols).unwrap()
        };
        let key = |m: i64| PartitionKey { env: DataEnvironment::Production, dataset: schema.dataset.name.clone(), member: MemberId::new(m).unwrap() };
        let buffer = Buffer::default();
        buffer.insert(key(1), &schema, batch(1), 3, 10);
        buffer.insert(key(2), &schema, batch(2), 4, 10);
        buffer.insert(key(1), &schema, batch(3), 5, 10);
        assert_eq!((buffer.min_segment(), buffer.bytes()), (Some(3), 30));
        let flush = buffer.begin_flush(&key(1)).unwrap();
        assert!(buffer.begin_flush(&key(1)).is_none(), "one flush at a time");
        buffer.end_flush(&flush, false);
        assert_eq!(buffer.min_segment(), Some(3), "a failed flush keeps the rows and their segment");
        let flush = buffer.begin_flush(&key(1)).unwrap();
        buffer.insert(key(1), &schema, batch(4), 6, 10);
        buffer.end_flush(&flush, true);
        assert_eq!((buffer.min_segment(), buffer.bytes()), (Some(4), 20), "rows that arrived during the flush stay");
        assert_eq!(buffer.rows(&key(1)).len(), 1);
        let flush = buffer.begin_flush(&key(2)).unwrap();
        buffer.end_flush(&flush, true);
        assert_eq!(buffer.min_segment(), Some(6));
    }
}
