#[vsp::service]
pub trait Api {
    fn get(&self, id: u64) -> String;
}

fn main() {}
