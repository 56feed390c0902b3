//! Marks the sources this crate compiles from `vsp/src` as built for the model (their own unit
//! tests, which need a real runtime, are left out).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom_model)");
    println!("cargo::rustc-cfg=loom_model");
}
