#[vsp::service]
pub trait Api {
    async fn get(&self, name: &str) -> String;
    async fn sum(&self, values: &[u64]) -> u64;
    async fn stored(&self, key: &'static String) -> String;
}

fn main() {}
