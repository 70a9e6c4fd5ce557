//! `Idempotency-Key`: scoped to the writing connection, remembered for 24 hours and across
//! restarts. The key travels in the WAL record with its batch, so replay restores it with the
//! rows: a retry after a crash finds the first answer instead of storing the rows again.
//! When a WAL segment is deleted its keys move to the catalog first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use catalog::{Catalog, ConnectionId, IdempotentWrite};

use crate::IngestError;

/// How long a key is remembered.
pub const RETENTION_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone)]
enum Entry {
    InFlight,
    Done(IdempotentWrite),
}

/// What makes two writes "the same body": dataset, content type and bytes.
pub fn body_hash(dataset: &catalog::DatasetName, content_type: &str, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(dataset.as_str());
    h.update([0]);
    h.update(content_type);
    h.update([0]);
    h.update(body);
    hex::encode(h.finalize())
}

/// What to do with a write that carries a key.
#[derive(Debug)]
pub enum Decision {
    /// First time: go ahead, then [`Claim::complete`].
    Proceed(Claim),
    /// Seen with the same body: answer as the first time.
    Replay { accepted: i64 },
}

/// The keys this node knows: in flight, answered and still in the WAL.
#[derive(Debug, Default)]
pub struct Keys {
    entries: Mutex<HashMap<(ConnectionId, String), Entry>>,
    /// Answered keys by the WAL segment holding their record.
    by_segment: Mutex<BTreeMap<u64, Vec<IdempotentWrite>>>,
}

/// A key reserved for one in-flight write; dropping it without completing frees the key.
#[derive(Debug)]
pub struct Claim {
    keys: Arc<Keys>,
    id: (ConnectionId, String),
    body_hash: String,
    done: bool,
}

impl Claim {
    pub fn key(&self) -> &str {
        &self.id.1
    }
    pub fn body_hash(&self) -> &str {
        &self.body_hash
    }
    /// Records the answer (the WAL already holds it).
    pub fn complete(mut self, accepted: i64, at: i64) {
        let write = IdempotentWrite {
            connection: self.id.0,
            key: self.id.1.clone(),
            body_hash: self.body_hash.clone(),
            accepted,
            at,
        };
        self.keys.lock().insert(self.id.clone(), Entry::Done(write));
        self.done = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.done {
            let mut entries = self.keys.lock();
            if matches!(entries.get(&self.id), Some(Entry::InFlight)) {
                entries.remove(&self.id);
            }
        }
    }
}

impl Keys {
    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<(ConnectionId, String), Entry>> {
        self.entries.lock()
    }

    /// Checks a key: 409 while the first write is in flight, 422 for another body.
    pub async fn begin(
        self: &Arc<Self>,
        catalog: &Catalog,
        connection: ConnectionId,
        key: &str,
        body_hash: &str,
        now: i64,
    ) -> Result<Decision, IngestError> {
        if key.is_empty() || key.len() > 255 {
            return Err(IngestError::Malformed("Idempotency-Key must be 1-255 characters".into()));
        }
        let id = (connection, key.to_owned());
        let known = self.lock().get(&id).cloned();
        let known = match known {
            Some(e) => Some(e),
            None => catalog.idempotent_write(connection, key, now - RETENTION_MS).await?.map(Entry::Done),
        };
        match known {
            Some(Entry::InFlight) => Err(IngestError::InFlight),
            Some(Entry::Done(w)) if w.body_hash == body_hash && w.at >= now - RETENTION_MS => {
                Ok(Decision::Replay { accepted: w.accepted })
            }
            Some(Entry::Done(w)) if w.at >= now - RETENTION_MS => Err(IngestError::KeyReused),
            _ => {
                let mut entries = self.lock();
                // Another request may have claimed (or answered) it while the catalog was
                // asked; its client's retry will get the answer.
                let expired = matches!(entries.get(&id), Some(Entry::Done(w)) if w.at < now - RETENTION_MS);
                if entries.contains_key(&id) && !expired {
                    return Err(IngestError::InFlight);
                }
                entries.insert(id.clone(), Entry::InFlight);
                Ok(Decision::Proceed(Claim { keys: self.clone(), id, body_hash: body_hash.to_owned(), done: false }))
            }
        }
    }

