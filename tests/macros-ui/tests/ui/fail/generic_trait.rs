#[vsp::service]
pub trait Api<T> {
    async fn get(&self, id: u64) -> String;
}

fn main() {}
