//! `strict_schema` with every type described, and `vsp.describe` may not be taken.

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Described(String);

#[vsp::service(name = "vault", strict_schema)]
pub trait Vault {
    async fn put(&self, item: Described, tag: Option<u8>) -> Result<u64, String>;
}

fn main() {}
