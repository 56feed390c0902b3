//! An HTTP gateway to VSP services (feature `gateway`): an [axum](https://docs.rs/axum) router a
//! user merges into their own app.
//!
//! | Route | What it does |
//! |---|---|
//! | `POST /{service}/{endpoint}` | calls the endpoint through the mesh with the JSON body; `200` and the result's JSON; a streaming endpoint's items as Server-Sent Events (see [below](#server-streams-as-server-sent-events)) |
//! | `GET /{service}/{endpoint}` upgraded to a WebSocket | calls an endpoint that takes a stream (a client or bidirectional stream): items both ways as messages (see [below](#client-and-bidirectional-streams-over-a-websocket)) |
//! | `GET /{service}` | the service's `vsp.describe`, with the gateway's view of its instances (`instances`) |
//! | `GET /openapi.json` | an OpenAPI 3.1 document of every service's endpoints (from their descriptions) |
//! | `GET /` | the service explorer: a page to read the services' docs and call their endpoints |
//!
//! Only the services the gateway is given are reachable (others are `404`): a gateway is how an
//! outside caller reaches inside, so what it exposes is a list, not whatever the mesh can route.
//!
//! Errors are JSON, `{"error": {"code": ..., "message": ...}}`, with the status a user expects:
//!
//! | VSP | HTTP |
//! |---|---|
//! | `not_found` (no such endpoint, or service not served here) | 404 |
//! | `bad_request` (a field missing or of the wrong type; `field` names it), a body that is not JSON | 400 |
//! | `unauthenticated` / `permission_denied` | 401 / 403 |
//! | `overloaded`, `shutting_down`, no (healthy) instance, too many calls in flight | 503 with `Retry-After` |
//! | a deadline passed (`timeout`) | 504 |
//! | connection refused, reset or timed out, an answer that breaks the protocol | 502 |
//! | a service's typed error: `service_error`, its JSON in `error.data` | its type's status ([`HttpStatus`](crate::HttpStatus), 4xx), else 422 |
//! | `handler` (the handler panicked or failed without a typed error) | 500 |
//! | `not_supported` (a streaming endpoint asked without `Accept: text/event-stream`, one that takes a stream called without a WebSocket) | 501 |
//! | a body above [`Gateway::max_body_bytes`] | 413 |
//!
//! | a `POST` body that is not declared `application/json` | 415 |
//! | an `Origin` or `Host` the gateway does not allow | 403 |
//!
//! ## Facing callers from outside
//!
//! A gateway is where callers from outside reach in, and it defaults to what is safe there:
//!
//! - `POST` needs `Content-Type: application/json` (or `application/*+json`): a web page on
//!   another site can send a `text/plain` or form `POST` without a CORS preflight, never a JSON
//!   one, so no page a user visits can call a service through a gateway on their machine.
//! - A request with an `Origin` header (a browser's) is refused unless the origin is the
//!   gateway's own (its `Host`) or one of [`Gateway::allowed_origins`].
//!   [`Gateway::allowed_hosts`] also refuses requests for other host names (DNS rebinding).
//! - A call carries only what its HTTP caller sent (the forwarded headers): never the
//!   gateway's own client metadata (its credentials) unless [`Gateway::send_own_metadata`]
//!   says so.
//! - Errors say what went wrong, not where: no internal instance address or state reaches a
//!   caller (the operator finds them in the logs) unless [`Gateway::expose_internals`] is on,
//!   as for a gateway only its operators use. The explorer page and `/openapi.json` can be
//!   turned off ([`Gateway::explorer`], [`Gateway::openapi`]).
//!
//! HTTP headers named by [`Gateway::forward_headers`] (by default `authorization`, `traceparent`,
//! `tracestate` and `x-request-id`) travel as call metadata, so a service's auth hook sees the
//! caller's credentials and a `traceparent` makes the call's span a child of the HTTP caller's.
//!
//! ```no_run
//! use vsp::{ServiceInfo, ServiceMesh, VspClient};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = ServiceMesh::new();
//! mesh.register(ServiceInfo::new("user-service", "127.0.0.1", 9090))?;
//! let client = VspClient::builder(mesh).build();
//! let app = axum::Router::new()
//!     .route("/hello", axum::routing::get(|| async { "hi" }))
//!     .merge(vsp::gateway::router(client, ["user-service"]));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
#![doc = include_str!("../docs/gateway_streams.md")]
#![doc = include_str!("../docs/gateway.md")]

mod error;
mod explorer;
mod headers;
mod openapi;
mod sse;
mod ws;

use error::{json_response, raw_json_response, GatewayError};
use headers::{host_without_port, is_json_content_type};

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::client::{CallOptions, VspClient};
use crate::error::{ErrorCode, VspError};
use crate::protocol::{ServiceDescription, DESCRIBE_ENDPOINT};

