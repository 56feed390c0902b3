//! One trait, two implementations, each on its own server.

use vsp::{ServiceInfo, ServiceMesh, VspClient, VspManager};

#[vsp::service]
pub trait Clock {
    async fn now(&self) -> u64;
}

struct Stopped;
struct Fixed(u64);

impl Clock for Stopped {
    async fn now(&self) -> u64 {
        0
    }
}

impl Clock for Fixed {
    async fn now(&self) -> u64 {
        self.0
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let stopped = VspManager::builder("clock").build();
    stopped.serve(ClockServer::new(Stopped)).unwrap();
    let fixed = VspManager::builder("clock").build();
    fixed.serve(ClockServer::new(Fixed(42))).unwrap();
    let a = stopped.start_server("127.0.0.1", 0).await.unwrap();
    let b = fixed.start_server("127.0.0.1", 0).await.unwrap();

    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new(ClockClient::SERVICE_NAME, "127.0.0.1", a.port())).unwrap();
    mesh.register(ServiceInfo::new(ClockClient::SERVICE_NAME, "127.0.0.1", b.port())).unwrap();
    let clock = ClockClient::new(VspClient::builder(mesh).build());
    let mut seen = vec![clock.now().await.unwrap(), clock.now().await.unwrap()];
    seen.sort();
    assert_eq!(seen, [0, 42]); // round robin reached both
}
