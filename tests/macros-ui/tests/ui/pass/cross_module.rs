//! A service defined in one module, implemented in a second and called from a third.

mod api {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Item {
        pub sku: String,
        pub quantity: u32,
    }

    #[vsp::service(name = "inventory")]
    pub trait Inventory {
        async fn item(&self, sku: String) -> Option<Item>;
    }
}

mod service {
    use super::api::{Inventory, Item};

    pub struct Store;

    impl Inventory for Store {
        async fn item(&self, sku: String) -> Option<Item> {
            (sku == "A1").then(|| Item { sku, quantity: 3 })
        }
    }
}

mod caller {
    use super::api::{InventoryClient, Item};

    #[vsp::call(super::api::Inventory::item)]
    pub async fn lookup(client: &vsp::VspClient, sku: String) -> Result<Option<Item>, vsp::VspError>;

    pub async fn quantity(client: &InventoryClient, sku: &str) -> u32 {
        client.item(sku.to_owned()).await.unwrap().map_or(0, |item| item.quantity)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let manager = vsp::VspManager::builder("inventory").build();
    manager.serve(api::InventoryServer::new(service::Store)).unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = vsp::ServiceMesh::new();
    mesh.register(vsp::ServiceInfo::new("inventory", "127.0.0.1", addr.port())).unwrap();
    let client = vsp::VspClient::builder(mesh).build();
    assert_eq!(caller::quantity(&api::InventoryClient::new(client.clone()), "A1").await, 3);
    assert_eq!(caller::lookup(&client, "B2".into()).await.unwrap(), None);
}
