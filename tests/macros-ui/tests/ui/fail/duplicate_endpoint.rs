#[vsp::service]
pub trait Api {
    async fn get(&self, id: u64) -> String;
    #[vsp(name = "get")]
    async fn get_again(&self, id: u64) -> String;
}

fn main() {}
