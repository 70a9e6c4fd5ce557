//! `ingest::decode` of an arbitrary body as Format::Csv (see `trove_fuzz::decode`).
#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| trove_fuzz::decode(ingest::decode::Format::Csv, body));
