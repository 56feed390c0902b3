//! The frame reader over arbitrary bytes, compressed frames too, with a frame limit the input
//! picks (16 B to 512 KiB): frames within the limit, the input accounted for exactly, a length
//! above the limit (or an inflated size above it) refused without allocating it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, bytes)) = data.split_first() else {
        return;
    };
    vsp::fuzzing::frames(bytes, 16 << (limit % 16));
});
