//! Fuzz target `convert_structured`: see `typha_fuzz::convert_structured`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| typha_fuzz::convert_structured(data));
