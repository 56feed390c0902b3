//! VSP, the Velithon Service Protocol in Rust: call services by name over a service mesh, with
//! multiplexed JSON connections (TCP, Unix domain sockets, or in memory) that speak the same wire
//! format as Velithon's Python VSP.
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
//! Most users write a trait and let [`service`] generate the server adapter and a typed client;
//! [`VspClient::call`] and [`VspManager::endpoint`] are the same wire without a trait.
//!
//! Every public item has one path. The types a service or a caller uses every day are at the
//! root: [`VspManager`], [`VspClient`], [`ServiceMesh`], [`ServiceInfo`], [`StaticDiscovery`],
//! the balancers, the errors, [`Context`], [`Metadata`], [`Streaming`], [`Address`]. A public
//! module holds what its subsystem adds: [`protocol`] (the wire's reserved names and limits),
//! [`transport`] (the [`Connector`](transport::Connector) and [`Listener`](transport::Listener)
//! seam: TCP, Unix domain sockets, in-memory), [`balancer`] (the
//! [`LoadBalancer`](balancer::LoadBalancer) trait for your own), [`discovery`] (the
//! [`Discovery`](discovery::Discovery) trait, mDNS, Consul, etcd, DNS SRV), [`server`] (auth
//! hooks and the [`Ledger`](server::Ledger)), [`trace`], `tls` and, with feature `gateway`,
//! `gateway` (an HTTP gateway, OpenAPI and a service explorer). `ARCHITECTURE.md` in the
//! repository shows the layers and the path of a call.
//! Logging goes through `tracing`.
//! Feature `cli` builds the `vsp` command line.
#![doc = include_str!("docs/tour.md")]
#![doc = include_str!("docs/testing.md")]
#![doc = include_str!("docs/resilience.md")]
#![doc = include_str!("docs/streams.md")]
#![doc = include_str!("docs/cli.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[doc(hidden)]
#[path = "private/mod.rs"]
pub mod __private;
pub mod balancer;
mod client;
pub mod compat;
mod context;
mod deadline;
pub mod discovery;
mod error;
mod fast_map;
#[cfg(feature = "gateway")]
#[cfg_attr(docsrs, doc(cfg(feature = "gateway")))]
pub mod gateway;
mod instance;
mod mesh;
mod prometheus;
pub mod protocol;
pub mod server;
mod shard;
mod stats;
mod stream;
mod sync;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
pub mod trace;
pub mod transport;

#[cfg(test)]
mod layering;

/// A boxed, sendable future: what the async methods of VSP's plug-in traits
/// ([`Discovery`](discovery::Discovery), [`Connector`](transport::Connector), [`Listener`](transport::Listener))
/// return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Turns a trait into a VSP service: its endpoints, a server adapter and a typed client.
///
/// On a trait whose methods are `async fn(&self, named args...) -> T` or `-> Result<T, E>`,
/// `#[vsp::service]` (optionally `#[vsp::service(name = "user-service")]`; by default the
/// kebab-case of the trait name) generates:
///
/// - the trait, its methods returning `Send` futures, so implementations written with plain
///   `async fn` run on a multi-threaded runtime;
/// - `XxxServer<S>`: wraps an implementation; [`VspManager::serve`] registers each method as an
///   endpoint whose request body is a JSON object keyed by the parameter names (what a dynamic
///   [`VspClient::call`] or a Python Velithon client sends);
/// - `XxxClient`: `Clone`, made with `XxxClient::new(vsp_client)` (or `From<VspClient>`, which
///   remains when a method is itself named `new`), with one async method per trait method taking
///   the same arguments. A method returning `T` returns `Result<T, VspError>`; one returning
///   `Result<T, E>` returns `Result<T, CallError<E>>`, where `CallError::Service(E)` is the
///   service's own error, typed, and `CallError::Vsp` everything else. The client also carries
///   `SERVICE_NAME`, one `&str` const per endpoint (`GET_USER`) and `ENDPOINTS`.
///
/// A method returning [`Streaming<T>`](Streaming) (or `Result<Streaming<T>, E>`) is a streaming
/// endpoint: its client method returns a [`CallStream<T>`](CallStream) of the items, typed (see
/// the README's "Streams and cancellation").
///
/// Method attributes: `#[vsp(name = "wire-name")]` renames the endpoint on the wire;
/// `#[vsp(idempotent)]` marks it safe to send again (listed in `ENDPOINTS`).
///
/// The service describes itself (the built-in `vsp.describe`, see [`ServiceDescription`]): each
/// method's parameter names, idempotence and `///` comment, and JSON Schemas of its arguments,
/// result and error. The schemas come from [schemars](https://docs.rs/schemars) with the cargo
/// feature `schema` (derive `schemars::JsonSchema` on your types); a type without one gets the
/// open schema `{}`. `#[vsp::service(strict_schema)]` makes a type without a schema a compile
/// error at the type instead. The names `health` and `vsp.describe` are reserved.
///
/// Arguments and results must be `Serialize + DeserializeOwned`; a type that is not is reported
/// at the type. Non-async methods, a missing `&self`, pattern arguments, generic methods or
/// traits and duplicate endpoint names are compile errors at the offending tokens. A service
/// method's error `E` travels as `{"error": "<E as text>", "data": <E as JSON>}` with code
/// `handler`: Python clients read the text (`E`'s `Display` when it has one, else its JSON),
/// generated clients the typed `E`. `CallError<E>` is a `std::error::Error` (for `?` into
/// `Box<dyn Error>`) when `E` implements `Display` and `Debug`, as below.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use vsp::{CallError, ServiceInfo, ServiceMesh, VspClient, VspManager};
///
/// #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
/// pub struct User {
///     id: String,
///     name: String,
/// }
///
/// #[derive(Debug, Serialize, Deserialize, PartialEq)]
/// pub enum UserError {
///     NotFound(String),
/// }
///
/// impl std::fmt::Display for UserError {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         match self {
///             UserError::NotFound(id) => write!(f, "no user {id}"),
///         }
///     }
/// }
///
/// #[vsp::service]
/// pub trait UserService {
///     /// Looks a user up by id.
///     async fn get_user(&self, user_id: String) -> Result<User, UserError>;
///     #[vsp(name = "ping", idempotent)]
///     async fn health_check(&self) -> String;
/// }
///
/// struct Users;
///
/// impl UserService for Users {
///     async fn get_user(&self, user_id: String) -> Result<User, UserError> {
///         match user_id.as_str() {
///             "123" => Ok(User { id: user_id, name: "John Doe".into() }),
///             _ => Err(UserError::NotFound(user_id)),
///         }
///     }
///
///     async fn health_check(&self) -> String {
///         "pong".into()
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = VspManager::builder(UserServiceClient::SERVICE_NAME).build();
/// manager.serve(UserServiceServer::new(Users))?;
/// let addr = manager.start_server("127.0.0.1", 0).await?;
///
/// let mesh = ServiceMesh::new();
/// mesh.register(ServiceInfo::new("user-service", "127.0.0.1", addr.port()))?;
/// let users = UserServiceClient::new(VspClient::builder(mesh).build());
/// assert_eq!(users.get_user("123".into()).await?.name, "John Doe");
/// match users.get_user("7".into()).await {
///     Err(CallError::Service(UserError::NotFound(id))) => assert_eq!(id, "7"),
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(users.health_check().await?, "pong");
/// assert_eq!(UserServiceClient::HEALTH_CHECK, "ping");
/// # manager.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub use vsp_macros::service;

