#[vsp::service]
pub trait Api {
    async fn get(&mut self, id: u64) -> String;
    async fn take(self) -> String;
}

fn main() {}
