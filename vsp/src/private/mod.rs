//! Support for the code that `#[vsp::service]` and `#[vsp::call]` generate. Not a public API:
//! it changes without notice.
//!
//! By job: what travels and how it is checked (`travel`), what is picked per type where the
//! macro expands (`probes`), the JSON Schemas of `vsp.describe` (`schema`), and here the
//! registration and the calls themselves.

mod probes;
mod schema;
mod sending;
mod travel;

pub use probes::*;
pub use schema::*;
pub use sending::*;
pub use travel::*;

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use futures_core::Stream;
pub use serde;

use crate::client::CallOptions;
use crate::client::CallStream;
use crate::error::{CallError, VspError};
use crate::protocol::EndpointDescription;
use crate::server::{
    FnEndpoint, Opening, Outcome, ServiceResult, ServiceStreamResult, ServiceStreamValue,
    ServiceValue, StreamEndpoint,
};
use crate::stream::Streaming;
use crate::{VspClient, VspManager};
use travel::unwire;

/// Registers a service method returning `Result<T, E>`; `E` travels typed, as text and with
/// its HTTP status (`ways`). `T` and `E` are written through their codecs.
pub fn register_fallible<F, A, Fut, T, E, CT, CE>(
    manager: &VspManager,
    description: EndpointDescription,
    ways: ErrorWays<E>,
    _codecs: (CT, CE),
    handler: F,
) -> Result<(), VspError>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    CT: Codec<T>,
    CE: Codec<E>,
{
    register_unary(manager, description, handler, move |out: Result<T, E>| {
        ServiceResult(
            out.map(Wire::<T, CT>::new).map_err(Wire::<E, CE>::new),
            ways,
        )
    })
}

/// Registers a service method returning a plain `T`.
pub fn register_infallible<F, A, Fut, T, C>(
    manager: &VspManager,
    description: EndpointDescription,
    _codec: C,
    handler: F,
) -> Result<(), VspError>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    C: Codec<T>,
{
    register_unary(manager, description, handler, |out| {
        ServiceValue(Wire::<T, C>::new(out))
    })
}

/// Registers a service method returning `Result<Streaming<T>, E>`; `E` travels typed.
pub fn register_fallible_stream<F, A, Fut, T, E, CT, CE>(
    manager: &VspManager,
    description: EndpointDescription,
    ways: ErrorWays<E>,
    _codecs: (CT, CE),
    handler: F,
) -> Result<(), VspError>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    Fut: Future<Output = Result<Streaming<T>, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    CT: Codec<T>,
    CE: Codec<E>,
{
    register_stream(
        manager,
        description,
        handler,
        move |out: Result<Streaming<T>, E>| {
            let out = out
                .map(|items| items.map_items(Wire::<T, CT>::new))
                .map_err(Wire::<E, CE>::new);
            ServiceStreamResult(out, ways)
        },
    )
}

/// Registers a service method returning `Streaming<T>`.
pub fn register_infallible_stream<F, A, Fut, T, C>(
    manager: &VspManager,
    description: EndpointDescription,
    _codec: C,
    handler: F,
) -> Result<(), VspError>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    Fut: Future<Output = Streaming<T>> + Send + 'static,
    T: Send + 'static,
    C: Codec<T>,
{
    register_stream(manager, description, handler, |out: Streaming<T>| {
        ServiceStreamValue(out.map_items(Wire::<T, C>::new))
    })
}

// The four entry points above are one per shape of method, as the macro names them; the work
// is done once per kind (unary, stream), here.

/// A unary endpoint whose handler's output becomes its answer through `answer`.
fn register_unary<F, A, Fut, W, R>(
    manager: &VspManager,
    description: EndpointDescription,
    handler: F,
    answer: W,
) -> Result<(), VspError>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    Fut: Future + Send + 'static,
    W: Fn(Fut::Output) -> R + Copy + Send + Sync + 'static,
    R: Outcome,
{
    let endpoint = FnEndpoint::new(move |args: A| {
        let running = handler(args);
        async move { answer(running.await) }
    });
    let name = description.name.clone();
    manager.register(name, description, Box::new(endpoint))
}

