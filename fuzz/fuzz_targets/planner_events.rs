//! See `proptests::fuzz::planner_events`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proptests::fuzz::planner_events(data));
