#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tiered_cache::RedisInfo::parse(&String::from_utf8_lossy(data));
});
