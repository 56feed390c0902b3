//! Two service descriptions compared (`vsp compat`), as a live server may answer `vsp.describe`:
//! the input is the old and the new description's JSON, separated by a NUL byte.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|byte| *byte == 0) else {
        return;
    };
    let (Ok(old), Ok(new)) = (
        serde_json::from_slice::<vsp::ServiceDescription>(&data[..split]),
        serde_json::from_slice::<vsp::ServiceDescription>(&data[split + 1..]),
    ) else {
        return;
    };
    let report = vsp::compat::compare(&old, &new);
    let _ = report.to_string();
});
