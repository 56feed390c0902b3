use std::sync::Arc;

#[vsp::service]
pub trait Inventory {
    async fn count(&self) -> u64;
}

struct Shelf;

impl Inventory for Shelf {
    async fn count(&self) -> u64 {
        3
    }
}

fn main() {
    let manager = vsp::VspManager::builder("inventory").build();
    let shelf = Arc::new(Shelf);
    manager.serve(InventoryServer::new(shelf)).unwrap();
}
