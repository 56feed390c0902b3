pub struct Order {
    pub id: u64,
}

#[vsp::service]
pub trait Orders {
    async fn get(&self, id: u64) -> Order;
}

fn main() {}