/// `{}`, the arguments of `vsp.describe`.
#[derive(Serialize)]
struct EmptyObject {}

/// The largest request body the gateway reads by default (1 MiB); larger is `413`.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// The HTTP headers forwarded as call metadata by default.
pub(crate) const DEFAULT_FORWARDED_HEADERS: [&str; 4] =
    ["authorization", "traceparent", "tracestate", "x-request-id"];

/// How long a `503` asks the caller to wait before trying again, in seconds.
const RETRY_AFTER_SECONDS: &str = "1";

/// A gateway under construction: the client it calls through, the services it exposes, its
/// limits. [`router`] is the shorthand with the defaults.
#[derive(Debug, Clone)]
pub struct Gateway {
    client: VspClient,
    services: Vec<String>,
    max_body_bytes: usize,
    forward_headers: Vec<HeaderName>,
    send_own_metadata: bool,
    allowed_origins: Vec<String>,
    allowed_hosts: Vec<String>,
    expose_internals: bool,
    explorer: bool,
    openapi: bool,
    compress: bool,
}

/// The router of a gateway exposing `services` through `client`, with the defaults.
pub fn router<S: Into<String>>(client: VspClient, services: impl IntoIterator<Item = S>) -> Router {
    Gateway::new(client).services(services).into_router()
}

impl Gateway {
    /// A gateway calling through `client`, exposing no service yet.
    pub fn new(client: VspClient) -> Self {
        Gateway {
            client,
            services: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            forward_headers: DEFAULT_FORWARDED_HEADERS
                .iter()
                .map(|name| HeaderName::from_static(name))
                .collect(),
            send_own_metadata: false,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            expose_internals: false,
            explorer: true,
            openapi: true,
            compress: true,
        }
    }

    /// Sends the gateway client's own metadata ([`VspClient::with_metadata`], such as its
    /// credentials) with every call, under what the HTTP caller forwards (default off: a call
    /// carries only what its caller sent, so an anonymous caller never borrows the gateway's
    /// credentials).
    pub fn send_own_metadata(mut self, send: bool) -> Self {
        self.send_own_metadata = send;
        self
    }

    /// Browser origins (`https://app.example.com`) allowed besides the gateway's own: a request
    /// with any other `Origin` header is answered `403`. Requests without one (not from a
    /// browser) are not affected.
    pub fn allowed_origins<S: Into<String>>(
        mut self,
        origins: impl IntoIterator<Item = S>,
    ) -> Self {
        self.allowed_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// The host names (`Host` header, with or without its port) the gateway answers for; any
    /// other is answered `403`, so a DNS name rebound to the gateway's address reaches nothing.
    /// Empty (the default) answers every host.
    pub fn allowed_hosts<S: Into<String>>(mut self, hosts: impl IntoIterator<Item = S>) -> Self {
        self.allowed_hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// Puts internal details in answers, for a gateway only its operators use: the instances'
    /// addresses and states (in `GET /{service}` and the explorer) and the full text of
    /// connection errors (default off: they are logged, and callers get what went wrong without
    /// where).
    pub fn expose_internals(mut self, expose: bool) -> Self {
        self.expose_internals = expose;
        self
    }

    /// Serves the explorer page at `GET /` (default on).
    pub fn explorer(mut self, serve: bool) -> Self {
        self.explorer = serve;
        self
    }

    /// Serves the OpenAPI document at `GET /openapi.json` (default on).
    pub fn openapi(mut self, serve: bool) -> Self {
        self.openapi = serve;
        self
    }

    /// Exposes `service` (its calls, its description, its place in the OpenAPI document and the
    /// explorer).
    pub fn service(mut self, service: impl Into<String>) -> Self {
        let service = service.into();
        if !self.services.contains(&service) {
            self.services.push(service);
        }
        self
    }

    /// Exposes each of `services`.
    pub fn services<S: Into<String>>(self, services: impl IntoIterator<Item = S>) -> Self {
        services.into_iter().fold(self, Gateway::service)
    }

    /// The largest request body read (default 1 MiB); a larger one is answered `413` unread.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The HTTP headers forwarded as call metadata (replacing the defaults: `authorization`,
    /// `traceparent`, `tracestate` and `x-request-id`).
    pub fn forward_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.forward_headers = headers.into_iter().collect();
        self
    }

    /// Compresses responses with gzip or zstd when the caller accepts one (`Accept-Encoding`),
    /// by tower-http's layer: bodies of 32 bytes or more, never event streams (default on).
    pub fn compress_responses(mut self, compress: bool) -> Self {
        self.compress = compress;
        self
    }

    /// The axum router: merge it into an app, or serve it as it is.
    pub fn into_router(self) -> Router {
        let (explorer, openapi, compress) = (self.explorer, self.openapi, self.compress);
        let shared = Arc::new(self);
        let mut router = Router::new();
        if explorer {
            router = router.route("/", get(explorer_page));
        }
        if openapi {
            router = router.route("/openapi.json", get(openapi_document));
        }
        let router = router
            .route("/{service}", get(describe_service))
            .route("/{service}/{endpoint}", post(call_endpoint).get(ws::upgrade))
            .fallback(|| async { GatewayError::new(StatusCode::NOT_FOUND, "not_found", "no such route: the gateway serves `POST /{service}/{endpoint}`, `GET /{service}`, `GET /openapi.json` and `GET /`") })
            .method_not_allowed_fallback(|| async {
                GatewayError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "call an endpoint with POST; read a description, the OpenAPI document or the explorer with GET")
            })
            .with_state(shared);
        match compress {
            true => router.layer(tower_http::compression::CompressionLayer::new()),
            false => router,
        }
    }

