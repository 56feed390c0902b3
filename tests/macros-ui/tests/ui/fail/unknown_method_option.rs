#[vsp::service]
pub trait Api {
    #[vsp(nmae = "x")]
    async fn get(&self, id: u64) -> String;
}

fn main() {}
