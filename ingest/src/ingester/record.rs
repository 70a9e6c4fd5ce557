//! The WAL's records: a write's rows (a JSON header, then the stored batch as an Arrow IPC
//! stream) or a group of read access-log entries. Encoded by the sequencer, decoded by
//! replay; a record that does not decode is corrupt, never trusted.

use catalog::{ConnectionId, DataEnvironment, DatasetName, IdempotentWrite, MemberId};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

use crate::IngestError;

/// What a WAL record says besides its rows.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RecordHeader {
    pub(crate) dataset: DatasetName,
    pub(crate) env: DataEnvironment,
    pub(crate) connection: ConnectionId,
    /// The write's `Idempotency-Key` and body hash, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) idempotency: Option<(String, String)>,
    /// Epoch milliseconds of the write.
    pub(crate) at: i64,
    /// The access log already has this write (the Mydex door logs it as it answers).
    #[serde(default)]
    pub(crate) logged: bool,
}

impl RecordHeader {
    pub(crate) fn idempotent_write(&self, accepted: usize) -> Option<IdempotentWrite> {
        let (key, body_hash) = self.idempotency.clone()?;
        Some(IdempotentWrite { connection: self.connection, key, body_hash, accepted: accepted as i64, at: self.at })
    }
}

/// A rows record: the header's length and JSON, then the stored batch as an IPC stream.
pub(crate) fn encode_record(header: &RecordHeader, batch: &RecordBatch) -> Result<Vec<u8>, IngestError> {
    let head = serde_json::to_vec(header).map_err(|e| IngestError::Internal(e.to_string()))?;
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + head.len() + 8);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

/// The first four bytes of a record of read access-log entries (a rows record starts with
/// its header's length, which is never this).
const READS_RECORD: [u8; 4] = u32::MAX.to_le_bytes();

/// Read entries as the WAL keeps them: a read across many members logs entries that differ
/// only in member, version and rows, so those are stored once per group (a tenth of the
/// bytes of one object per entry).
#[derive(Debug, Serialize, Deserialize)]
struct ReadsGroup {
    /// An entry with everything shared (its member, version and rows are the first's).
    shared: catalog::AccessLogEntry,
    members: Vec<(Option<MemberId>, Option<catalog::AgreementVersion>, i64)>,
}

pub(crate) fn encode_reads(entries: &[catalog::AccessLogEntry]) -> Result<Vec<u8>, IngestError> {
    let mut groups: Vec<ReadsGroup> = Vec::new();
    for e in entries {
        match groups.last_mut() {
            Some(g) if g.shared.same_event(e) => g.members.push((e.member, e.agreement_version, e.rows)),
            _ => groups.push(ReadsGroup { shared: e.clone(), members: vec![(e.member, e.agreement_version, e.rows)] }),
        }
    }
    // About 20 bytes a member: grown once, not doubled through its size.
    let mut out = Vec::with_capacity(READS_RECORD.len() + 256 + 24 * entries.len());
    out.extend_from_slice(&READS_RECORD);
    serde_json::to_writer(&mut out, &groups).map_err(|e| IngestError::Internal(e.to_string()))?;
    Ok(out)
}

/// Whether a record holds read access-log entries (else it holds rows).
pub(crate) fn is_reads(payload: &[u8]) -> bool {
    payload.starts_with(&READS_RECORD)
}

/// The entries of a reads record, or `None` for a rows record.
pub(crate) fn decode_reads(payload: &[u8]) -> Result<Option<Vec<catalog::AccessLogEntry>>, IngestError> {
    let Some(json) = payload.strip_prefix(&READS_RECORD) else { return Ok(None) };
    let groups: Vec<ReadsGroup> =
        serde_json::from_slice(json).map_err(|_| IngestError::Internal("WAL record: bad access-log entries".into()))?;
    let entries = groups
        .into_iter()
        .flat_map(|g| {
            let shared = g.shared;
            g.members.into_iter().map(move |(member, agreement_version, rows)| catalog::AccessLogEntry {
                member,
                agreement_version,
                rows,
                ..shared.clone()
            })
        })
        .collect();
    Ok(Some(entries))
}

