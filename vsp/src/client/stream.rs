//! A server stream on the calling side: [`CallStream`], the typed items of a streaming
//! endpoint as they arrive.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::{Instant, Sleep};

use super::connection::{CallFailure, RawResponse, StreamHandle};
use super::response::{remote_error, service_error};
use super::{CallOptions, VspClient};
use crate::error::{CallError, ErrorCode, VspError};

/// The items of a streaming endpoint, typed, in order: a [`Stream`] of `Result<T, VspError>`.
///
/// The stream ends after its last item (`None`), or with one error item: the handler's error,
/// the deadline (`Timeout`), the server's shutdown (`shutting_down`), a broken connection. The
/// items are read under credit: the server sends at most the call's window ahead of what was
/// read, so a slow reader holds back the server, not its memory. Dropping the stream before its
/// end cancels it on the server at once.
pub struct CallStream<T> {
    handle: Box<StreamHandle>,
    service: String,
    endpoint: String,
    /// The whole stream's deadline, and its length (for the error).
    deadline: Option<(Pin<Box<Sleep>>, Duration)>,
    /// The per-item idle timeout, restarted by each item.
    idle: Option<(Pin<Box<Sleep>>, Duration)>,
    done: bool,
    /// The end frame of a `handler` error, where a service's typed error may be.
    failed: Option<Box<RawResponse>>,
    _items: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for CallStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStream")
            .field("service", &self.service)
            .field("endpoint", &self.endpoint)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T> CallStream<T> {
    /// The same stream, read as items of `U` (the generated client's codec wrapper, undone).
    pub(crate) fn retype<U>(self) -> CallStream<U> {
        CallStream {
            handle: self.handle,
            service: self.service,
            endpoint: self.endpoint,
            deadline: self.deadline,
            idle: self.idle,
            done: self.done,
            failed: self.failed,
            _items: PhantomData,
        }
    }

    /// The call's typed error, after the stream ended with a `handler` error that carries one.
    pub(crate) fn typed_error<E: DeserializeOwned>(&self) -> Option<E> {
        self.failed.as_deref().and_then(service_error)
    }

    /// The call's typed error as JSON with its HTTP status, after the stream ended with one.
    #[cfg(feature = "gateway")]
    pub(crate) fn typed_error_json(&self) -> Option<super::TypedError> {
        let answer = self.failed.as_deref()?;
        service_error(answer).map(|data| super::TypedError {
            data,
            http_status: answer.http_status,
        })
    }

    pub(super) fn handle(&self) -> &StreamHandle {
        &self.handle
    }
}

impl<T> CallStream<T> {
    /// What the stream's end frame says: nothing more (`None`), or its error.
    fn end(&mut self, frame: RawResponse) -> Option<Result<T, VspError>> {
        let code = frame.error_code.as_ref()?;
        let error = match (code, &self.deadline) {
            // The server stopped it at the deadline: the same timeout as ours.
            (ErrorCode::Timeout, Some((_, after))) => VspError::Timeout {
                service: self.service.clone(),
                endpoint: self.endpoint.clone(),
                after: *after,
            },
            _ => remote_error(&self.service, &self.endpoint, code, &frame),
        };
        if frame.error_code == Some(ErrorCode::Handler) {
            self.failed = Some(Box::new(frame));
        }
        Some(Err(error))
    }

    /// The error of a stream whose connection failed, or whose own item could not be sent.
    fn failure(&self, failure: CallFailure) -> VspError {
        let (service, endpoint) = (self.service.clone(), self.endpoint.clone());
        let reason = match failure {
            CallFailure::Closed(reason) | CallFailure::NotSent(reason) => reason,
            CallFailure::Encode(source) => {
                return VspError::Encode {
                    service,
                    endpoint,
                    source,
                }
            }
            CallFailure::TooLarge { len, max } => {
                return VspError::RequestTooLarge {
                    service,
                    endpoint,
                    len,
                    max,
                }
            }
            other => format!("{other:?}"),
        };
        VspError::ConnectionClosed {
            service,
            endpoint,
            instance: self.handle.instance().to_owned(),
            reason,
        }
    }
}

impl<T: DeserializeOwned> Stream for CallStream<T> {
    type Item = Result<T, VspError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.handle.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.stream_end == Some(true) => {
                this.done = true;
                Poll::Ready(this.end(frame))
            }
            Poll::Ready(Some(Ok(item))) => {
                if let Some((timer, idle)) = &mut this.idle {
                    timer.as_mut().reset(Instant::now() + *idle);
                }
                Poll::Ready(Some(serde_json::from_slice(item.body()).map_err(
                    |source| VspError::Decode {
                        service: this.service.clone(),
                        endpoint: this.endpoint.clone(),
                        source,
                    },
                )))
            }
            Poll::Ready(Some(Err(failure))) => {
                this.done = true;
                Poll::Ready(Some(Err(this.failure(failure))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let expired = [&mut this.deadline, &mut this.idle]
                    .into_iter()
                    .flatten()
                    .find_map(|(timer, after)| {
                        timer.as_mut().poll(cx).is_ready().then_some(*after)
                    });
                match expired {
                    Some(after) => {
                        // Dropped with the stream, the handle cancels it on the server.
                        this.done = true;
                        Poll::Ready(Some(Err(VspError::Timeout {
                            service: this.service.clone(),
                            endpoint: this.endpoint.clone(),
                            after,
                        })))
                    }
                    None => Poll::Pending,
                }
            }
        }
    }
}

impl VspClient {
    /// Calls the streaming endpoint `endpoint` of `service` and returns its items as they come,
    /// once the server has accepted the call (an error before that, such as `not_found` or
    /// `bad_request`, is this call's error).
    ///
    /// The client's timeout covers the whole stream; see
    /// [`call_stream_with`](VspClient::call_stream_with) for a per-item idle timeout and the
    /// credit window. Failover happens only before the stream opens: once an item may have
    /// been received, nothing is sent again.
    ///
    /// # Errors
    /// As [`call`](VspClient::call); `not_supported` when the endpoint answers once (call it
    /// with `call`), or when the peer does not know streams (Velithon's Python VSP).
    pub async fn call_stream<T: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        body: impl Serialize,
    ) -> Result<CallStream<T>, VspError> {
        self.call_stream_with(service, endpoint, body, CallOptions::default())
            .await
    }

