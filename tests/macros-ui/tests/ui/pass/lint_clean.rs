//! Generated code passes strict lints in the user's crate.
#![deny(missing_docs, warnings, unused, clippy::all)]

/// A documented service.
#[vsp::service]
pub trait Documented {
    /// Does nothing, with no arguments.
    async fn nothing(&self);
    /// Echoes.
    async fn echo(&self, text: String) -> Result<String, String>;
}

/// Calls `echo`.
#[vsp::call(Documented::echo)]
pub async fn echo(client: &vsp::VspClient, text: String) -> Result<String, vsp::CallError<String>>;

fn main() {
    let _ = echo;
}
