//! The Mydex door's `filters[...]` from an arbitrary query string (see `trove_fuzz::mydex_filters`).
#![no_main]

libfuzzer_sys::fuzz_target!(|query_string: &[u8]| trove_fuzz::mydex_filters(query_string));
