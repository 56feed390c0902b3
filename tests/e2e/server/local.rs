//! Serving in the process for tests: `XxxClient::local(impl)` (the real implementation or a
//! fake one), `VspManager::serve_local`, and free in-memory names, so tests that share a setup
//! run in parallel.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use vsp::transport::{Listener, MemoryListener};
use vsp::CallError;
use vsp_test_support::wait_until;

use crate::users::{UserError, UserServiceClient, Users};

/// A stock service that checkout code calls.
#[vsp::service(name = "inventory")]
pub trait Inventory {
    async fn reserve(&self, sku: String, quantity: u32) -> Result<u64, StockError>;
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum StockError {
    OutOfStock { sku: String, left: u32 },
}

/// The code under test: it calls the inventory through the generated client, as in production.
async fn checkout(inventory: &InventoryClient, sku: &str, quantity: u32) -> String {
    match inventory.reserve(sku.to_owned(), quantity).await {
        Ok(reservation) => format!("reserved as #{reservation}"),
        Err(CallError::Service(StockError::OutOfStock { left, .. })) => {
            format!("only {left} left")
        }
        Err(CallError::Vsp(err)) => format!("try again later ({err})"),
    }
}

/// A fake with canned answers.
struct FakeInventory {
    left: u32,
}

impl Inventory for FakeInventory {
    async fn reserve(&self, sku: String, quantity: u32) -> Result<u64, StockError> {
        if quantity > self.left {
            return Err(StockError::OutOfStock {
                sku,
                left: self.left,
            });
        }
        Ok(42)
    }
}

#[tokio::test]
async fn calling_code_is_tested_against_a_fake_in_one_line() {
    let inventory = InventoryClient::local(FakeInventory { left: 3 })
        .await
        .unwrap();
    assert_eq!(checkout(&inventory, "tea", 2).await, "reserved as #42");
    assert_eq!(checkout(&inventory, "tea", 5).await, "only 3 left");
}

/// The setup two tests share, word for word.
async fn users() -> UserServiceClient {
    UserServiceClient::local(Users::default()).await.unwrap()
}

async fn create_then_read(users: &UserServiceClient, name: &str) {
    let created = users
        .create_user(name.into(), "x@example.com".into())
        .await
        .unwrap();
    let read = users.get_user(created.id.clone()).await.unwrap();
    assert_eq!(read, created);
    let missing = users.get_user("nobody".into()).await.unwrap_err();
    assert!(matches!(
        missing,
        CallError::Service(UserError::NotFound { .. })
    ));
}

#[tokio::test]
async fn the_same_local_setup_in_one_test() {
    create_then_read(&users().await, "Ada").await;
}

#[tokio::test]
async fn the_same_local_setup_in_another_test() {
    create_then_read(&users().await, "Grace").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_copies_of_one_setup_run_at_once_each_on_its_own_server() {
    let runs = (0..16).map(|i| async move {
        let users = users().await;
        create_then_read(&users, &format!("user {i}")).await;
        // Each its own store: the first user created by each server has the same id.
        users.create_user("n".into(), "e".into()).await.unwrap().id
    });
    let ids = futures::future::join_all(runs).await;
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
}

#[tokio::test]
async fn free_in_memory_names_never_clash_even_with_names_bound_by_hand() {
    let first = MemoryListener::bind_unique("orders");
    let taken = first.local_addr().to_string();
    // Take the next number by hand: `bind_unique` skips it.
    let number: u64 = taken.rsplit('-').next().unwrap().parse().unwrap();
    let by_hand = MemoryListener::bind(format!("orders-{}", number + 1)).unwrap();
    let second = MemoryListener::bind_unique("orders");
    assert_ne!(second.local_addr(), first.local_addr());
    assert_ne!(second.local_addr(), by_hand.local_addr());
}

#[tokio::test]
async fn a_local_server_stops_with_its_last_client_and_manager() {
    let manager = crate::common::test_manager();
    let client = manager.serve_local().await.unwrap();
    let address = manager.local_addr().expect("a local address");
    let name = address
        .to_string()
        .strip_prefix("memory:")
        .expect("an in-memory address")
        .to_owned();
    crate::common::assert_echo(&client, 5).await;
    // The client alone keeps it serving.
    drop(manager);
    crate::common::assert_echo(&client.clone(), 6).await;
    drop(client);
    // Its name is free again once the server has stopped.
    wait_until(
        "the local server to stop and free its in-memory name",
        Duration::from_secs(5),
        || MemoryListener::bind(name.as_str()).is_ok(),
    )
    .await;
}
