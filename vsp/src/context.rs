//! What a handler knows about the call it serves: [`Context`] (metadata, the caller's identity,
//! the remaining deadline) and the per-call [`Metadata`] map.
//!
//! Why a task-local and not a first argument: a typed service's trait is the contract its client
//! is generated from, so an extra `cx` parameter would be plumbing in every method that does not
//! need it, and a call made from inside a handler must find the caller's deadline without being
//! handed it (the order-service → inventory-service hop must not outlive the caller). So the
//! server runs every handler inside its call's `Context`, [`Context::current`] reads it anywhere
//! in that handler's future, and a [`VspClient`](crate::VspClient) call made there takes the
//! earlier of its own deadline and the caller's. The one thing to remember: a task the handler
//! spawns is a new task, so carry the context with [`Context::scope`].

use std::fmt;
use std::sync::Arc;

use crate::protocol::Metadata;
use crate::trace::TraceContext;
use crate::transport::{Address, Identity};

/// Who is on the other end of a connection, as the server saw it when it accepted.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) address: Address,
    pub(crate) identity: Option<Identity>,
}

impl Peer {
    pub(crate) fn new(address: Address, identity: Option<Identity>) -> Arc<Peer> {
        Arc::new(Peer { address, identity })
    }
}

/// The call a handler is serving: its endpoint, the caller's metadata and identity, and the
/// caller's deadline.
///
/// Read it with [`Context::current`] anywhere inside a handler (typed or dynamic) or an auth
/// hook's future. Calls made through a [`VspClient`](crate::VspClient) inside a handler inherit
/// its deadline (see [`CallOptions::inherit_deadline`](crate::CallOptions::inherit_deadline)).
/// Metadata is not forwarded: a caller's credentials are for this service, not the next.
///
/// ```
/// #[vsp::service]
/// pub trait Whoami {
///     async fn whoami(&self) -> String;
/// }
///
/// struct Server;
///
/// impl Whoami for Server {
///     async fn whoami(&self) -> String {
///         let cx = vsp::Context::current().expect("inside a handler");
///         match cx.identity() {
///             Some(identity) => identity.to_string(),
///             None => cx.metadata().get("x-user").unwrap_or("anonymous").to_owned(),
///         }
///     }
/// }
/// ```
#[derive(Clone)]
pub struct Context {
    /// The service and endpoint names, shared by every call of the endpoint: one reference
    /// count per call, not two.
    site: Arc<CallSite>,
    peer: Arc<Peer>,
    /// `None` when empty, so a context without metadata clones without allocating.
    metadata: Option<Arc<Metadata>>,
    deadline: Option<tokio::time::Instant>,
    /// The server span's place in its trace: what calls made from the handler continue. Shared,
    /// so a context stays small and cheap to clone.
    trace: Option<Arc<TraceContext>>,
}

/// The names a [`Context`] reports: one per registered endpoint.
#[derive(Debug)]
pub(crate) struct CallSite {
    pub(crate) service: Arc<str>,
    pub(crate) endpoint: Arc<str>,
}

static NO_METADATA: Metadata = Metadata::new();

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("service", &self.site.service)
            .field("endpoint", &self.site.endpoint)
            .field("peer", &self.peer.address.to_string())
            .field("identity", &self.peer.identity)
            .field("metadata", self.metadata())
            .field("deadline", &self.deadline)
            .field("trace", &self.trace)
            .finish()
    }
}

tokio::task_local! {
    static CURRENT: Context;
}

impl Context {
    pub(crate) fn new(
        site: Arc<CallSite>,
        peer: Arc<Peer>,
        metadata: Metadata,
        deadline: Option<tokio::time::Instant>,
        trace: Option<TraceContext>,
    ) -> Self {
        Context {
            site,
            peer,
            metadata: (!metadata.is_empty()).then(|| Arc::new(metadata)),
            deadline,
            trace: trace.map(Arc::new),
        }
    }

    /// The context of the call being served, inside a handler, an auth hook, or a future run
    /// with [`Context::scope`]; `None` elsewhere.
    pub fn current() -> Option<Context> {
        CURRENT.try_with(Context::clone).ok()
    }

    /// The deadline of the call being served, if any (without cloning the context).
    pub(crate) fn current_deadline() -> Option<tokio::time::Instant> {
        CURRENT.try_with(|cx| cx.deadline).ok().flatten()
    }

    /// The trace of the call being served, if any (what a call made here continues).
    pub(crate) fn current_trace() -> Option<Arc<TraceContext>> {
        CURRENT.try_with(|cx| cx.trace.clone()).ok().flatten()
    }

    /// Runs `future` with this context as [`Context::current`]: to carry it into a task a
    /// handler spawns.
    pub async fn scope<F: std::future::Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }

    /// Calls `f` with this context as the current one (a handler function's synchronous part).
    pub(crate) fn sync_scoped<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }

    pub(crate) fn scoped<F: std::future::Future>(
        self,
        future: F,
    ) -> tokio::task::futures::TaskLocalFuture<Context, F> {
        CURRENT.scope(self, future)
    }

    /// The service this server serves.
    pub fn service(&self) -> &str {
        &self.site.service
    }

    /// The endpoint called.
    pub fn endpoint(&self) -> &str {
        &self.site.endpoint
    }

    /// The caller's metadata (empty if it sent none; Velithon's clients never send any).
    pub fn metadata(&self) -> &Metadata {
        self.metadata.as_deref().unwrap_or(&NO_METADATA)
    }

    /// The caller's identity from its TLS client certificate (mutual TLS), if it presented one.
    pub fn identity(&self) -> Option<&Identity> {
        self.peer.identity.as_ref()
    }

    /// The caller's address as the server accepted it.
    pub fn peer_address(&self) -> &Address {
        &self.peer.address
    }

    /// When the caller stops waiting, if it said (`timeout_ms`; Velithon's clients do not).
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }

    /// Where the server's span of this call sits in its distributed trace: the caller's trace
    /// (from the request's `traceparent`) or a new one. `None` only while no `tracing` subscriber
    /// records VSP's spans and the caller sent no trace. Calls made inside the handler continue it.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_deref()
    }

    /// How long the caller still waits, if it said.
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(tokio::time::Instant::now()))
    }
}
