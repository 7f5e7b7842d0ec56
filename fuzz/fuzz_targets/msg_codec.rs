//! See `proptests::fuzz::msg_codec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proptests::fuzz::msg_codec(data));
