#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tiered_cache::testing::fuzz::envelope(data));