/// Writes the body of an async function that calls one service method: the `vsp_call` idiom.
///
/// `#[vsp::call(Trait::method)]` goes on an `async fn` declared without a body whose first
/// parameter is the client (`&VspClient`, or the trait's generated client) and whose other
/// parameters are the method's, in order. The return type is the generated client's
/// (`Result<T, VspError>`, or `Result<T, CallError<E>>` for methods returning `Result<T, E>`),
/// or any result whose error converts from it. A method that does not exist, or arguments that do
/// not match it, fail to compile at your tokens.
///
/// ```
/// use vsp::{VspClient, VspError};
///
/// #[vsp::service]
/// pub trait Greeter {
///     async fn greet(&self, name: String) -> String;
/// }
///
/// #[vsp::call(Greeter::greet)]
/// async fn greet_user(client: &VspClient, name: String) -> Result<String, VspError>;
/// ```
pub use vsp_macros::call;

// One path per public item: the types every service and every caller uses are here, at the
// root; a public module holds only what its subsystem adds (plug-in traits, feature-gated
// backends, advanced settings), never a second path to a root item.
pub use balancer::consistent_hash::ConsistentHashBalancer;
pub use balancer::least_loaded::LeastLoadedBalancer;
pub use balancer::peak_ewma::PeakEwmaBalancer;
pub use balancer::round_robin::RoundRobinBalancer;
pub use balancer::weighted::WeightedBalancer;
pub use client::{
    CallInfo, CallOptions, CallStats, CallStream, ClientMetrics, EndpointPolicy, Hedge,
    InstanceMetrics, Interceptor, Policies, PoolStats, VspClient, VspClientBuilder,
};
pub use context::Context;
pub use discovery::static_list::StaticDiscovery;
pub use error::{CallError, ErrorCode, HttpStatus, ProtocolError, VspError};
pub use instance::{HealthPolicy, HealthStatus, Instance, InstanceState, ServiceInfo};
pub use mesh::{ServiceMesh, ServiceMeshBuilder};
pub use protocol::compression::Compression;
pub use protocol::describe::{EndpointDescription, InputStream, ServiceDescription};
pub use protocol::message::VspMessage;
pub use protocol::metadata::Metadata;
pub use server::builder::VspManagerBuilder;
pub use server::concurrency::AdaptiveConcurrency;
pub use server::manager::{EndpointInfo, Service, VspManager};
pub use server::worker::WorkerType;
pub use stats::{EndpointStats, PerformanceStats};
pub use stream::Streaming;
pub use transport::address::{Address, AddressError};

// The README's Getting started compiles as a doc test, so it cannot drift from the API (CI also
// builds and runs it as a crate of its own).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;
