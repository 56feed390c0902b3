//! A method returning `Result<T, E>` gives the caller `Result<T, CallError<E>>`.

use vsp::CallError;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum OrderError {
    OutOfStock,
}

#[vsp::service]
pub trait Orders {
    async fn place(&self, sku: String) -> Result<u64, OrderError>;
    async fn cancel(&self, id: u64) -> std::result::Result<(), String>;
}

async fn place(client: &OrdersClient) -> Result<u64, CallError<OrderError>> {
    client.place("A1".into()).await
}

async fn cancel(client: &OrdersClient) -> Result<(), CallError<String>> {
    client.cancel(1).await
}

fn main() {
    let _ = (place, cancel);
}
