//! One call's attempts: pick an instance, send, and on failure decide whether another instance
//! may get it (the rules in the module docs of [`client`](super)).

mod hedge;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tracing::{Instrument, Span};

use super::connection::Connection;
use super::connection::{CallFailure, RawResponse, StreamAsk};
use super::metrics::Finished;
use super::pool::PoolError;
use super::response::remote_error;
use super::retry::{self, Decision};
use super::{CallInfo, CallOptions, VspClient};
use crate::context::Context;
use crate::error::{ErrorCode, ProtocolError, VspError};
use crate::instance::Instance;
use crate::protocol::{Metadata, DEFAULT_STREAM_WINDOW};
use crate::trace::{self, TraceContext};

/// How far a call got, for the metrics.
#[derive(Default)]
struct Progress {
    attempts: usize,
    failed_over: bool,
    /// A hedged attempt was sent.
    hedged: bool,
    /// When the answer arrived (the clock the instance's latency was read with, read once).
    answered: Option<Instant>,
}

/// What every attempt of one call shares.
pub(super) struct Call<'a> {
    service: &'a str,
    endpoint: &'a str,
    metadata: Option<&'a Metadata>,
    /// The `vsp.client` span's trace (or, while it records nothing, the trace passed on).
    trace: Option<&'a TraceContext>,
    span: &'a Span,
}

/// The trace a call's span continues, and the one its attempts' `traceparent` derive from: a
/// `traceparent` in the call's metadata (a gateway forwarding one), else (with OpenTelemetry)
/// the current span's, else the served call's (inside a handler), else a new trace. While nothing
/// records the span, only a served call's trace is passed on (an explicit one travels as it is).
fn call_trace(span: &Span, metadata: Option<&Metadata>) -> Option<TraceContext> {
    if span.is_disabled() && metadata.is_none() {
        return Context::current_trace().map(|served| TraceContext::clone(&served));
    }
    let explicit = metadata.and_then(|metadata| {
        let parent = TraceContext::parse(metadata.get(trace::TRACEPARENT)?).ok()?;
        Some(match metadata.get(trace::TRACESTATE) {
            Some(state) => parent.with_tracestate(state),
            None => parent,
        })
    });
    if span.is_disabled() {
        return match explicit {
            Some(_) => None,
            None => Context::current_trace().map(|served| TraceContext::clone(&served)),
        };
    }
    let (parent, remote) = match explicit {
        Some(parent) => (Some(parent), true),
        None => match trace::current_span_context() {
            Some(parent) => (Some(parent), false),
            None => (
                Context::current_trace().map(|served| TraceContext::clone(&served)),
                true,
            ),
        },
    };
    Some(trace::open(span, parent.as_ref(), remote))
}

/// Marks a span failed if the call (or attempt) failed, or the service answered an error.
fn record_outcome(
    span: &Span,
    service: &str,
    endpoint: &str,
    outcome: &Result<&RawResponse, &VspError>,
) {
    match outcome {
        Ok(response) => {
            if let Some(code) = &response.error_code {
                let error = remote_error(service, endpoint, code, response);
                trace::record_error(span, error.error_type(), &error);
            }
        }
        Err(error) => trace::record_error(span, error.error_type(), error),
    }
}

/// One attempt's failure, and what it allows next.
pub(super) struct AttemptFailure {
    error: VspError,
    /// The request may have reached the server.
    written: bool,
    /// Nothing to retry (an encoding error).
    fatal: bool,
}

impl AttemptFailure {
    fn unsent(error: VspError) -> Self {
        AttemptFailure {
            error,
            written: false,
            fatal: false,
        }
    }
}