    /// As [`call_stream`](VspClient::call_stream), with per-call options
    /// ([`CallOptions::stream_window`], [`CallOptions::idle_timeout`]).
    ///
    /// # Errors
    /// As [`call_stream`](VspClient::call_stream).
    pub async fn call_stream_with<T: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        body: impl Serialize,
        options: CallOptions,
    ) -> Result<CallStream<T>, VspError> {
        self.open_stream(service, endpoint, &body, options)
            .await
            .map_err(|(err, _)| err)
    }

    /// A generated client's call to a method returning `Result<Streaming<T>, E>`.
    pub(crate) async fn call_stream_service<T: DeserializeOwned, E: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        body: &(impl Serialize + ?Sized),
        options: CallOptions,
    ) -> Result<CallStream<T>, CallError<E>> {
        self.open_stream(service, endpoint, body, options)
            .await
            .map_err(
                |(err, answer)| match answer.as_deref().and_then(service_error::<E>) {
                    Some(typed) => CallError::Service(typed),
                    None => CallError::Vsp(err),
                },
            )
    }

    /// The gateway's stream call: the arguments as JSON, the items as JSON, a typed error before
    /// the stream opens kept as JSON with its HTTP status.
    #[cfg(feature = "gateway")]
    pub(crate) async fn call_stream_json(
        &self,
        service: &str,
        endpoint: &str,
        body: &serde_json::value::RawValue,
        options: CallOptions,
    ) -> Result<CallStream<Box<serde_json::value::RawValue>>, (VspError, Option<super::TypedError>)>
    {
        self.open_stream(service, endpoint, body, options)
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

    /// Opens a stream. A `handler` error before it opens comes with its answer, where a
    /// service's typed error may be.
    pub(super) async fn open_stream<T: DeserializeOwned>(
        &self,
        service: &str,
        endpoint: &str,
        body: &(impl Serialize + ?Sized),
        mut options: CallOptions,
    ) -> Result<CallStream<T>, (VspError, Option<Box<RawResponse>>)> {
        options.stream = true;
        let upload = options.upload;
        let timeout = options.timeout.unwrap_or(self.timeout);
        let began = Instant::now();
        let idle = options.idle_timeout;
        let mut opened = self
            .exchange(service, endpoint, body, options)
            .await
            .map_err(|err| (err, None))?;
        if let Some(code) = &opened.error_code {
            let error = remote_error(service, endpoint, code, &opened);
            let answer = (*code == ErrorCode::Handler).then(|| Box::new(opened));
            return Err((error, answer));
        }
        let Some(handle) = opened.stream.take() else {
            return Err((
                VspError::Remote {
                    service: service.to_owned(),
                    endpoint: endpoint.to_owned(),
                    code: ErrorCode::NotSupported,
                    message: if opened.from_vsp_peer {
                        format!("`{endpoint}` answered once instead of opening a stream")
                    } else {
                        format!("the peer answered `{endpoint}` once instead of opening a stream: it does not know VSP streams (a Velithon service?); {}", match upload {
                            true => "it cannot take a stream from its caller",
                            false => "call it with `call`",
                        })
                    },
                },
                None,
            ));
        };
        Ok(CallStream {
            handle,
            service: service.to_owned(),
            endpoint: endpoint.to_owned(),
            deadline: match idle {
                Some(_) => None,
                None => Some((Box::pin(tokio::time::sleep_until(began + timeout)), timeout)),
            },
            idle: idle.map(|idle| (Box::pin(tokio::time::sleep(idle)), idle)),
            done: false,
            failed: None,
            _items: PhantomData,
        })
    }
}
