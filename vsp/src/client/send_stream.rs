//! Calls that send a stream of items: client streams (one answer back) and bidirectional
//! streams (a stream back), for the dynamic API and the generated clients.

use futures_core::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::connection::RawResponse;
use super::response::service_error;
use super::{CallOptions, CallStream, VspClient};
use crate::error::{CallError, ErrorCode, VspError};
use crate::protocol::CLIENT_STREAM_REVISION;

impl VspClient {
    /// Calls the client-streaming endpoint `endpoint` of `service` with the arguments `body`,
    /// sends it every item of `items`, and returns its one answer.
    ///
    /// The items go out once the server has accepted the call, each under its credit (the
    /// server's window ahead of what its handler has read: a slow handler holds back `items`,
    /// not memory), then an end when `items` ends. The client's timeout covers the whole call.
    /// Dropping the future cancels the call on the server. Failover happens only before the
    /// call is accepted, when no item has been read from `items`.
    ///
    /// ```no_run
    /// # async fn run(client: vsp::VspClient) -> Result<(), vsp::VspError> {
    /// let numbers = futures::stream::iter(vec![1i64, 2, 3]);
    /// let sum: i64 = client
    ///     .call_client_stream("sums", "sum", serde_json::json!({}), numbers)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`call`](VspClient::call); `not_supported` when the endpoint takes no stream, or the
    /// server does not know streams from its caller (Velithon's Python VSP, or a VSP server of
    /// protocol revision 2); [`VspError::Encode`] or [`VspError::RequestTooLarge`] for an item
    /// that cannot be sent (the call is then cancelled).
    pub async fn call_client_stream<R, T>(
        &self,
        service: &str,
        endpoint: &str,
        body: impl Serialize,
        items: impl Stream<Item = T> + Send + 'static,
    ) -> Result<R, VspError>
    where
        R: DeserializeOwned,
        T: Serialize + Send + 'static,
    {
        self.call_client_stream_with(service, endpoint, body, items, CallOptions::default())
            .await
    }

    /// As [`call_client_stream`](VspClient::call_client_stream), with per-call options.
    ///
    /// # Errors
    /// As [`call_client_stream`](VspClient::call_client_stream).
    pub async fn call_client_stream_with<R, T>(
        &self,
        service: &str,
        endpoint: &str,
        body: impl Serialize,
        items: impl Stream<Item = T> + Send + 'static,
        options: CallOptions,
    ) -> Result<R, VspError>
    where
        R: DeserializeOwned,
        T: Serialize + Send + 'static,
    {
        self.client_stream_service::<R, Untyped, T>(service, endpoint, &body, items, options)
            .await
            .map_err(|err| match err {
                CallError::Vsp(err) => err,
                CallError::Service(never) => match never {},
            })
    }

    /// Calls the bidirectional streaming endpoint `endpoint` of `service` with the arguments
    /// `body`: `items` go to it as [`call_client_stream`](VspClient::call_client_stream)'s do
    /// while its items come back as [`call_stream`](VspClient::call_stream)'s do, both at once.
    /// Dropping the returned stream cancels the call (and stops sending `items`).
    ///
    /// ```no_run
    /// # async fn run(client: vsp::VspClient) -> Result<(), vsp::VspError> {
    /// use futures::StreamExt;
    ///
    /// let lines = futures::stream::iter(vec!["hello".to_owned(), "world".to_owned()]);
    /// let mut echoed = client
    ///     .call_bidi_stream::<String, _>("echo", "shout", serde_json::json!({}), lines)
    ///     .await?;
    /// while let Some(line) = echoed.next().await {
    ///     println!("{}", line?);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`call_client_stream`](VspClient::call_client_stream), before the call is accepted;
    /// after that, errors are the stream's last item.
    pub async fn call_bidi_stream<U, T>(
        &self,
        service: &str,
        endpoint: &str,
        body: impl Serialize,
        items: impl Stream<Item = T> + Send + 'static,
    ) -> Result<CallStream<U>, VspError>
    where
        U: DeserializeOwned,
        T: Serialize + Send + 'static,
    {
        self.call_bidi_stream_with(service, endpoint, body, items, CallOptions::default())
            .await
    }

    /// As [`call_bidi_stream`](VspClient::call_bidi_stream), with per-call options
    /// ([`CallOptions::stream_window`], [`CallOptions::idle_timeout`] for the items back).
    ///
    /// # Errors
    /// As [`call_bidi_stream`](VspClient::call_bidi_stream).
    pub async fn call_bidi_stream_with<U, T>(
        &self,
        service: &str,
        endpoint: &str,
        body: impl Serialize,
        items: impl Stream<Item = T> + Send + 'static,
        options: CallOptions,
    ) -> Result<CallStream<U>, VspError>
    where
        U: DeserializeOwned,
        T: Serialize + Send + 'static,
    {
        self.open_sending(service, endpoint, &body, items, options)
            .await
            .map_err(|(err, _)| err)
    }

