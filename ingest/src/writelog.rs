//! The access log of bulk writes, aggregated per (connection, member, dataset, minute) as
//! docs/api.md ("Storage layout") allows, and of reads, one entry per request and member. The WAL record of a
//! write, or of a read's entries, is their durable entry; they move to the catalog's access
//! log just before their WAL segment is deleted.
//!
//! Write counts are read back from the segments as they move, so nothing per member is held
//! between moves: a map per segment of every member that wrote in it held about 100 MiB a
//! segment at a million members, and a dozen segments wait for their flush.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use catalog::{
    AccessAction, AccessDecision, AccessEvent, AccessLogEntry, AgreementVersion, Catalog, ConnectionId, DatasetName,
    MemberId,
};

use crate::IngestError;
use crate::ingester::record::{decode_record, is_reads};
use crate::schema::member_runs;
use crate::wal::{self, SegmentRecords};
use catalog::MemberMap;
use catalog::cache::AuthCache;

/// (connection, dataset, minute).
type Key = (ConnectionId, DatasetName, i64);

/// The access log's entries waiting in the WAL.
#[derive(Debug)]
pub struct WriteLog {
    /// The WAL directory: its closed segments are read for their writes as they move.
    dir: PathBuf,
    /// Segments below this have their writes in the catalog (their files may outlive that
    /// when deleting them failed). Held while writes move: two flush rounds at once (a
    /// caller's flush of everything and the flusher's own) must not count a segment twice.
    moved_below: tokio::sync::Mutex<u64>,
    /// Read entries by the WAL segment holding them, a run per read (kept as they came: one
    /// growing list was reallocated, and copied, on the WAL thread).
    reads: Mutex<BTreeMap<u64, Vec<Vec<AccessLogEntry>>>>,
    /// Members' agreement versions per connection, kept while the catalog's authorization
    /// generation stands: read anew every second, a connection with a million members cost
    /// the flusher seconds each time.
    agreements: Arc<AuthCache>,
}

impl WriteLog {
    /// The log of the WAL in `dir`, naming versions through the node's `agreements` cache.
    pub fn new(dir: &Path, agreements: Arc<AuthCache>) -> WriteLog {
        WriteLog { dir: dir.to_owned(), moved_below: tokio::sync::Mutex::new(0), reads: Mutex::default(), agreements }
    }

    /// Read entries made durable in `segment`.
    pub fn reads(&self, segment: u64, entries: Vec<AccessLogEntry>) {
        self.reads.lock().entry(segment).or_default().push(entries);
    }

    /// A member's read entries not yet in the catalog.
    pub fn pending_reads(&self, member: MemberId) -> Vec<AccessLogEntry> {
        let reads = self.reads.lock();
        reads.values().flatten().flatten().filter(|e| e.member == Some(member)).cloned().collect()
    }

    /// Writes the read entries and write counts of segments below `keep_from` to the
    /// catalog's access log (writes under each member's agreement in force now). On failure
    /// what did not commit stays, and so do the segments.
    pub async fn persist_below(&self, catalog: &Catalog, keep_from: u64) -> Result<(), IngestError> {
        let reads: BTreeMap<u64, Vec<Vec<AccessLogEntry>>> = {
            let mut by_segment = self.reads.lock();
            let keep = by_segment.split_off(&keep_from);
            std::mem::replace(&mut *by_segment, keep)
        };
        // A transaction per segment: a second of reads across 10,000 members is hundreds of
        // thousands of entries, moved without copying them; what committed is not retried.
        let mut segments = reads.into_iter();
        while let Some((segment, entries)) = segments.next() {
            let runs: Vec<&[AccessLogEntry]> = entries.iter().map(Vec::as_slice).collect();
            if let Err(e) = catalog.record_access_runs(&runs).await {
                let mut reads = self.reads.lock();
                reads.insert(segment, entries);
                reads.extend(segments);
                return Err(e.into());
            }
        }
        let mut moved_below = self.moved_below.lock().await;
        let from = *moved_below;
        if from >= keep_from {
            return Ok(());
        }
        let dir = self.dir.clone();
        let counts = tokio::task::spawn_blocking(move || count_writes(&dir, from..keep_from))
            .await
            .map_err(|e| IngestError::Internal(e.to_string()))??;
        if !counts.is_empty() {
            let (shared, members) = self.to_events(catalog, counts).await?;
            let events: Vec<AccessEvent<'_>> =
                shared.iter().zip(members).map(|(shared, members)| AccessEvent { shared, members }).collect();
            fail::fail_point!("access-log-record", |_| Err(IngestError::Unavailable(
                "failpoint access-log-record".into()
            )));
            catalog.record_access_events(&events).await?;
        }
        *moved_below = keep_from;
        Ok(())
    }

