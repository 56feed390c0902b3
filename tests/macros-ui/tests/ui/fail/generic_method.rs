#[vsp::service]
pub trait Api {
    async fn get<T>(&self, id: T) -> String;
}

fn main() {}
