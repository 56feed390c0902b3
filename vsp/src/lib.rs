//! VSP, the Velithon Service Protocol in Rust: call services by name over a service mesh, with
//! multiplexed JSON-over-TCP connections that speak the same wire format as Velithon's Python VSP.
//!
//! A service registers endpoints on a [`VspManager`] and serves them; a caller routes by service
//! name through a [`ServiceMesh`] (discovery, health filter, load balancer) and a [`VspClient`]
//! (pooled, multiplexed connections).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use vsp::{ServiceInfo, ServiceMesh, VspClient, VspError, VspManager};
//!
//! #[derive(Deserialize)]
//! struct GetUser {
//!     user_id: String,
//! }
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct User {
//!     id: String,
//!     name: String,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), VspError> {
//! // The service.
//! let manager = VspManager::builder("user-service").build();
//! manager.endpoint("get_user", |args: GetUser| async move {
//!     Ok::<_, VspError>(User { id: args.user_id, name: "John Doe".into() })
//! })?;
//! let addr = manager.start_server("127.0.0.1", 0).await?;
//!
//! // A caller.
//! let mesh = ServiceMesh::new();
//! mesh.register(ServiceInfo::new("user-service", "127.0.0.1", addr.port()))?;
//! let client = VspClient::builder(mesh).build();
//! let user: User = client
//!     .call_typed("user-service", "get_user", serde_json::json!({ "user_id": "123" }))
//!     .await?;
//! assert_eq!(user.id, "123");
//!
//! manager.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Modules: [`protocol`] (the wire), [`server`], [`client`], [`mesh`], [`discovery`],
//! [`balancer`]. Logging goes through `tracing`.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod balancer;
pub mod client;
pub mod discovery;
mod error;
pub mod mesh;
pub mod protocol;
pub mod server;
mod stats;
mod transport;

pub use balancer::{LoadBalancer, RoundRobinBalancer};
pub use client::{VspClient, VspClientBuilder};
pub use discovery::{Discovery, StaticDiscovery};
pub use error::{ErrorCode, ProtocolError, VspError};
pub use mesh::{HealthStatus, ServiceInfo, ServiceMesh, ServiceMeshBuilder};
pub use server::{VspManager, VspManagerBuilder};
pub use stats::PerformanceStats;

// The README's examples compile as doc tests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

/// The common imports: `use vsp::prelude::*;`.
pub mod prelude {
    pub use crate::{
        ErrorCode, HealthStatus, ServiceInfo, ServiceMesh, StaticDiscovery, VspClient, VspError,
        VspManager,
    };
}