/// What one attempt is about, for its errors.
pub(super) struct Attempt<'a> {
    service: &'a str,
    endpoint: &'a str,
    instance: &'a Arc<Instance>,
    /// The call's whole deadline, for `Timeout` errors.
    timeout: Duration,
    /// A stream call: its window, whether an idle timeout (not the deadline) bounds it, and
    /// whether it sends items of its own.
    stream: Option<StreamAsk>,
    metadata: Option<&'a Metadata>,
    /// When this attempt started, and the deadline it runs to.
    started: Instant,
    deadline: Instant,
}

impl Attempt<'_> {
    /// The one place a connection-level failure becomes a [`VspError`].
    fn error(&self, failure: CallFailure) -> VspError {
        match failure {
            CallFailure::NotSent(reason) | CallFailure::Closed(reason) => {
                VspError::ConnectionClosed {
                    service: self.service.to_owned(),
                    endpoint: self.endpoint.to_owned(),
                    instance: self.instance.key().to_owned(),
                    reason,
                }
            }
            CallFailure::Encode(source) => VspError::Encode {
                service: self.service.to_owned(),
                endpoint: self.endpoint.to_owned(),
                source,
            },
            CallFailure::TooLarge { len, max } => VspError::RequestTooLarge {
                service: self.service.to_owned(),
                endpoint: self.endpoint.to_owned(),
                len,
                max,
            },
            CallFailure::Protocol(reason) => VspError::Protocol(ProtocolError::Malformed(reason)),
            CallFailure::TimedOut { .. } => self.timed_out(),
            CallFailure::Unsupported(message) => VspError::Remote {
                service: self.service.to_owned(),
                endpoint: self.endpoint.to_owned(),
                code: ErrorCode::NotSupported,
                message,
            },
        }
    }

    fn timed_out(&self) -> VspError {
        VspError::Timeout {
            service: self.service.to_owned(),
            endpoint: self.endpoint.to_owned(),
            after: self.timeout,
        }
    }
}

impl VspClient {
    /// Sends one call, failing over to other instances as the rules in the module docs allow,
    /// inside the call's `vsp.client` span.
    pub(super) async fn exchange(
        &self,
        service: &str,
        endpoint: &str,
        body: &(impl Serialize + ?Sized),
        mut options: CallOptions,
    ) -> Result<RawResponse, VspError> {
        self.inner.start_background();
        let metadata = self.call_metadata(service, endpoint, std::mem::take(&mut options.metadata));
        let span = trace::client_span(service, endpoint);
        let trace = call_trace(&span, metadata.as_ref());
        let call = Call {
            service,
            endpoint,
            metadata: metadata.as_ref(),
            trace: trace.as_ref(),
            span: &span,
        };
        let began = Instant::now();
        let mut progress = Progress::default();
        // Not even a disabled span's enter and exit per poll while nobody records. (The future
        // is made in each branch: bound to a local first, it would be copied once more.)
        let outcome = if span.is_disabled() {
            self.attempts(&call, body, options, began, &mut progress)
                .await
        } else {
            self.attempts(&call, body, options, began, &mut progress)
                .instrument(span.clone())
                .await
        };
        if !span.is_disabled() {
            span.record("vsp.attempts", progress.attempts);
            record_outcome(&span, service, endpoint, &outcome.as_ref());
        }
        let error = match &outcome {
            Ok(response) => response
                .error_code
                .as_ref()
                .map(|code| match code.as_str() {
                    "" => "remote",
                    code => code,
                }),
            Err(error) => Some(error.error_type()),
        };
        self.inner.counters.record(
            service,
            endpoint,
            &Finished {
                elapsed: progress
                    .answered
                    .map_or_else(|| began.elapsed(), |at| at.saturating_duration_since(began)),
                attempts: progress.attempts,
                failed_over: progress.failed_over,
                hedged: progress.hedged,
                error,
            },
        );
        outcome
    }

