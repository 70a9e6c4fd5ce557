//! The SQL door on arbitrary text: parse, plan and verify, never run (see `trove_fuzz::plan_sql`).
#![no_main]

libfuzzer_sys::fuzz_target!(|sql: &[u8]| {
    if let Ok(sql) = std::str::from_utf8(sql) {
        trove_fuzz::plan_sql(sql);
    }
});
