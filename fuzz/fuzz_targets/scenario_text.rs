//! See `proptests::fuzz::scenario_text`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proptests::fuzz::scenario_text(data));
