//! The access log of bulk writes, aggregated per (connection, member, dataset, minute) as
//! docs/api.md ("Storage layout") allows, and of reads, one entry per request and member. The WAL record of a
//! write, or of a read's entries, is their durable entry; they move to the catalog's access
//! log just before their WAL segment is deleted.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};

use catalog::{AccessAction, AccessDecision, AccessLogEntry, Catalog, ConnectionId, DatasetName, MemberId};

use crate::IngestError;
use catalog::MemberMap;

/// (connection, dataset, minute).
type Key = (ConnectionId, DatasetName, i64);

/// Row counts per (connection, dataset, minute) and member, by the WAL segment holding them.
#[derive(Debug, Default)]
pub struct WriteLog {
    by_segment: Mutex<BTreeMap<u64, HashMap<Key, MemberMap<i64>>>>,
    /// Read entries by the WAL segment holding them, a run per read (kept as they came: one
    /// growing list was reallocated, and copied, on the WAL thread).
    reads: Mutex<BTreeMap<u64, Vec<Vec<AccessLogEntry>>>>,
    /// Members' agreement versions per connection, kept while the catalog's authorization
    /// generation stands: read anew every second, a connection with a million members cost
    /// the flusher seconds each time.
    agreements: catalog::cache::AuthCache,
}

impl WriteLog {
    /// Counts `rows` written for each member run of a record in `segment`.
    pub fn record(
        &self,
        segment: u64,
        connection: ConnectionId,
        dataset: &DatasetName,
        at_ms: i64,
        members: &[(i64, usize)],
    ) {
        let mut by_segment = self.by_segment.lock();
        let counts = by_segment
            .entry(segment)
            .or_default()
            .entry((connection, dataset.clone(), at_ms.div_euclid(60_000)))
            .or_default();
        for (member, rows) in members {
            if let Ok(member) = MemberId::new(*member) {
                *counts.entry(member).or_default() += *rows as i64;
            }
        }
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

    /// Writes the aggregates and read entries of segments below `keep_from` to the catalog's
    /// access log (aggregates under each member's agreement in force now). On failure what
    /// did not commit stays, and so do the segments.
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
        let moving: BTreeMap<u64, HashMap<Key, MemberMap<i64>>> = {
            let mut by_segment = self.by_segment.lock();
            let keep = by_segment.split_off(&keep_from);
            std::mem::replace(&mut *by_segment, keep)
        };
        if moving.is_empty() {
            return Ok(());
        }
        let result = self.to_entries(catalog, &moving).await;
        let entries = match result {
            Ok(entries) => entries,
            Err(e) => {
                self.by_segment.lock().extend(moving);
                return Err(e);
            }
        };
        let recorded = async {
            fail::fail_point!("access-log-record", |_| Err(IngestError::Unavailable(
                "failpoint access-log-record".into()
            )));
            Ok::<_, IngestError>(catalog.record_access(&entries).await?)
        };
        if let Err(e) = recorded.await {
            self.by_segment.lock().extend(moving);
            return Err(e);
        }
        Ok(())
    }

    async fn to_entries(
        &self,
        catalog: &Catalog,
        moving: &BTreeMap<u64, HashMap<Key, MemberMap<i64>>>,
    ) -> Result<Vec<AccessLogEntry>, IngestError> {
        let mut totals: BTreeMap<(ConnectionId, MemberId, &DatasetName, i64), i64> = BTreeMap::new();
        for counts in moving.values() {
            for ((connection, dataset, minute), members) in counts {
                for (member, n) in members {
                    *totals.entry((*connection, *member, dataset, *minute)).or_default() += n;
                }
            }
        }
        let mut connections = HashMap::new();
        let mut out = Vec::with_capacity(totals.len());
        self.agreements.refresh(catalog).await?;
        for ((connection, member, dataset, minute), rows) in totals {
            if let std::collections::hash_map::Entry::Vacant(e) = connections.entry(connection) {
                let c = catalog.connection(connection).await?;
                e.insert((c, self.agreements.agreements(catalog, connection).await?));
            }
            let (c, versions) = &connections[&connection];
            let version = versions.get(&member).copied();
            let terms = version.and_then(|v| c.revision(v)).or_else(|| c.approved()).map(|r| &r.terms);
            out.push(AccessLogEntry {
                at: minute * 60_000,
                member: Some(member),
                subscriber_id: c.subscriber_id,
                connection_id: c.id,
                agreement_version: version,
                purpose: terms.map(|t| t.purposes.join("; ")).unwrap_or_default(),
                dataset: dataset.to_string(),
                action: AccessAction::Write,
                rows,
                decision: AccessDecision::Allowed,
            });
        }
        Ok(out)
    }
}
