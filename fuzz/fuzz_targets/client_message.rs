//! Fuzz target `client_message`: see `typha_fuzz::client_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| typha_fuzz::client_message(data));
