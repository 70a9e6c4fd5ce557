//! The write-ahead log on local disk: numbered segment files of checksummed records.
//!
//! A record is `[u32 LE length][u32 LE crc32][payload]`, the checksum taken over the
//! segment's id and the payload. [`Segments::write_group`] appends a whole group of records
//! and syncs once (group commit); a request is acknowledged only after the sync of its group.
//! Replay reads records in order and stops at the first torn or corrupt one: a record that
//! was never fully synced was never acknowledged.
//!
//! Segments are recycled: a segment whose rows are all in Parquet becomes a spare (renamed,
//! up to [`SPARES_KEPT`]), and a new segment takes a spare and overwrites it from the start
//! (as PostgreSQL recycles its WAL files).
//! Overwriting blocks a file already has changes no metadata, so each group's `fdatasync`
//! flushes only its own data; appending to a fresh file grows it, and on ext4 every sync
//! then commits the journal, waiting for whatever else the disk is writing (a flush's
//! Parquet files): hundreds of milliseconds at the p99 of acks. A spare's old records
//! cannot replay as the new segment's: their checksums name the old id.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// How acknowledged rows are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fdatasync` before the ack (the default): an acknowledged row survives power loss.
    Fsync,
    /// Written to the OS before the ack, synced on rotation: survives a process crash,
    /// not a power loss. Documented as the faster mode.
    Process,
}

const HEADER: usize = 8;
/// Largest record accepted on replay; anything claiming more is corruption.
const MAX_RECORD: usize = 1 << 30;
/// Retired segments kept to be overwritten by new ones (the rest are deleted): at the
/// default 64 MiB a segment, 1 GiB, what one flush round of the default 1 GiB buffer retires.
/// Spares hold old records until overwritten; erasure (issue 19) must delete them.
pub const SPARES_KEPT: usize = 16;

/// The segment files of one WAL directory; only the writer thread holds this.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    file: File,
    id: u64,
    len: u64,
    segment_bytes: u64,
    durability: Durability,
    /// The group being written, kept between groups: a fresh buffer of a read's 200 KB
    /// access-log record was fresh pages to fault in, a tenth of the WAL thread's time.
    buf: Vec<u8>,
}

/// A group buffer grown past this is released after its group.
const KEEP_BUFFER_BYTES: usize = 4 << 20;

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

fn spare_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.spare"))
}

/// The checksum of a record of segment `id`.
fn checksum(id: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Ids of the segment files in `dir`, ascending.
pub fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    files_ending(dir, ".wal")
}

/// Ids of the files in `dir` named `<id><suffix>`, ascending.
fn files_ending(dir: &Path, suffix: &str) -> io::Result<Vec<u64>> {
    let mut ids: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(suffix)?.parse().ok())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Every intact record of every segment in `dir`, in order, with its segment id (see
/// [`replay_segment`]).
pub fn replay(dir: &Path) -> io::Result<Vec<(u64, Vec<u8>)>> {
    fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for id in segment_ids(dir)? {
        out.extend(replay_segment(dir, id)?.records().map(|payload| (id, payload.to_vec())));
    }
    Ok(out)
}

/// The intact records of segment `id`. A torn or corrupt tail (or what a recycled segment
/// held before) is cut off so that nothing is ever appended after garbage.
pub fn replay_segment(dir: &Path, id: u64) -> io::Result<SegmentRecords> {
    let segment = SegmentRecords::read(dir, id)?;
    let kept = segment.intact_len();
    if kept < segment.bytes.len() {
        tracing::info!(
            segment = id,
            kept,
            dropped = segment.bytes.len() - kept,
            "cut a WAL segment's tail (torn, or a recycled segment's old records)"
        );
        OpenOptions::new().write(true).open(segment_path(dir, id))?.set_len(kept as u64)?;
    }
    Ok(segment)
}

/// One segment file read whole (a segment is at most about `segment_bytes`), for its intact
/// records: those before the first torn or corrupt one, as replay keeps them. Each record's
/// checksum is checked once, as it is read.
pub struct SegmentRecords {
    bytes: Vec<u8>,
    /// Where each intact record's payload is in `bytes`.
    payloads: Vec<std::ops::Range<usize>>,
}

impl std::fmt::Debug for SegmentRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentRecords")
            .field("bytes", &self.bytes.len())
            .field("records", &self.payloads.len())
            .finish()
    }
}