    /// One event per (connection, dataset, minute) and purpose: the members share it, each
    /// with its agreement version and rows.
    #[allow(clippy::type_complexity)]
    async fn to_events(
        &self,
        catalog: &Catalog,
        counts: BTreeMap<Key, MemberMap<i64>>,
    ) -> Result<(Vec<AccessLogEntry>, Vec<Vec<(MemberId, Option<AgreementVersion>, i64)>>), IngestError> {
        let mut shared = Vec::new();
        let mut members = Vec::new();
        let mut connections = HashMap::new();
        self.agreements.refresh(catalog).await?;
        for ((connection, dataset, minute), counts) in counts {
            if let std::collections::hash_map::Entry::Vacant(e) = connections.entry(connection) {
                let c = catalog.connection(connection).await?;
                e.insert((c, self.agreements.agreements(catalog, connection).await?));
            }
            let (c, versions) = &connections[&connection];
            let mut rows: Vec<(MemberId, i64)> = counts.into_iter().collect();
            rows.sort_unstable();
            // The event of each agreement version; versions with the same purpose share one.
            let mut event_of: HashMap<Option<AgreementVersion>, usize> = HashMap::new();
            let mut by_purpose: HashMap<String, usize> = HashMap::new();
            for (member, n) in rows {
                let version = versions.get(member);
                let event = match event_of.get(&version) {
                    Some(&event) => event,
                    None => {
                        let terms = version.and_then(|v| c.revision(v)).or_else(|| c.approved()).map(|r| &r.terms);
                        let purpose = terms.map(|t| t.purposes.join("; ")).unwrap_or_default();
                        let event = *by_purpose.entry(purpose.clone()).or_insert_with(|| {
                            shared.push(AccessLogEntry {
                                at: minute * 60_000,
                                member: None,
                                subscriber_id: c.subscriber_id,
                                connection_id: c.id,
                                agreement_version: None,
                                purpose,
                                dataset: dataset.to_string(),
                                action: AccessAction::Write,
                                rows: 0,
                                decision: AccessDecision::Allowed,
                            });
                            members.push(Vec::new());
                            shared.len() - 1
                        });
                        event_of.insert(version, event);
                        event
                    }
                };
                members[event].push((member, version, n));
            }
        }
        Ok((shared, members))
    }
}

/// Rows written per (connection, dataset, minute) and member in the segments `ids` (those
/// still on disk), except writes the access log already has.
fn count_writes(dir: &Path, ids: std::ops::Range<u64>) -> Result<BTreeMap<Key, MemberMap<i64>>, IngestError> {
    let mut counts: BTreeMap<Key, MemberMap<i64>> = BTreeMap::new();
    for id in wal::segment_ids(dir)?.into_iter().filter(|id| ids.contains(id)) {
        let segment = SegmentRecords::read(dir, id)?;
        for payload in segment.records() {
            if is_reads(payload) {
                continue;
            }
            let (header, batches) = decode_record(payload)?;
            if header.logged {
                continue;
            }
            let counts = counts.entry((header.connection, header.dataset, header.at.div_euclid(60_000))).or_default();
            for batch in &batches {
                for (member, _, rows) in member_runs(batch)? {
                    if let Ok(member) = MemberId::new(member) {
                        *counts.entry(member).or_default() += rows as i64;
                    }
                }
            }
        }
    }
    Ok(counts)
}