    /// Refuses a request for a host or from an origin this gateway does not allow.
    fn admits(&self, headers: &HeaderMap) -> Result<(), GatewayError> {
        let host = headers
            .get(HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or("");
        if !self.allowed_hosts.is_empty() {
            let bare = host_without_port(host);
            if !self.allowed_hosts.iter().any(|allowed| {
                allowed.eq_ignore_ascii_case(host) || allowed.eq_ignore_ascii_case(bare)
            }) {
                tracing::debug!(
                    host,
                    "gateway: refused a request for a host it does not serve"
                );
                return Err(GatewayError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden_host",
                    "this gateway does not answer for that host name",
                ));
            }
        }
        let Some(origin) = headers.get(ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("");
        let same_site = origin
            .split_once("://")
            .is_some_and(|(_, rest)| !host.is_empty() && rest.eq_ignore_ascii_case(host));
        if same_site
            || self
                .allowed_origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        {
            return Ok(());
        }
        tracing::debug!(
            origin,
            "gateway: refused a request from an origin it does not allow"
        );
        Err(GatewayError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "requests from this origin are not allowed (Gateway::allowed_origins)",
        ))
    }

    /// The client a call goes out through: without the gateway's own metadata unless asked.
    fn caller(&self) -> Cow<'_, VspClient> {
        if self.send_own_metadata {
            Cow::Borrowed(&self.client)
        } else {
            Cow::Owned(self.client.without_metadata())
        }
    }

    fn exposes(&self, service: &str) -> Result<(), GatewayError> {
        if self.services.iter().any(|known| known == service) {
            return Ok(());
        }
        Err(GatewayError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "this gateway does not serve `{service}`; it serves: {}",
                self.services.join(", ")
            ),
        ))
    }

    /// The forwarded headers of a request, as a call's metadata.
    fn call_options(&self, headers: &HeaderMap) -> CallOptions {
        let mut options = CallOptions::new();
        for name in &self.forward_headers {
            if let Some(value) = headers.get(name).and_then(|value| value.to_str().ok()) {
                options = options.metadata(name.as_str(), value);
            }
        }
        options
    }

    /// `service`'s `vsp.describe`, asked with the caller's forwarded headers (an auth hook
    /// checks it like any call).
    async fn describe(
        &self,
        service: &str,
        headers: &HeaderMap,
    ) -> Result<ServiceDescription, VspError> {
        let options = self.call_options(headers).idempotent(true);
        self.caller()
            .call_with(service, DESCRIBE_ENDPOINT, EmptyObject {}, options)
            .await
    }

    /// The description of every exposed service that gives one; the others with their error.
    async fn descriptions(
        self: &Arc<Self>,
        headers: &HeaderMap,
    ) -> Vec<(String, Result<ServiceDescription, VspError>)> {
        let mut set = tokio::task::JoinSet::new();
        for (index, service) in self.services.iter().enumerate() {
            let (gateway, service, headers) = (self.clone(), service.clone(), headers.clone());
            set.spawn(async move {
                let described = gateway.describe(&service, &headers).await;
                (index, service, described)
            });
        }
        let mut found = Vec::with_capacity(self.services.len());
        while let Some(joined) = set.join_next().await {
            if let Ok(one) = joined {
                found.push(one);
            }
        }
        found.sort_by_key(|(index, _, _)| *index);
        found
            .into_iter()
            .map(|(_, service, described)| (service, described))
            .collect()
    }

    /// The mesh's instances of `service`, as the explorer shows them.
    fn instances(&self, service: &str) -> Value {
        let instances: Vec<Value> = self
            .client
            .mesh()
            .instances(service)
            .into_iter()
            .map(|state| {
                json!({
                    "address": state.info.address().to_string(),
                    "status": state.info.status(),
                    "weight": state.info.weight(),
                    "in_flight": state.in_flight,
                    "consecutive_failures": state.consecutive_failures,
                })
            })
            .collect();
        Value::Array(instances)
    }
}

