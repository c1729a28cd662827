//! Fuzz target `mirror`: see `typha_fuzz::mirror`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| typha_fuzz::mirror(data));
