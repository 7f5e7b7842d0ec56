//! See `proptests::migration::migration_hosts`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proptests::migration::migration_hosts(data));
