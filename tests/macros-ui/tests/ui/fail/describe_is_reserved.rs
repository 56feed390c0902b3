//! `vsp.describe` is answered by every server: a method cannot take it.

#[vsp::service]
pub trait Catalog {
    #[vsp(name = "vsp.describe")]
    async fn describe(&self) -> String;
}

fn main() {}