impl SegmentRecords {
    pub fn read(dir: &Path, id: u64) -> io::Result<SegmentRecords> {
        let mut bytes = Vec::new();
        File::open(segment_path(dir, id))?.read_to_end(&mut bytes)?;
        let mut payloads = Vec::new();
        let mut at = 0;
        while let Some((payload, next)) = read_record(&bytes, at, id) {
            payloads.push(next - payload.len()..next);
            at = next;
        }
        Ok(SegmentRecords { bytes, payloads })
    }

    /// The payloads of the intact records, in order.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        self.payloads.iter().map(|p| &self.bytes[p.clone()])
    }

    /// Where the intact records end.
    fn intact_len(&self) -> usize {
        self.payloads.last().map_or(0, |p| p.end)
    }
}

/// The record of segment `id` at `at`, if it is whole and its checksum matches.
fn read_record(bytes: &[u8], at: usize, id: u64) -> Option<(&[u8], usize)> {
    let header = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(at + HEADER..at + HEADER + len)?;
    (checksum(id, payload) == crc).then_some((payload, at + HEADER + len))
}

impl Segments {
    /// Opens a new segment after every existing one (replay first).
    pub fn open(dir: &Path, segment_bytes: u64, durability: Durability) -> io::Result<Segments> {
        fs::create_dir_all(dir)?;
        let id = segment_ids(dir)?.last().map_or(1, |last| last + 1);
        let file = new_segment(dir, id)?;
        Ok(Segments { dir: dir.to_owned(), file, id, len: 0, segment_bytes, durability, buf: Vec::new() })
    }

    /// The segment records are appended to now.
    pub fn current(&self) -> u64 {
        self.id
    }