type Shared = State<Arc<Gateway>>;

async fn explorer_page(State(gateway): Shared, headers: HeaderMap) -> Response {
    if let Err(err) = gateway.admits(&headers) {
        return err.into_response();
    }
    explorer::page(&gateway.services)
}

async fn openapi_document(State(gateway): Shared, headers: HeaderMap) -> Response {
    if let Err(err) = gateway.admits(&headers) {
        return err.into_response();
    }
    let descriptions = gateway.descriptions(&headers).await;
    json_response(StatusCode::OK, &openapi::document(&descriptions))
}

/// A path segment that does not decode (`%ec`, not UTF-8) is a `400` in JSON like every other
/// error, not axum's plain-text rejection (found by the `gateway` fuzz target).
fn bad_path(rejection: &PathRejection) -> Response {
    GatewayError::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        format!("the path does not name a service and endpoint: {rejection}"),
    )
    .into_response()
}

async fn describe_service(
    State(gateway): Shared,
    service: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let service = match service {
        Ok(Path(service)) => service,
        Err(rejection) => return bad_path(&rejection),
    };
    if let Err(err) = gateway
        .admits(&headers)
        .and_then(|()| gateway.exposes(&service))
    {
        return err.into_response();
    }
    // Where the instances are and how they fare is for operators (`expose_internals`).
    let instances = gateway
        .expose_internals
        .then(|| gateway.instances(&service));
    match gateway.describe(&service, &headers).await {
        Ok(description) => {
            let mut body = serde_json::to_value(&description).unwrap_or(Value::Null);
            if let Some(instances) = instances {
                body["instances"] = instances;
            }
            json_response(StatusCode::OK, &body)
        }
        Err(err) => {
            let mut error = GatewayError::from_vsp(&err, None, gateway.expose_internals);
            if is_not_described(&err) {
                error.message = format!(
                    "`{service}` does not answer `vsp.describe` (a Velithon service, or one that does not describe itself); its endpoints can still be called"
                );
            }
            // Never to a caller the service refused.
            if !matches!(
                error.status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ) {
                error.instances = instances.map(Box::new);
            }
            error.into_response()
        }
    }
}

/// Whether the peer answered that it has no `vsp.describe`.
fn is_not_described(err: &VspError) -> bool {
    matches!(
        err,
        VspError::Remote {
            code: ErrorCode::NotFound,
            ..
        }
    ) || matches!(err, VspError::Remote { code: ErrorCode::Unspecified(_), message, .. } if message.contains("not found"))
}

async fn call_endpoint(
    State(gateway): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (service, endpoint) = match path {
        Ok(Path(path)) => path,
        Err(rejection) => return bad_path(&rejection),
    };
    match call(&gateway, &service, &endpoint, &headers, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn call(
    gateway: &Gateway,
    service: &str,
    endpoint: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    gateway.admits(headers)?;
    gateway.exposes(service)?;
    if !is_json_content_type(headers) {
        return Err(GatewayError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a call's body must be declared `Content-Type: application/json`",
        ));
    }
    let limit = gateway.max_body_bytes;
    let too_large = || {
        GatewayError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than this gateway's limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let bytes: Bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) if text.trim().is_empty() => "{}",
        Ok(text) => text,
        Err(_) => {
            return Err(GatewayError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the body is not JSON: it is not UTF-8",
            ))
        }
    };
    let args: &RawValue = serde_json::from_str(text).map_err(|err| {
        GatewayError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body is not JSON: {err}"),
        )
    })?;
    let options = gateway.call_options(headers);
    if headers::wants_event_stream(headers) {
        return Ok(sse::respond(gateway, service, endpoint, args, options).await);
    }
    let started = Instant::now();
    let answer = gateway
        .caller()
        .call_json(service, endpoint, args, options)
        .await;
    let elapsed = started.elapsed();
    let mut response = match answer {
        Ok(result) => raw_json_response(StatusCode::OK, result.get().to_owned()),
        Err((err, typed)) => {
            GatewayError::from_vsp(&err, typed, gateway.expose_internals).into_response()
        }
    };
    // The time the call took through the mesh, for the explorer (and any caller curious).
    if let Ok(value) = HeaderValue::from_str(&format!("vsp;dur={:.3}", elapsed.as_secs_f64() * 1e3))
    {
        response.headers_mut().insert("server-timing", value);
    }
    Ok(response)
}
