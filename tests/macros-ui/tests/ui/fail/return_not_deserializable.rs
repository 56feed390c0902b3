#[derive(serde::Serialize)]
pub struct OnlySerialize {
    pub id: u64,
}

#[vsp::service]
pub trait Api {
    async fn get(&self, id: u64) -> OnlySerialize;
}

fn main() {}
