#[vsp::service]
pub trait Api {
    async fn get(&self, name: &'static str) -> String;
}

fn main() {}
