//! Two services served by one manager, both called through one client.

use vsp::{ServiceInfo, ServiceMesh, VspClient, VspManager};

#[vsp::service(name = "greeter")]
pub trait Greeter {
    async fn greet(&self, name: String) -> String;
}

#[vsp::service(name = "counter")]
pub trait Counter {
    async fn add(&self, a: i64, b: i64) -> i64;
}

struct Impl;

impl Greeter for Impl {
    async fn greet(&self, name: String) -> String {
        format!("hello {name}")
    }
}

impl Counter for Impl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let manager = VspManager::builder("combo").build();
    manager.serve(GreeterServer::new(Impl)).unwrap();
    manager.serve(CounterServer::new(Impl)).unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("greeter", "127.0.0.1", addr.port())).unwrap();
    mesh.register(ServiceInfo::new("counter", "127.0.0.1", addr.port())).unwrap();
    let client = VspClient::builder(mesh).build();
    assert_eq!(GreeterClient::new(client.clone()).greet("ada".into()).await.unwrap(), "hello ada");
    assert_eq!(CounterClient::new(client).add(2, 3).await.unwrap(), 5);
}