    /// Appends every payload and syncs once. Returns the segment they are in. On error the
    /// segment is cut back to its last good length, so a failed group leaves no trace.
    pub fn write_group(&mut self, payloads: &[&[u8]]) -> io::Result<u64> {
        if self.len >= self.segment_bytes {
            self.rotate()?;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.reserve(payloads.iter().map(|p| p.len() + HEADER).sum());
        for p in payloads {
            buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
            buf.extend_from_slice(&checksum(self.id, p).to_le_bytes());
            buf.extend_from_slice(p);
        }
        let result = (|| {
            fail::fail_point!("wal-write", |_| Err(io::Error::other("failpoint wal-write")));
            self.file.write_all(&buf)?;
            if self.durability == Durability::Fsync {
                fail::fail_point!("wal-fsync", |_| Err(io::Error::other("failpoint wal-fsync")));
                self.file.sync_data()?;
            }
            Ok(())
        })();
        let written = buf.len() as u64;
        if buf.capacity() <= KEEP_BUFFER_BYTES {
            self.buf = buf;
        }
        match result {
            Ok(()) => {
                self.len += written;
                Ok(self.id)
            }
            Err(e) => {
                // Best effort: if even this fails the next group fails too, and replay cuts
                // the tail at the first bad checksum.
                let _ = self.file.set_len(self.len).and_then(|()| self.file.seek(SeekFrom::Start(self.len)));
                Err(e)
            }
        }
    }

    /// Closes the current segment if it holds anything, so that once its rows are flushed
    /// it can be deleted even when no further writes come.
    pub fn rotate_if_used(&mut self) -> io::Result<()> {
        if self.len > 0 { self.rotate() } else { Ok(()) }
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_all()?;
        self.id += 1;
        self.file = new_segment(&self.dir, self.id)?;
        self.len = 0;
        Ok(())
    }
}

/// Retires the segments older than `keep_from` (their rows are all in recorded Parquet
/// files): up to [`SPARES_KEPT`] become spares, the others are deleted. Callers pass at most
/// the writer's current segment, which is never retired. Returns how many were retired.
pub fn remove_below(dir: &Path, keep_from: u64) -> io::Result<usize> {
    let mut spares = files_ending(dir, ".spare")?.len();
    let mut removed = 0;
    for id in segment_ids(dir)? {
        if id < keep_from {
            if spares < SPARES_KEPT {
                fs::rename(segment_path(dir, id), spare_path(dir, id))?;
                spares += 1;
            } else {
                fs::remove_file(segment_path(dir, id))?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// Segment `id`, empty for its records: a spare renamed, written from its start, or else a
/// new file.
fn new_segment(dir: &Path, id: u64) -> io::Result<File> {
    let path = segment_path(dir, id);
    let file = match files_ending(dir, ".spare")?.first() {
        Some(&spare) => {
            fs::rename(spare_path(dir, spare), &path)?;
            OpenOptions::new().write(true).open(&path)?
        }
        None => OpenOptions::new().create_new(true).write(true).open(&path)?,
    };
    // The new name must be durable too, or a crash could lose a synced segment.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_replay_in_order_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), 64, Durability::Fsync).unwrap();
        assert_eq!(s.write_group(&[b"one", b"two"]).unwrap(), 1);
        assert_eq!(s.write_group(&[&[7u8; 100]]).unwrap(), 1);
        assert_eq!(s.write_group(&[b"three"]).unwrap(), 2, "rotated past 64 bytes");
        drop(s);
        let got: Vec<(u64, Vec<u8>)> = replay(dir.path()).unwrap();
        assert_eq!(got.iter().map(|(id, p)| (*id, p.len())).collect::<Vec<_>>(), [(1, 3), (1, 3), (1, 100), (2, 5)]);

        // Tear the last record at every offset: replay keeps exactly the whole records.
        let last = segment_path(dir.path(), 2);
        let full = fs::read(&last).unwrap();
        for cut in 0..full.len() {
            fs::write(&last, &full[..cut]).unwrap();
            let got = replay(dir.path()).unwrap();
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(fs::metadata(&last).unwrap().len(), 0, "the torn tail is removed");
        }
        // A flipped bit is caught by the checksum.
        let mut bad = full.clone();
        bad[HEADER + 1] ^= 1;
        fs::write(&last, &bad).unwrap();
        assert_eq!(replay(dir.path()).unwrap().len(), 3);

        // New appends go to a fresh segment; old ones are retired once persisted.
        let s = Segments::open(dir.path(), 64, Durability::Fsync).unwrap();
        assert_eq!(s.current(), 3);
        assert_eq!(remove_below(dir.path(), 2).unwrap(), 1);
        assert_eq!(segment_ids(dir.path()).unwrap(), [2, 3]);
        assert_eq!(remove_below(dir.path(), s.current()).unwrap(), 1);
        assert_eq!(segment_ids(dir.path()).unwrap(), [3]);
        assert_eq!(files_ending(dir.path(), ".spare").unwrap(), [1, 2], "kept to be overwritten");
    }

    #[test]
    fn a_recycled_segment_replays_only_its_new_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), 1 << 20, Durability::Fsync).unwrap();
        let old: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 40]).collect();
        s.write_group(&old.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
        s.rotate_if_used().unwrap();
        assert_eq!(remove_below(dir.path(), s.current()).unwrap(), 1);
        assert_eq!(files_ending(dir.path(), ".spare").unwrap(), [1]);

        // Segment 2 was new; segment 3 overwrites the spare: its file keeps its size (no
        // metadata to sync), and only its new records replay, the old ones after them cut.
        s.write_group(&[b"new"]).unwrap();
        s.rotate().unwrap();
        assert_eq!(s.current(), 3);
        assert!(files_ending(dir.path(), ".spare").unwrap().is_empty(), "the spare became segment 3");
        s.write_group(&[b"three"]).unwrap();
        assert_eq!(fs::metadata(segment_path(dir.path(), 3)).unwrap().len(), 50 * 48, "overwritten in place");
        drop(s);
        let got = replay(dir.path()).unwrap();
        assert_eq!(got, [(2, b"new".to_vec()), (3, b"three".to_vec())]);
        assert_eq!(fs::metadata(segment_path(dir.path(), 3)).unwrap().len(), 13, "the old records are cut");

        // Past the spares kept, retired segments are deleted.
        let mut s = Segments::open(dir.path(), 1 << 20, Durability::Fsync).unwrap();
        for _ in 0..SPARES_KEPT + 2 {
            s.write_group(&[b"x"]).unwrap();
            s.rotate().unwrap();
        }
        remove_below(dir.path(), s.current()).unwrap();
        assert_eq!(segment_ids(dir.path()).unwrap(), [s.current()]);
        assert_eq!(files_ending(dir.path(), ".spare").unwrap().len(), SPARES_KEPT);
    }
}
