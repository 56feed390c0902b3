//! W3C `traceparent` values from a peer's metadata.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        vsp::fuzzing::traceparent(text);
    }
});
