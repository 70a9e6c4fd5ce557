//! WAL replay and the WAL record decoder on arbitrary bytes (see `trove_fuzz::wal_segment`).
#![no_main]

libfuzzer_sys::fuzz_target!(init: trove_fuzz::allow_caught_panics(), |bytes: &[u8]| trove_fuzz::wal_segment(bytes));
