//! Fuzz target `convert_json`: see `typha_fuzz::convert_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| typha_fuzz::convert_json(data));