    /// A generated client's client-stream call: the one answer, or the service's typed error.
    pub(crate) async fn client_stream_service<R, E, T>(
        &self,
        service: &str,
        endpoint: &str,
        body: &(impl Serialize + ?Sized),
        items: impl Stream<Item = T> + Send + 'static,
        options: CallOptions,
    ) -> Result<R, CallError<E>>
    where
        R: DeserializeOwned,
        E: DeserializeOwned,
        T: Serialize + Send + 'static,
    {
        let typed = |(err, answer): (VspError, Option<Box<RawResponse>>)| match answer
            .as_deref()
            .and_then(service_error::<E>)
        {
            Some(typed) => CallError::Service(typed),
            None => CallError::Vsp(err),
        };
        let mut answers = self
            .open_sending::<R, T>(service, endpoint, body, items, options)
            .await
            .map_err(typed)?;
        let fail = |answers: &CallStream<R>, err: VspError| match answers.typed_error::<E>() {
            Some(typed) => CallError::Service(typed),
            None => CallError::Vsp(err),
        };
        let answer = match next(&mut answers).await {
            Some(Ok(answer)) => answer,
            Some(Err(err)) => return Err(fail(&answers, err)),
            None => {
                return Err(CallError::Vsp(VspError::Remote {
                    service: service.to_owned(),
                    endpoint: endpoint.to_owned(),
                    code: ErrorCode::Protocol,
                    message: format!("`{endpoint}` ended its call without an answer"),
                }))
            }
        };
        // The stream's end follows its one item.
        match next(&mut answers).await {
            None => Ok(answer),
            Some(Err(err)) => Err(fail(&answers, err)),
            Some(Ok(_)) => Err(CallError::Vsp(VspError::Remote {
                service: service.to_owned(),
                endpoint: endpoint.to_owned(),
                code: ErrorCode::Protocol,
                message: format!("`{endpoint}` answered more than once"),
            })),
        }
    }

    /// Opens a call that sends `items` and starts sending them once it is accepted.
    pub(crate) async fn open_sending<U, T>(
        &self,
        service: &str,
        endpoint: &str,
        body: &(impl Serialize + ?Sized),
        items: impl Stream<Item = T> + Send + 'static,
        mut options: CallOptions,
    ) -> Result<CallStream<U>, (VspError, Option<Box<RawResponse>>)>
    where
        U: DeserializeOwned,
        T: Serialize + Send + 'static,
    {
        options.upload = true;
        let answers = self
            .open_stream::<U>(service, endpoint, body, options)
            .await?;
        // A server of an older revision opened it as a server stream: it would not read the
        // items (dropping the stream cancels the call).
        if answers.handle().peer_revision() < CLIENT_STREAM_REVISION
            || !answers.handle().send_items(items)
        {
            return Err((
                VspError::Remote {
                    service: service.to_owned(),
                    endpoint: endpoint.to_owned(),
                    code: ErrorCode::NotSupported,
                    message: format!(
                        "the server opened `{endpoint}` without taking a stream from its caller: it speaks an older VSP revision"
                    ),
                },
                None,
            ));
        }
        Ok(answers)
    }
}

impl VspClient {
    /// The gateway's call that sends a stream: the arguments and items as JSON, the answers as
    /// JSON, a typed error before the call opens kept as JSON with its HTTP status.
    #[cfg(feature = "gateway")]
    pub(crate) async fn call_sending_json(
        &self,
        service: &str,
        endpoint: &str,
        body: &serde_json::value::RawValue,
        items: impl Stream<Item = Box<serde_json::value::RawValue>> + Send + 'static,
        options: CallOptions,
    ) -> Result<CallStream<Box<serde_json::value::RawValue>>, (VspError, Option<super::TypedError>)>
    {
        self.open_sending(service, endpoint, body, items, options)
            .await
            .map_err(|(err, answer)| {
                let typed = answer.and_then(|answer| {
                    service_error(&answer).map(|data| super::TypedError {
                        data,
                        http_status: answer.http_status,
                    })
                });
                (err, typed)
            })
    }
}

/// The typed error of a call that has none: a `handler` error stays a [`VspError`].
#[derive(serde::Deserialize)]
enum Untyped {}

/// The next item of `stream`.
async fn next<T: DeserializeOwned>(stream: &mut CallStream<T>) -> Option<Result<T, VspError>> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}
