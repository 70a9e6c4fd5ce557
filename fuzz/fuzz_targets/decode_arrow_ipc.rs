//! `ingest::decode` of an arbitrary body as Format::ArrowIpc (see `trove_fuzz::decode`).
#![no_main]

libfuzzer_sys::fuzz_target!(init: trove_fuzz::allow_caught_panics(), |body: &[u8]| {
    trove_fuzz::decode(ingest::decode::Format::ArrowIpc, body)
});
