//! Call metadata (the `meta` header): within its bounds, and unchanged through a header we write.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        vsp::fuzzing::metadata(text);
    }
});
