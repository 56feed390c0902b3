#[vsp::service]
pub trait Api {
    async fn get(id: u64) -> String;
}

fn main() {}
