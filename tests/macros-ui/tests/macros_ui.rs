//! The macros' compile-time contract: what must compile (`tests/ui/pass`) and what must be
//! refused, with the error at the user's tokens (`tests/ui/fail`, `.stderr` snapshots).
//! Regenerate the snapshots with `TRYBUILD=overwrite cargo test -p vsp-macros-ui` and review them.
//! A package of its own (`tests/macros-ui`): trybuild builds every dependency its cases may use,
//! so they are few (the end-to-end suite's made this test take five minutes in CI).

#[test]
fn macros_ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
