//! The envelope parser, differentially: the canonical fast path and serde agree on every input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vsp::fuzzing::envelope(data);
});
