//! The macros' compile-time contract: what must compile (`tests/ui/pass`) and what must be
//! refused, with the error at the user's tokens (`tests/ui/fail`, `.stderr` snapshots).
//! Regenerate the snapshots with `TRYBUILD=overwrite cargo test --test macros_ui` and review them.

#[test]
fn macros_ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
