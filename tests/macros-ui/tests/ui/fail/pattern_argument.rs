#[vsp::service]
pub trait Api {
    async fn get(&self, (a, b): (u64, u64)) -> String;
}

fn main() {}