pub(crate) fn decode_record(payload: &[u8]) -> Result<(RecordHeader, Vec<RecordBatch>), IngestError> {
    let corrupt = |what: &str| IngestError::Internal(format!("WAL record: {what}"));
    let len =
        u32::from_le_bytes(payload.get(..4).ok_or_else(|| corrupt("short"))?.try_into().expect("4 bytes")) as usize;
    let head = payload.get(4..4 + len).ok_or_else(|| corrupt("short header"))?;
    let header: RecordHeader = serde_json::from_slice(head).map_err(|_| corrupt("bad header"))?;
    let (_, batches) = crate::decode::read_ipc(&payload[4 + len..]).map_err(corrupt)?;
    Ok((header, batches))
}

/// A WAL record's payload decoded as replay decodes it: the rows of a rows record, or the
/// entries of a reads record, which must also survive encoding again (for `fuzz/`).
#[cfg(fuzzing)]
pub(crate) fn decode_wal_record(payload: &[u8]) -> Result<usize, IngestError> {
    if let Some(entries) = decode_reads(payload)? {
        assert_eq!(decode_reads(&encode_reads(&entries)?)?.as_ref(), Some(&entries), "read entries round-trip");
        return Ok(entries.len());
    }
    let (_, batches) = decode_record(payload)?;
    Ok(batches.iter().map(RecordBatch::num_rows).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{self, Durability, Segments};
    use catalog::{AccessAction, AccessDecision, AccessLogEntry, ConnectionId, SubscriberId};
    use datafusion::arrow::array::Int64Array;
    use std::sync::Arc;

    /// An allowed read of `rows` of member `member`'s energy readings by connection 3.
    fn read_entry(at: i64, member: i64, rows: i64) -> AccessLogEntry {
        AccessLogEntry {
            at,
            member: Some(MemberId::new(member).unwrap()),
            subscriber_id: SubscriberId::new(2).unwrap(),
            connection_id: ConnectionId::new(3).unwrap(),
            agreement_version: Some(catalog::AgreementVersion::FIRST),
            purpose: "billing".into(),
            dataset: "ds_energy_consumption".into(),
            action: AccessAction::Read,
            rows,
            decision: AccessDecision::Allowed,
        }
    }

    /// Torn WAL: the tail of a segment written as the sequencer writes it (groups of rows and
    /// reads records), truncated, bit-flipped or overwritten with garbage at random offsets.
    /// Replay never fails, keeps exactly the records wholly before the damage (every one
    /// decodes to what was written), cuts the rest, and appends after the cut.
    #[test]
    fn a_torn_or_corrupt_wal_tail_loses_only_the_records_after_it() {
        use datafusion::arrow::array::StringArray;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("member_uid", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
        ]));
        // Seeded: a failing trial replays the same damage.
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0x2545f4914f6cdd1d);
        let mut rand = move |n: u64| rand::Rng::random_range(&mut rng, 0..n);
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        for r in 0..40i64 {
            let n = 1 + rand(40) as usize;
            let payload = if r % 7 == 3 {
                encode_reads(&[read_entry(r, 1 + r, n as i64)]).unwrap()
            } else {
                let members = Int64Array::from_iter_values((0..n as i64).map(|i| 1 + i % 5));
                let values = StringArray::from_iter_values((0..n).map(|i| format!("row {r}.{i}")));
                let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(members), Arc::new(values)]).unwrap();
                let header = RecordHeader {
                    dataset: "ds_energy_consumption".parse().unwrap(),
                    env: DataEnvironment::Production,
                    connection: ConnectionId::new(3).unwrap(),
                    idempotency: Some((format!("key-{r}"), "hash".into())),
                    at: r,
                    logged: false,
                };
                encode_record(&header, &batch).unwrap()
            };
            payloads.push(payload);
        }
        let written = tempfile::tempdir().unwrap();
        let mut segments = Segments::open(written.path(), 1 << 30, Durability::Fsync).unwrap();
        let mut at = 0;
        while at < payloads.len() {
            let group = (1 + rand(3) as usize).min(payloads.len() - at);
            let refs: Vec<&[u8]> = payloads[at..at + group].iter().map(Vec::as_slice).collect();
            segments.write_group(&refs).unwrap();
            at += group;
        }
        let name = format!("{:020}.wal", segments.current());
        drop(segments);
        let full = std::fs::read(written.path().join(&name)).unwrap();
        // Where each record ends: an 8-byte header, then its payload.
        let ends: Vec<usize> = payloads
            .iter()
            .scan(0, |end, p| {
                *end += 8 + p.len();
                Some(*end)
            })
            .collect();
        assert_eq!(*ends.last().unwrap(), full.len());

        let trials = 1500;
        for trial in 0..trials {
            let damage = rand(full.len() as u64) as usize;
            let mut bytes = full.clone();
            match trial % 3 {
                0 => bytes.truncate(damage),
                1 => bytes[damage] ^= 1 + rand(255) as u8,
                _ => {
                    let end = (damage + 1 + rand(4096) as usize).min(bytes.len());
                    for b in &mut bytes[damage..end] {
                        *b ^= 1 + rand(255) as u8;
                    }
                }
            }
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(&name), &bytes).unwrap();
            let records = wal::replay(dir.path()).unwrap();
            let whole = ends.iter().filter(|e| **e <= damage).count();
            assert_eq!(records.len(), whole, "trial {trial}: damage at byte {damage}");
            for (i, (_, payload)) in records.iter().enumerate() {
                assert_eq!(payload, &payloads[i], "trial {trial}: record {i} replays as written");
                if decode_reads(payload).unwrap().is_none() {
                    decode_record(payload).unwrap();
                }
            }
            let kept = if whole == 0 { 0 } else { ends[whole - 1] };
            assert_eq!(
                std::fs::metadata(dir.path().join(&name)).unwrap().len() as usize,
                kept,
                "trial {trial}: the damaged tail is cut"
            );
            // Appends go on after the cut: a second replay has the same records and the new one.
            Segments::open(dir.path(), 1 << 30, Durability::Fsync).unwrap().write_group(&[b"after"]).unwrap();
            let again = wal::replay(dir.path()).unwrap();
            assert_eq!(again.len(), whole + 1);
            assert_eq!(again.last().unwrap().1, b"after");
        }
        println!("torn WAL: {trials} damaged tails (truncated, bit-flipped, overwritten), 0 violations");
    }

    #[test]
    fn read_entries_round_trip_through_a_wal_record() {
        let entry = |m: i64| read_entry(1, m, 96);
        let mut other = entry(3);
        other.dataset = "ds_browsing_history".into();
        let entries = vec![entry(1), entry(2), other];
        let payload = encode_reads(&entries).unwrap();
        assert_eq!(decode_reads(&payload).unwrap(), Some(entries));
        let header = RecordHeader {
            dataset: "ds_energy_consumption".parse().unwrap(),
            env: DataEnvironment::Production,
            connection: ConnectionId::new(3).unwrap(),
            idempotency: None,
            at: 1,
            logged: false,
        };
        let schema =
            Arc::new(datafusion::arrow::datatypes::Schema::new(vec![datafusion::arrow::datatypes::Field::new(
                "a",
                datafusion::arrow::datatypes::DataType::Int64,
                false,
            )]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
        let rows = encode_record(&header, &batch).unwrap();
        assert_eq!(decode_reads(&rows).unwrap(), None, "a rows record is not taken for a reads record");
        assert_eq!(decode_record(&rows).unwrap().1[0], batch);
    }

    /// Found by `fuzz/` (wal_record): Arrow lengths past the end of a record were allocated
    /// as claimed (2 GiB here) before the read failed.
    #[test]
    fn a_record_claiming_more_than_it_holds_is_corrupt() {
        let head = br#"{"dataset": "ds_energy_consumption", "env": "production", "connection": 3, "at": 1}"#;
        let mut payload = (head.len() as u32).to_le_bytes().to_vec();
        payload.extend_from_slice(head);
        payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(decode_record(&payload), Err(IngestError::Internal(_))));
    }
}
