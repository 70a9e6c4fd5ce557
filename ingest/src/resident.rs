//! The process's resident memory, as the kernel counts it, for the write path's
//! back-pressure: the buffer's budget counts what the buffer holds, but the allocator keeps
//! pages it freed for a while and fills others in part, so a process at its buffer budget
//! can still be hundreds of MiB over what the operator planned for. Reading what the
//! kernel counts bounds that too.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a reading is used before it is read again: a write checks it before its body
/// is read, and reading `/proc` costs a few microseconds.
const FRESH_FOR: Duration = Duration::from_millis(10);

/// What other parts of the process hold and count themselves, in bytes.
pub(crate) type HeldElsewhere = Box<dyn Fn() -> usize + Send + Sync>;

/// The last reading of the process's resident bytes, read again when it is older than
/// [`FRESH_FOR`]. Zero where the system does not tell (outside Linux): then nothing is refused.
pub(crate) struct Resident {
    start: Instant,
    /// When the last reading was taken, in ms since `start`.
    read_at: AtomicU64,
    bytes: AtomicUsize,
    elsewhere: OnceLock<HeldElsewhere>,
}

impl std::fmt::Debug for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resident").field("bytes", &self.bytes).finish_non_exhaustive()
    }
}

impl Resident {
    pub(crate) fn new() -> Self {
        Resident {
            start: Instant::now(),
            read_at: AtomicU64::new(0),
            bytes: AtomicUsize::new(read()),
            elsewhere: OnceLock::new(),
        }
    }

    /// Counts what `held` says out of [`Resident::own_bytes`] from now on (the first one
    /// set stays).
    pub(crate) fn held_elsewhere(&self, held: HeldElsewhere) {
        let _ = self.elsewhere.set(held);
    }

    /// Resident bytes less what other parts of the process hold and count themselves.
    pub(crate) fn own_bytes(&self) -> usize {
        self.bytes().saturating_sub(self.elsewhere.get().map_or(0, |held| held()))
    }

    /// Resident bytes, at most [`FRESH_FOR`] old; one caller at a time reads them again.
    pub(crate) fn bytes(&self) -> usize {
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.read_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= FRESH_FOR.as_millis() as u64
            && self.read_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.bytes.store(read(), Ordering::Relaxed);
        }
        self.bytes.load(Ordering::Relaxed)
    }
}

fn read() -> usize {
    procfs::process::Process::myself()
        .and_then(|p| p.statm())
        .map_or(0, |statm| statm.resident as usize * procfs::page_size() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_what_the_process_holds() {
        let resident = Resident::new();
        let before = resident.bytes();
        assert!(before > 0, "Linux tells a process its resident memory");
        // 256 MiB touched page by page: resident memory follows within a reading's age.
        let held = vec![1u8; 256 << 20];
        std::thread::sleep(FRESH_FOR * 2);
        let during = resident.bytes();
        assert!(during >= before + (200 << 20), "{before} then {during}");
        // What another part of the process counts itself is left out.
        resident.held_elsewhere(Box::new(|| 256 << 20));
        assert!(resident.own_bytes() <= during - (256 << 20) + (16 << 20));
        drop(held);
    }
}
