#[vsp::service(title = "api")]
pub trait Api {
    async fn get(&self, id: u64) -> String;
}

fn main() {}
