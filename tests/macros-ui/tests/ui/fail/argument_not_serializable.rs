pub struct Opaque;

#[vsp::service]
pub trait Api {
    async fn get(&self, id: Opaque) -> String;
}

fn main() {}
