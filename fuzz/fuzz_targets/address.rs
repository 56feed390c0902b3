//! Address text (`host:port`, `unix:/path`, `memory:name`), as discovery and peers give it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        vsp::fuzzing::address(text);
    }
});
