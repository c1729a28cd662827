//! Fuzz target `server_frame`: see `typha_fuzz::server_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| typha_fuzz::server_frame(data));
