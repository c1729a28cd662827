//! Fuzz target `selector`: see `typha_fuzz::selector`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| typha_fuzz::selector(data));
