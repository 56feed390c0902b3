#[vsp::service]
pub trait Api {
    async fn get(&self, id: u64) -> String {
        id.to_string()
    }
}

fn main() {}
