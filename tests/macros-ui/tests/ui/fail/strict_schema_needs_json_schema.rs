//! `strict_schema`: a type with no JSON Schema is a compile error at the type.

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Opaque(String);

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Described(String);

#[vsp::service(strict_schema)]
pub trait Vault {
    async fn put(&self, item: Opaque) -> Described;
}

fn main() {}