    /// A write's record is in `segment` (called by the sequencer and by replay).
    pub fn in_segment(&self, segment: u64, write: IdempotentWrite) {
        self.lock().insert((write.connection, write.key.clone()), Entry::Done(write.clone()));
        self.by_segment.lock().entry(segment).or_default().push(write);
    }

    /// Moves the keys of segments below `keep_from` to the catalog, before those segments
    /// are deleted, and forgets expired ones.
    pub async fn persist_below(&self, catalog: &Catalog, keep_from: u64, now: i64) -> Result<(), IngestError> {
        let moving: Vec<(u64, Vec<IdempotentWrite>)> = {
            let by_segment = self.by_segment.lock();
            by_segment.range(..keep_from).map(|(s, w)| (*s, w.clone())).collect()
        };
        if moving.is_empty() {
            return Ok(());
        }
        let writes: Vec<IdempotentWrite> = moving.iter().flat_map(|(_, w)| w.iter().cloned()).collect();
        fail::fail_point!("idempotency-record", |_| Err(IngestError::Unavailable(
            "failpoint idempotency-record".into()
        )));
        catalog.remember_idempotent_writes(&writes).await?;
        {
            let mut by_segment = self.by_segment.lock();
            for (segment, _) in &moving {
                by_segment.remove(segment);
            }
        }
        self.lock().retain(|_, e| !matches!(e, Entry::Done(w) if w.at < now - RETENTION_MS));
        catalog.forget_idempotent_writes(now - 2 * RETENTION_MS).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: i64) -> ConnectionId {
        ConnectionId::new(id).unwrap()
    }

    #[tokio::test]
    async fn in_flight_conflicts_and_answers_replay() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::connect(&Catalog::sqlite_url(&dir.path().join("c.db"))).await.unwrap();
        let keys = Arc::new(Keys::default());
        let now = 1_000_000_000_000;
        let Decision::Proceed(claim) = keys.begin(&catalog, conn(1), "k", "h1", now).await.unwrap() else { panic!() };
        assert!(
            matches!(keys.begin(&catalog, conn(1), "k", "h1", now).await, Err(IngestError::InFlight)),
            "409 while in flight"
        );
        assert!(
            matches!(keys.begin(&catalog, conn(2), "k", "h1", now).await, Ok(Decision::Proceed(_))),
            "keys are per connection"
        );
        claim.complete(5, now);
        assert!(matches!(keys.begin(&catalog, conn(1), "k", "h1", now).await, Ok(Decision::Replay { accepted: 5 })));
        assert!(matches!(keys.begin(&catalog, conn(1), "k", "h2", now).await, Err(IngestError::KeyReused)));
        // A failed write frees its key for a retry.
        let Decision::Proceed(claim) = keys.begin(&catalog, conn(1), "other", "h", now).await.unwrap() else {
            panic!()
        };
        drop(claim);
        assert!(matches!(keys.begin(&catalog, conn(1), "other", "h", now).await, Ok(Decision::Proceed(_))));
        // After 24 hours a key may be used again.
        assert!(matches!(
            keys.begin(&catalog, conn(1), "k", "h2", now + RETENTION_MS + 1).await,
            Ok(Decision::Proceed(_))
        ));
        // Keys moved to the catalog are still found by a node that never saw them.
        keys.in_segment(
            3,
            IdempotentWrite { connection: conn(7), key: "moved".into(), body_hash: "h".into(), accepted: 9, at: now },
        );
        keys.persist_below(&catalog, 4, now).await.unwrap();
        let fresh = Arc::new(Keys::default());
        assert!(matches!(
            fresh.begin(&catalog, conn(7), "moved", "h", now).await,
            Ok(Decision::Replay { accepted: 9 })
        ));
    }
}
