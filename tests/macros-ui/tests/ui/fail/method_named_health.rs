#[vsp::service]
pub trait Api {
    async fn health(&self) -> String;
}

fn main() {}
