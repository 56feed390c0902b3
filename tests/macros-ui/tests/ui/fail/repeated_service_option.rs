#[vsp::service(name = "users", name = "people")]
pub trait Users {
    async fn get(&self, id: u64) -> String;
}

fn main() {}