    /// The attempts of one call: another instance after each failure, as long as
    /// [`retry::decide`] allows it.
    async fn attempts(
        &self,
        call: &Call<'_>,
        body: &(impl Serialize + ?Sized),
        options: CallOptions,
        began: Instant,
        progress: &mut Progress,
    ) -> Result<RawResponse, VspError> {
        let policy = self.resolve(call.service, call.endpoint, &options, call.metadata);
        let (deadline, timeout) = self.call_deadline(policy.timeout, &options, began);
        let config = &self.inner.config;
        self.inner.budget.deposit();
        let mut tried: Vec<Arc<Instance>> = Vec::new();
        let mut last_error: Option<VspError> = None;
        let mut started = began;
        loop {
            let picked = if tried.is_empty() {
                let mesh = &self.inner.mesh;
                mesh.pick_or_wait(call.service, policy.key, deadline).await
            } else {
                self.pick(call.service, &tried)
            };
            let instance = match picked {
                Ok(instance) => instance,
                // After a failed attempt, its error says more than "no healthy instance left".
                Err(err) => return Err(last_error.unwrap_or(err)),
            };
            let attempt = Attempt {
                service: call.service,
                endpoint: call.endpoint,
                instance: &instance,
                timeout,
                stream: options.stream.then(|| StreamAsk {
                    window: options.stream_window.unwrap_or(DEFAULT_STREAM_WINDOW),
                    idle: options.idle_timeout.is_some(),
                    upload: options.upload,
                }),
                metadata: call.metadata,
                started,
                deadline: match config.attempt_timeout {
                    Some(per_attempt) => deadline.min(crate::deadline::after(started, per_attempt)),
                    None => deadline,
                },
            };
            let number = tried.len() + 1;
            progress.attempts = number;
            // Only a first attempt is hedged: a retry already goes elsewhere.
            let hedge = policy
                .hedge
                .filter(|_| tried.is_empty() && policy.max_attempts > 1);
            let hedged = self
                .attempt_or_hedge(call, body, &attempt, hedge, number)
                .await;
            if let Some(other) = hedged.other {
                tried.push(other);
                progress.attempts += 1;
                progress.hedged = true;
            }
            let (answered_by, outcome) = (hedged.by, hedged.outcome);
            let failure = match outcome {
                Ok((response, answered)) => {
                    self.inner.mesh.health().record_success(&answered_by);
                    progress.answered = Some(answered);
                    progress.failed_over = tried.iter().any(|t| !Arc::ptr_eq(t, &answered_by));
                    return Ok(response);
                }
                Err(failure) => failure,
            };
            tried.push(answered_by);
            started = Instant::now();
            let standing = retry::Standing {
                repeatable: policy.repeatable,
                attempts: tried.len(),
                max_attempts: policy.max_attempts,
                out_of_time: started >= deadline,
            };
            let (written, fatal) = (failure.written, failure.fatal);
            let decision = retry::decide(retry::Failure { written, fatal }, standing);
            match decision {
                Decision::Retry { from_budget } if !from_budget || self.inner.budget.withdraw() => {
                }
                _ => return Err(failure.error),
            }
            let attempt = tried.len();
            let (service, endpoint) = (call.service, call.endpoint);
            tracing::debug!(service, endpoint, attempt, "retrying: {}", failure.error);
            last_error = Some(failure.error);
        }
    }

    /// The call's deadline and its length: the client's or the call's timeout, or the served
    /// call's deadline when it is sooner and the call inherits it.
    fn call_deadline(
        &self,
        timeout: Duration,
        options: &CallOptions,
        began: Instant,
    ) -> (Instant, Duration) {
        let deadline = crate::deadline::after(began, timeout);
        // The task-local is read only when the call inherits (the default).
        let served = options
            .inherit_deadline
            .then(Context::current_deadline)
            .flatten();
        match served {
            Some(served) if served < deadline => (served, served.saturating_duration_since(began)),
            _ => (deadline, timeout),
        }
    }

