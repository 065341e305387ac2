#![no_main]

// A stored value as the admin tool's `inspect` reads it: to JSON, as far as it goes, in space
// bounded by the input (nested map keys once asked for gigabytes).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let seen = tiered_cache::admin::inspect_bytes(data);
    assert_eq!(seen.stored_bytes, data.len());
    if let Some(json) = &seen.value {
        let _ = json.to_string();
    }
});
