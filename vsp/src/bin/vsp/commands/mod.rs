//! One file per subcommand, each with its arguments (`Args`) and its `run`.
//!
//! A new subcommand is a file here, a `mod` line, and a variant of `Command` in `main.rs`.

pub(crate) mod bench;
pub(crate) mod call;
pub(crate) mod codegen;
pub(crate) mod compat;
pub(crate) mod describe;
pub(crate) mod discover;
pub(crate) mod health;
