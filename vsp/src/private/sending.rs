//! The generated code's registrations and calls of methods that take a stream from their caller
//! (`chunks: Streaming<Chunk>`): client streams (one answer) and bidirectional streams.

use std::future::Future;

use futures_core::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{unwire, Codec, ErrorWays, SchemaFn, SchemaGen, Wire};
use crate::client::CallStream;
use crate::error::{CallError, VspError};
use crate::protocol::{EndpointDescription, InputStream};
use crate::server::{one_item, ItemsEndpoint, Opening, ServiceStreamResult, ServiceStreamValue};
use crate::stream::Streaming;
use crate::CallOptions;
use crate::{VspClient, VspManager};

/// The description of a method taking a stream: its parameter and the schema of one item.
pub fn with_input_stream(
    description: EndpointDescription,
    param: &'static str,
    item: SchemaFn,
) -> EndpointDescription {
    let mut generator = SchemaGen::new(false);
    let schema = item(&mut generator);
    EndpointDescription {
        input_stream: Some(InputStream::new(param).item_schema(generator.finish(schema))),
        ..description
    }
}

/// Registers a method taking a stream and returning `Result<T, E>`.
pub fn register_client_stream_fallible<F, A, I, Fut, T, E, CT, CE>(
    manager: &VspManager,
    description: EndpointDescription,
    ways: ErrorWays<E>,
    _codecs: (CT, CE),
    handler: F,
) -> Result<(), VspError>
where
    F: Fn(A, Streaming<I>) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    I: DeserializeOwned + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    CT: Codec<T>,
    CE: Codec<E>,
{
    register(
        manager,
        description,
        false,
        handler,
        move |out: Result<T, E>| {
            let out = out
                .map(|answer| one_item(Wire::<T, CT>::new(answer)))
                .map_err(Wire::<E, CE>::new);
            ServiceStreamResult(out, ways)
        },
    )
}

/// Registers a method taking a stream and returning a plain `T`.
pub fn register_client_stream_infallible<F, A, I, Fut, T, C>(
    manager: &VspManager,
    description: EndpointDescription,
    _codec: C,
    handler: F,
) -> Result<(), VspError>
where
    F: Fn(A, Streaming<I>) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    I: DeserializeOwned + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    C: Codec<T>,
{
    register(manager, description, false, handler, |out: T| {
        ServiceStreamValue(one_item(Wire::<T, C>::new(out)))
    })
}

/// Registers a method taking a stream and returning `Result<Streaming<T>, E>`.
pub fn register_bidi_stream_fallible<F, A, I, Fut, T, E, CT, CE>(
    manager: &VspManager,
    description: EndpointDescription,
    ways: ErrorWays<E>,
    _codecs: (CT, CE),
    handler: F,
) -> Result<(), VspError>
where
    F: Fn(A, Streaming<I>) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    I: DeserializeOwned + Send + 'static,
    Fut: Future<Output = Result<Streaming<T>, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    CT: Codec<T>,
    CE: Codec<E>,
{
    register(
        manager,
        description,
        true,
        handler,
        move |out: Result<Streaming<T>, E>| {
            let out = out
                .map(|items| items.map_items(Wire::<T, CT>::new))
                .map_err(Wire::<E, CE>::new);
            ServiceStreamResult(out, ways)
        },
    )
}

/// Registers a method taking a stream and returning `Streaming<T>`.
pub fn register_bidi_stream_infallible<F, A, I, Fut, T, C>(
    manager: &VspManager,
    description: EndpointDescription,
    _codec: C,
    handler: F,
) -> Result<(), VspError>
where
    F: Fn(A, Streaming<I>) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    I: DeserializeOwned + Send + 'static,
    Fut: Future<Output = Streaming<T>> + Send + 'static,
    T: Send + 'static,
    C: Codec<T>,
{
    register(manager, description, true, handler, |out: Streaming<T>| {
        ServiceStreamValue(out.map_items(Wire::<T, C>::new))
    })
}

/// An endpoint taking a stream whose handler's output is answered through `opening`.
fn register<F, A, I, Fut, W, R>(
    manager: &VspManager,
    description: EndpointDescription,
    streaming: bool,
    handler: F,
    opening: W,
) -> Result<(), VspError>
where
    F: Fn(A, Streaming<I>) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    I: DeserializeOwned + Send + 'static,
    Fut: Future + Send + 'static,
    W: Fn(Fut::Output) -> R + Copy + Send + Sync + 'static,
    R: Opening,
{
    let endpoint = ItemsEndpoint::new(move |args: A, items: Streaming<I>| {
        let running = handler(args, items);
        async move { opening(running.await) }
    });
    let name = description.name.clone();
    let description = EndpointDescription {
        streaming,
        ..description
    };
    manager.register_entry(name, description, Box::new(endpoint))
}

/// Calls a method taking a stream and returning `Result<T, E>`.
pub async fn call_fallible_sending<T, E, I, CT: Codec<T>, CE: Codec<E>>(
    client: &VspClient,
    service: &str,
    endpoint: &str,
    options: CallOptions,
    args: &impl Serialize,
    items: impl Stream<Item = I> + Send + 'static,
    _codecs: (CT, CE),
) -> Result<T, CallError<E>>
where
    I: Serialize + Send + 'static,
{
    client
        .client_stream_service::<Wire<T, CT>, Wire<E, CE>, I>(
            service, endpoint, args, items, options,
        )
        .await
        .map(|wire| wire.0)
        .map_err(unwire)
}

/// Calls a method taking a stream and returning a plain `T`.
pub async fn call_infallible_sending<T, I, C: Codec<T>>(
    client: &VspClient,
    service: &str,
    endpoint: &str,
    options: CallOptions,
    args: &impl Serialize,
    items: impl Stream<Item = I> + Send + 'static,
    _codec: C,
) -> Result<T, VspError>
where
    I: Serialize + Send + 'static,
{
    client
        .call_client_stream_with::<Wire<T, C>, I>(service, endpoint, args, items, options)
        .await
        .map(|wire| wire.0)
}

/// Calls a method taking a stream and returning `Result<Streaming<T>, E>`. The call is open
/// before the handler runs, so its typed error arrives as the stream's last item.
pub async fn call_fallible_stream_sending<T, E, I, CT: Codec<T>, CE: Codec<E>>(
    client: &VspClient,
    service: &str,
    endpoint: &str,
    options: CallOptions,
    args: &impl Serialize,
    items: impl Stream<Item = I> + Send + 'static,
    _codecs: (CT, CE),
) -> Result<CallStream<T>, CallError<E>>
where
    I: Serialize + Send + 'static,
{
    client
        .open_sending::<Wire<T, CT>, I>(service, endpoint, args, items, options)
        .await
        .map(CallStream::retype)
        .map_err(|(err, _)| CallError::Vsp(err))
}

/// Calls a method taking a stream and returning `Streaming<T>`.
pub async fn call_infallible_stream_sending<T, I, C: Codec<T>>(
    client: &VspClient,
    service: &str,
    endpoint: &str,
    options: CallOptions,
    args: &impl Serialize,
    items: impl Stream<Item = I> + Send + 'static,
    _codec: C,
) -> Result<CallStream<T>, VspError>
where
    I: Serialize + Send + 'static,
{
    client
        .open_sending::<Wire<T, C>, I>(service, endpoint, args, items, options)
        .await
        .map(CallStream::retype)
        .map_err(|(err, _)| err)
}