    /// Attempt number `number` of `call`, in its own `vsp.attempt` span: the answer, or why it
    /// failed. An answer refused before running (`shutting_down`, `overloaded`) is a failure
    /// that never reached a handler.
    pub(super) async fn try_instance(
        &self,
        call: &Call<'_>,
        body: &(impl Serialize + ?Sized),
        attempt: &Attempt<'_>,
        number: usize,
    ) -> Result<(RawResponse, Instant), AttemptFailure> {
        let Call {
            service, endpoint, ..
        } = *call;
        let instance = attempt.instance;
        let span = if call.span.is_disabled() {
            Span::none()
        } else {
            let address = instance.address();
            let peer = trace::Peer {
                host: address.host(),
                port: address.port(),
                text: address,
            };
            trace::attempt_span(call.span, service, endpoint, peer, number)
        };
        let own_trace = match call.trace {
            Some(parent) if !span.is_disabled() => Some(trace::open(&span, Some(parent), false)),
            inherited => inherited.cloned(),
        };
        let sent = if span.is_disabled() {
            self.attempt(attempt, body, own_trace.as_ref(), &span).await
        } else {
            self.attempt(attempt, body, own_trace.as_ref(), &span)
                .instrument(span.clone())
                .await
        };
        if !span.is_disabled() {
            let outcome = sent.as_ref().map(|(response, _)| response);
            record_outcome(&span, service, endpoint, &outcome.map_err(|f| &f.error));
        }
        let (response, answered) = sent?;
        match &response.error_code {
            // Refused before running: safe to send elsewhere.
            Some(code @ ErrorCode::ShuttingDown) => {
                let error = remote_error(service, endpoint, code, &response);
                self.inner.mesh.eject(instance, &error);
                Err(AttemptFailure::unsent(error))
            }
            // Refused before running too (the server's limits are checked before the handler
            // starts): another instance may take it, idempotent or not.
            Some(code @ ErrorCode::Overloaded) => Err(AttemptFailure::unsent(remote_error(
                service, endpoint, code, &response,
            ))),
            _ => Ok((response, answered)),
        }
    }

    /// The metadata of one call: this handle's, then the call's own, then what the interceptor
    /// makes of them. `None` (no allocation) when there is none and no interceptor.
    fn call_metadata(&self, service: &str, endpoint: &str, own: Metadata) -> Option<Metadata> {
        let interceptor = self.inner.interceptor.as_deref();
        if self.metadata.is_none() && own.is_empty() && interceptor.is_none() {
            return None;
        }
        let mut metadata = match self.metadata.as_deref() {
            Some(base) if own.is_empty() => base.clone(),
            Some(base) => {
                let mut merged = base.clone();
                merged.extend_from(&own);
                merged
            }
            None => own,
        };
        if let Some(interceptor) = interceptor {
            interceptor.intercept(&CallInfo { service, endpoint }, &mut metadata);
        }
        Some(metadata)
    }

    /// An eligible instance, preferring one not tried yet by this call.
    pub(super) fn pick(
        &self,
        service: &str,
        tried: &[Arc<Instance>],
    ) -> Result<Arc<Instance>, VspError> {
        let mesh = &self.inner.mesh;
        let first = mesh.pick(service)?;
        if !tried.iter().any(|t| Arc::ptr_eq(t, &first)) {
            return Ok(first);
        }
        for _ in 0..tried.len() + 2 {
            let next = mesh.pick(service)?;
            if !tried.iter().any(|t| Arc::ptr_eq(t, &next)) {
                return Ok(next);
            }
        }
        Ok(first)
    }

