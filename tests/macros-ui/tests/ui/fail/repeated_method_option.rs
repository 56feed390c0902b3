#[vsp::service]
pub trait Api {
    #[vsp(name = "fetch", name = "get")]
    async fn get(&self, id: u64) -> String;
    #[vsp(idempotent)]
    #[vsp(idempotent)]
    async fn list(&self) -> Vec<String>;
}

fn main() {}
