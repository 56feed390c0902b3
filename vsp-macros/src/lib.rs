//! Procedural macros of VSP; use them through the `vsp` crate.
