//! The server side: [`VspManager`] holds a service's endpoints, listens, dispatches and drains.
//!
//! Why endpoints sit behind an atomically swapped map: registering is rare and may happen while
//! serving, but every request looks an endpoint up. A copy-on-write map lets that lookup take no
//! lock at all.
//!
//! Why shutdown has two phases: first the server stops accepting and answers new requests on
//! open connections with `shutting_down` (so a client learns at once to go elsewhere) while the
//! calls already running finish; then, drained or out of time, it closes every connection.
#![doc = include_str!("../docs/hostile-peers.md")]

mod accept;
mod admission;
mod announce;
mod auth;
pub(crate) mod builder;
pub(crate) mod concurrency;
mod config;
mod connection;
mod dispatch;
mod drain;
mod endpoint;
mod ledger;
mod lifecycle;
mod limiter;
pub(crate) mod manager;
mod not_found;
mod peer_log;
mod reply;
mod response_head;
mod stream;
pub(crate) mod worker;

use accept::accept_loop;
pub use auth::{AuthHook, BearerToken, Rejection};
pub(crate) use builder::VspManagerBuilder;
pub(crate) use config::*;
pub(crate) use endpoint::{FnEndpoint, Outcome, ServiceResult, ServiceValue};
pub use ledger::Ledger;
use lifecycle::Owner;
pub(crate) use lifecycle::{EndpointEntry, Lifecycle, ManagerInner, Registry};
pub(crate) use manager::VspManager;
pub(crate) use peer_log::PeerLog;
pub(crate) use stream::{
    one_item, ItemsEndpoint, Opening, ServiceStreamResult, ServiceStreamValue, StreamEndpoint,
};
pub(crate) use worker::WorkerType;
