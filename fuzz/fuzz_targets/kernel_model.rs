//! See `proptests::fuzz::kernel_model`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proptests::fuzz::kernel_model(data));
