//! Registering handlers that take a stream of items from their caller: client streams (one
//! answer) and bidirectional streams (a stream back).

use std::fmt::Display;
use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{ItemsEndpoint, Opening};
use crate::error::{ErrorCode, VspError};
use crate::protocol::{EndpointDescription, InputStream};
use crate::server::reply::Reply;
use crate::server::VspManager;
use crate::stream::Streaming;

/// A client stream's one answer, sent as a stream of one item (or its error, the stream's end).
pub(crate) struct OneAnswer<T, E>(pub(crate) Result<T, E>);

impl<T, E> Opening for OneAnswer<T, E>
where
    T: Serialize + Send + 'static,
    E: Display + Send + 'static,
{
    type Item = T;

    fn open(self, reply: Reply) -> Option<(Streaming<T>, Reply)> {
        match self.0 {
            Ok(answer) => Some((one_item(answer), reply)),
            Err(err) => {
                reply.error(ErrorCode::Handler, &err.to_string());
                None
            }
        }
    }
}

/// A stream of the one item `item`.
pub(crate) fn one_item<T: Send + 'static>(item: T) -> Streaming<T> {
    Streaming::unfold(
        Some(item),
        |item| async move { item.map(|item| (item, None)) },
    )
}

impl VspManager {
    /// Registers `handler` as the client-streaming endpoint `name`: it takes its arguments as
    /// [`endpoint`](VspManager::endpoint)'s do, and the caller's items as a
    /// [`Streaming`](crate::Streaming) of `T` (read it as a `Stream`), and answers once.
    ///
    /// The caller sends items under this server's credit
    /// ([`client_stream_window`](crate::VspManagerBuilder::client_stream_window) ahead of what
    /// the handler has read), so a fast caller holds back rather than fill the server. The
    /// handler's stream ends at the caller's end; an item that does not decode as `T` ends the
    /// call with `bad_request`; a cancel, the caller leaving, its deadline or the server's
    /// shutdown stop the handler. Call it with
    /// [`VspClient::call_client_stream`](crate::VspClient::call_client_stream).
    ///
    /// ```
    /// use futures::StreamExt;
    /// use serde_json::Value;
    /// use vsp::{Streaming, VspError, VspManager};
    ///
    /// let manager = VspManager::builder("sums").build();
    /// manager.client_stream_endpoint("sum", |_args: Value, numbers: Streaming<i64>| async move {
    ///     Ok::<_, VspError>(numbers.fold(0, |sum, n| async move { sum + n }).await)
    /// })?;
    /// # Ok::<(), VspError>(())
    /// ```
    ///
    /// # Errors
    /// [`VspError::DuplicateEndpoint`] if `name` is taken.
    pub fn client_stream_endpoint<F, A, T, Fut, R, E>(
        &self,
        name: impl Into<String>,
        handler: F,
    ) -> Result<(), VspError>
    where
        F: Fn(A, Streaming<T>) -> Fut + Send + Sync + 'static,
        A: DeserializeOwned + Send + 'static,
        T: DeserializeOwned + Send + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Serialize + Send + 'static,
        E: Display + Send + 'static,
    {
        let name = name.into();
        let description = EndpointDescription {
            input_stream: Some(InputStream::new("items")),
            ..EndpointDescription::new(name.clone())
        };
        let endpoint = ItemsEndpoint::new(move |args: A, items: Streaming<T>| {
            let running = handler(args, items);
            async move { OneAnswer(running.await) }
        });
        self.register_entry(name, description, Box::new(endpoint))
    }

    /// Registers `handler` as the bidirectional streaming endpoint `name`: it takes the
    /// caller's items as [`client_stream_endpoint`](VspManager::client_stream_endpoint)'s do and
    /// returns a [`Streaming`](crate::Streaming) of items to send back, as
    /// [`stream_endpoint`](VspManager::stream_endpoint)'s do; both directions flow at once,
    /// each under the other side's credit. Call it with
    /// [`VspClient::call_bidi_stream`](crate::VspClient::call_bidi_stream).
    ///
    /// ```
    /// use futures::StreamExt;
    /// use serde_json::Value;
    /// use vsp::{Streaming, VspError, VspManager};
    ///
    /// let manager = VspManager::builder("echo").build();
    /// manager.bidi_stream_endpoint("shout", |_args: Value, lines: Streaming<String>| async move {
    ///     Ok::<_, VspError>(Streaming::new(lines.map(|line| line.to_uppercase())))
    /// })?;
    /// # Ok::<(), VspError>(())
    /// ```
    ///
    /// # Errors
    /// [`VspError::DuplicateEndpoint`] if `name` is taken.
    pub fn bidi_stream_endpoint<F, A, T, Fut, U, E>(
        &self,
        name: impl Into<String>,
        handler: F,
    ) -> Result<(), VspError>
    where
        F: Fn(A, Streaming<T>) -> Fut + Send + Sync + 'static,
        A: DeserializeOwned + Send + 'static,
        T: DeserializeOwned + Send + 'static,
        Fut: Future<Output = Result<Streaming<U>, E>> + Send + 'static,
        U: Serialize + Send + 'static,
        E: Display + Send + 'static,
    {
        let name = name.into();
        let description = EndpointDescription {
            input_stream: Some(InputStream::new("items")),
            streaming: true,
            ..EndpointDescription::new(name.clone())
        };
        self.register_entry(name, description, Box::new(ItemsEndpoint::new(handler)))
    }
}