/// A streaming endpoint whose handler's output opens its stream through `opening`.
fn register_stream<F, A, Fut, W, R>(
    manager: &VspManager,
    description: EndpointDescription,
    handler: F,
    opening: W,
) -> Result<(), VspError>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    Fut: Future + Send + 'static,
    W: Fn(Fut::Output) -> R + Copy + Send + Sync + 'static,
    R: Opening,
{
    let endpoint = StreamEndpoint::new(move |args: A| {
        let running = handler(args);
        async move { opening(running.await) }
    });
    let name = description.name.clone();
    manager.register_stream(name, description, Box::new(endpoint))
}

/// Calls a method returning `Result<Streaming<T>, E>`: an error before the stream opens is the
/// service's `E`, typed.
#[allow(clippy::too_many_arguments)]
pub async fn call_fallible_stream<T, E, CT: Codec<T>, CE: Codec<E>>(
    client: &VspClient,
    service: &str,
    endpoint: &str,
    options: CallOptions,
    args: &impl Serialize,
    _codecs: (CT, CE),
) -> Result<CallStream<T>, CallError<E>> {
    client
        .call_stream_service::<Wire<T, CT>, Wire<E, CE>>(service, endpoint, args, options)
        .await
        .map(CallStream::retype)
        .map_err(unwire)
}

/// Calls a method returning `Streaming<T>`.
pub async fn call_infallible_stream<T, C: Codec<T>>(
    client: &VspClient,
    service: &str,
    endpoint: &str,
    options: CallOptions,
    args: &impl Serialize,
    _codec: C,
) -> Result<CallStream<T>, VspError> {
    client
        .call_stream_with::<Wire<T, C>>(service, endpoint, args, options)
        .await
        .map(CallStream::retype)
}

/// The options a generated client's call starts from: the method's declared policy.
pub fn declared(policy: &'static crate::EndpointPolicy) -> CallOptions {
    CallOptions::new().declared(policy)
}

/// A method's `#[vsp(...)]` policy, as a constant.
pub const fn policy(
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    idempotent: bool,
    hedge_after_ms: Option<u64>,
    hedge_percentile: Option<f64>,
) -> crate::EndpointPolicy {
    let mut policy = crate::EndpointPolicy::new();
    if let Some(ms) = timeout_ms {
        policy.timeout = Some(std::time::Duration::from_millis(ms));
    }
    policy.max_attempts = max_attempts;
    if idempotent {
        policy.idempotent = Some(true);
    }
    if let Some(ms) = hedge_after_ms {
        policy.hedge = Some(crate::Hedge::After(std::time::Duration::from_millis(ms)));
    }
    if let Some(q) = hedge_percentile {
        policy.hedge = Some(crate::Hedge::Percentile(q));
    }
    policy
}

/// Calls a method returning `Result<T, E>`.
pub async fn call_fallible<T, E, CT: Codec<T>, CE: Codec<E>>(
    client: &VspClient,
    service: &str,
    endpoint: &str,
    options: CallOptions,
    args: &impl Serialize,
    _codecs: (CT, CE),
) -> Result<T, CallError<E>> {
    client
        .call_service::<Wire<T, CT>, Wire<E, CE>>(service, endpoint, args, options)
        .await
        .map(|wire| wire.0)
        .map_err(unwire)
}

/// Calls a method returning a plain `T`.
pub async fn call_infallible<T, C: Codec<T>>(
    client: &VspClient,
    service: &str,
    endpoint: &str,
    options: CallOptions,
    args: &impl Serialize,
    _codec: C,
) -> Result<T, VspError> {
    client
        .call_with::<Wire<T, C>>(service, endpoint, args, options)
        .await
        .map(|wire| wire.0)
}

/// What a `#[vsp::call]` function declared as failing with `VspError` may return: only the
/// result of a method that fails with `VspError` (one that does not return `Result<T, E>`).
#[diagnostic::on_unimplemented(
    message = "this `#[vsp::call]` function fails with `VspError`, but the method's result is `{Self}`",
    label = "the method fails with `CallError<E>`, not `VspError`",
    note = "a service method returning `Result<T, E>` fails with `vsp::CallError<E>` (the service's own `E`, or a `VspError`): declare the function's error as `CallError<E>`"
)]
pub trait VspErrorOnly<T> {
    fn into_result(self) -> Result<T, VspError>;
}

impl<T> VspErrorOnly<T> for Result<T, VspError> {
    fn into_result(self) -> Result<T, VspError> {
        self
    }
}

/// The body of a `#[vsp::call]` function declared as failing with `VspError`.
pub fn vsp_error_only<T, R: VspErrorOnly<T>>(result: R) -> Result<T, VspError> {
    result.into_result()
}