    /// One attempt on one instance, reporting its outcome to the mesh's health tracking.
    async fn attempt(
        &self,
        attempt: &Attempt<'_>,
        body: &(impl Serialize + ?Sized),
        trace: Option<&TraceContext>,
        span: &Span,
    ) -> Result<(RawResponse, Instant), AttemptFailure> {
        let instance = attempt.instance;
        let _in_flight = instance.track_call();
        let connection = self.connect(attempt).await?;
        let sent = connection.send(
            attempt.service,
            attempt.endpoint,
            body,
            attempt.metadata,
            trace,
            // The attempt's start is the last clock reading: no other one for the header.
            (attempt.started, attempt.deadline),
            attempt.stream,
        );
        let mut call = match sent {
            Ok(call) => call,
            Err(failure) => {
                let fatal = matches!(
                    failure,
                    CallFailure::Encode(_) | CallFailure::TooLarge { .. }
                );
                return Err(AttemptFailure {
                    fatal,
                    ..AttemptFailure::unsent(attempt.error(failure))
                });
            }
        };
        if crate::trace::detailed(span) {
            span.record("vsp.request_id", call.id());
        }
        let outcome = call.wait().await;
        if connection.is_draining() {
            // The server announced its shutdown: no more calls to it until a probe says so.
            self.inner
                .mesh
                .eject(instance, &"the server announced it is shutting down");
        }
        // Only transport failures count against the instance's health: a slow endpoint (a
        // deadline that passed while the connection kept answering, or the server's own
        // `timeout` answer) says nothing about the instance's other endpoints.
        let error = match outcome {
            // The server stopped the handler at the deadline: the same timeout as ours.
            Ok(response) if response.error_code == Some(ErrorCode::Timeout) => attempt.timed_out(),
            Ok(response) => {
                let answered = Instant::now();
                instance.record_latency(answered.saturating_duration_since(attempt.started));
                return Ok((response, answered));
            }
            Err(failure @ CallFailure::TimedOut { silent }) => {
                instance.record_unanswered(attempt.started.elapsed());
                if silent {
                    // Nothing at all came back since the call was sent: find out whether the
                    // connection still answers, without holding this caller past its deadline.
                    let remaining = attempt.deadline.saturating_duration_since(attempt.started);
                    self.inner
                        .check_connection(&connection, instance, remaining);
                }
                attempt.error(failure)
            }
            Err(failure) => {
                let error = attempt.error(failure);
                self.inner.mesh.report_failure(instance, false, &error);
                error
            }
        };
        Err(AttemptFailure {
            error,
            written: true,
            fatal: false,
        })
    }

    /// A connection to the attempt's instance from its pool, opened within the connect timeout
    /// (or what is left of the deadline); a failure to connect counts against the instance.
    async fn connect(&self, attempt: &Attempt<'_>) -> Result<Arc<Connection>, AttemptFailure> {
        let config = &self.inner.config;
        let instance = attempt.instance;
        let remaining = attempt.deadline.saturating_duration_since(attempt.started);
        let connect_timeout = config.connect_timeout.min(remaining);
        let service = || attempt.service.to_owned();
        let key = || instance.key().to_owned();
        let error = match self.inner.pools.of(instance).get(connect_timeout).await {
            Ok(connection) => return Ok(connection),
            Err(PoolError::Saturated { limit }) => {
                let error = VspError::TooManyInFlight {
                    service: service(),
                    instance: key(),
                    limit,
                };
                return Err(AttemptFailure::unsent(error));
            }
            Err(PoolError::TimedOut(after)) if after < config.connect_timeout => {
                // The call's deadline, not the connect timeout, cut the connect short.
                return Err(AttemptFailure::unsent(attempt.timed_out()));
            }
            Err(PoolError::Unsupported(source)) => {
                // Not this client's kind of instance: another one may take the call, and the
                // instance stays healthy for the clients that can dial it.
                let error = VspError::Connect {
                    service: service(),
                    instance: key(),
                    source,
                };
                return Err(AttemptFailure::unsent(error));
            }
            Err(PoolError::Connect(source)) => VspError::Connect {
                service: service(),
                instance: key(),
                source,
            },
            Err(_) => VspError::ConnectTimeout {
                service: service(),
                instance: key(),
                after: connect_timeout,
            },
        };
        self.inner.mesh.report_failure(instance, true, &error);
        Err(AttemptFailure::unsent(error))
    }
}
