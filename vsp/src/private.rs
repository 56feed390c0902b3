//! Support for the code that `#[vsp::service]` and `#[vsp::call]` generate. Not a public API:
//! it changes without notice.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

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

/// A type that can travel in a VSP call, as an argument or a result.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot travel in a VSP call: it must implement `serde::Serialize` and `serde::de::DeserializeOwned`",
    label = "used in a VSP service method here",
    note = "derive them: `#[derive(serde::Serialize, serde::Deserialize)]`"
)]
pub trait WireType: Serialize + DeserializeOwned {}

impl<T: Serialize + DeserializeOwned> WireType for T {}

/// A compile-time check, placed at the user's type by the macro.
pub const fn assert_wire_type<T: WireType>() {}

/// Picks how a service error's text is written, by autoref specialization where the macro
/// expands (`E` concrete): `(&&ErrorText::<E>::new()).text_fn()` is `Some(Display)` when `E`
/// implements `Display`, `None` otherwise.
pub struct ErrorText<E>(std::marker::PhantomData<fn(&E)>);

impl<E> ErrorText<E> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        ErrorText(std::marker::PhantomData)
    }
}

/// The `Display` case of [`ErrorText`].
pub trait ByDisplay<E> {
    fn text_fn(&self) -> Option<fn(&E) -> String>;
}

impl<E: std::fmt::Display> ByDisplay<E> for &ErrorText<E> {
    fn text_fn(&self) -> Option<fn(&E) -> String> {
        Some(|err| err.to_string())
    }
}

/// The fallback of [`ErrorText`]: no `Display`, the text is the JSON.
pub trait ByJson<E> {
    fn text_fn(&self) -> Option<fn(&E) -> String>;
}

impl<E> ByJson<E> for ErrorText<E> {
    fn text_fn(&self) -> Option<fn(&E) -> String> {
        None
    }
}

/// Picks a service error's HTTP status by autoref specialization, like [`ErrorText`]:
/// `(&&ErrorStatus::<E>::new()).status_fn()` is `Some` when `E` implements
/// [`HttpStatus`](crate::HttpStatus).
pub struct ErrorStatus<E>(std::marker::PhantomData<fn(&E)>);

impl<E> ErrorStatus<E> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        ErrorStatus(std::marker::PhantomData)
    }
}

/// The [`HttpStatus`](crate::HttpStatus) case of [`ErrorStatus`].
pub trait ByHttpStatus<E> {
    fn status_fn(&self) -> Option<fn(&E) -> u16>;
}

impl<E: crate::HttpStatus> ByHttpStatus<E> for &ErrorStatus<E> {
    fn status_fn(&self) -> Option<fn(&E) -> u16> {
        Some(|err| err.http_status())
    }
}

/// The fallback of [`ErrorStatus`]: the gateway's default.
pub trait ByDefaultStatus<E> {
    fn status_fn(&self) -> Option<fn(&E) -> u16>;
}

impl<E> ByDefaultStatus<E> for ErrorStatus<E> {
    fn status_fn(&self) -> Option<fn(&E) -> u16> {
        None
    }
}

/// How a service method's typed error is written besides its JSON: its text (its `Display`,
/// else its JSON) and its HTTP status (its [`HttpStatus`](crate::HttpStatus), else none).
pub struct ErrorWays<E> {
    pub(crate) text: Option<fn(&E) -> String>,
    pub(crate) status: Option<fn(&E) -> u16>,
}

// Two function pointers: copied, whatever `E` is.
impl<E> Clone for ErrorWays<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for ErrorWays<E> {}

impl<E> ErrorWays<E> {
    pub fn new(text: Option<fn(&E) -> String>, status: Option<fn(&E) -> u16>) -> Self {
        ErrorWays { text, status }
    }

    /// The text and status of `err`; a status outside 4xx is not sent (the gateway's default).
    pub(crate) fn of(&self, err: &E) -> (Option<String>, Option<u16>) {
        let status = self.status.map(|status| status(err)).and_then(|status| {
            let valid = crate::error::client_error_status(status);
            if valid.is_none() {
                tracing::warn!("the HTTP status {status} of a typed error is not 4xx: not sent");
            }
            valid
        });
        (self.text.map(|text| text(err)), status)
    }
}

/// Where a service's schemas are made: schemars' generator with feature `schema`, nothing
/// without.
pub struct SchemaGen {
    #[cfg(feature = "schema")]
    generator: schemars::SchemaGenerator,
}

impl SchemaGen {
    /// `deserialize`: the schema of what the server reads (arguments), else of what it writes.
    fn new(deserialize: bool) -> Self {
        #[cfg(feature = "schema")]
        {
            let settings = schemars::generate::SchemaSettings::draft2020_12().with(|settings| {
                settings.meta_schema = None;
            });
            let settings = if deserialize {
                settings.for_deserialize()
            } else {
                settings.for_serialize()
            };
            SchemaGen {
                generator: settings.into_generator(),
            }
        }
        #[cfg(not(feature = "schema"))]
        {
            let _ = deserialize;
            SchemaGen {}
        }
    }

    /// `schema` with the definitions it refers to (`$defs`) in it: a schema that stands alone.
    fn finish(mut self, schema: Value) -> Value {
        #[cfg(feature = "schema")]
        {
            let definitions = self.generator.take_definitions(true);
            if let (Value::Object(mut map), false) = (schema.clone(), definitions.is_empty()) {
                map.insert("$defs".to_owned(), Value::Object(definitions));
                return Value::Object(map);
            }
        }
        let _ = &mut self;
        schema
    }
}

/// A function that writes the schema of one type.
pub type SchemaFn = fn(&mut SchemaGen) -> Value;

/// Picks the schema of `T` by autoref specialization where the macro expands (`T` concrete):
/// `(&&SchemaOf::<T>::new()).schema_fn()` is schemars' schema when `T: JsonSchema` (feature
/// `schema`), the open schema `{}` otherwise.
pub struct SchemaOf<T: ?Sized>(std::marker::PhantomData<fn(&T)>);

impl<T: ?Sized> SchemaOf<T> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        SchemaOf(std::marker::PhantomData)
    }
}

/// The `JsonSchema` case of [`SchemaOf`].
pub trait SchemaByJsonSchema {
    fn schema_fn(&self) -> SchemaFn;
}

#[cfg(feature = "schema")]
impl<T: ?Sized + schemars::JsonSchema> SchemaByJsonSchema for &SchemaOf<T> {
    fn schema_fn(&self) -> SchemaFn {
        strict::<T>
    }
}

/// The fallback of [`SchemaOf`]: any value.
pub trait SchemaOpen {
    fn schema_fn(&self) -> SchemaFn;
}

impl<T: ?Sized> SchemaOpen for SchemaOf<T> {
    fn schema_fn(&self) -> SchemaFn {
        |_| crate::protocol::open_schema()
    }
}

#[cfg(feature = "schema")]
fn strict<T: ?Sized + schemars::JsonSchema>(generator: &mut SchemaGen) -> Value {
    generator.generator.subschema_for::<T>().to_value()
}

/// A type whose schema `#[vsp::service(strict_schema)]` requires.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no JSON Schema, which `#[vsp::service(strict_schema)]` requires",
    label = "used in a strictly described VSP service method here",
    note = "enable vsp's `schema` feature and derive `schemars::JsonSchema` for it, or drop `strict_schema` (the schema is then open)"
)]
pub trait StrictSchema {
    fn schema_fn() -> SchemaFn;
}

#[cfg(feature = "schema")]
impl<T: ?Sized + schemars::JsonSchema> StrictSchema for T {
    fn schema_fn() -> SchemaFn {
        strict::<T>
    }
}

/// The schema function of `T`, which must have one (`strict_schema`).
pub fn strict_schema_fn<T: ?Sized + StrictSchema>() -> SchemaFn {
    T::schema_fn()
}

/// One parameter of a service method: its name, whether it must be present (not an `Option`),
/// its schema.
pub type Param = (&'static str, bool, SchemaFn);

/// A service method's description, schemas made now (once, at registration).
pub fn describe(
    name: &'static str,
    doc: Option<&'static str>,
    idempotent: bool,
    params: &[Param],
    result: SchemaFn,
    error: Option<SchemaFn>,
) -> EndpointDescription {
    let mut generator = SchemaGen::new(true);
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for (param, must, schema) in params {
        properties.insert((*param).to_owned(), schema(&mut generator));
        if *must {
            required.push(Value::from(*param));
        }
    }
    let mut args = serde_json::Map::new();
    args.insert("type".into(), "object".into());
    args.insert("properties".into(), Value::Object(properties));
    args.insert("required".into(), Value::Array(required));
    let args = generator.finish(Value::Object(args));
    let standalone = |schema: SchemaFn| {
        let mut generator = SchemaGen::new(false);
        let value = schema(&mut generator);
        generator.finish(value)
    };
    let mut description = EndpointDescription::new(name)
        .params(params.iter().map(|(param, _, _)| *param))
        .idempotent(idempotent)
        .args_schema(args)
        .result_schema(standalone(result));
    if let Some(doc) = doc {
        description = description.doc(doc);
    }
    if let Some(error) = error {
        description = description.error_schema(standalone(error));
    }
    description
}

/// Registers a service method returning `Result<T, E>`; `E` travels typed, as text and with
/// its HTTP status (`ways`).
pub fn register_fallible<F, A, Fut, T, E>(
    manager: &VspManager,
    description: EndpointDescription,
    ways: ErrorWays<E>,
    handler: F,
) -> Result<(), VspError>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Serialize + Send + 'static,
    E: Serialize + Send + 'static,
{
    register_unary(manager, description, handler, move |out| {
        ServiceResult(out, ways)
    })
}

/// Registers a service method returning a plain `T`.
pub fn register_infallible<F, A, Fut, T>(
    manager: &VspManager,
    description: EndpointDescription,
    handler: F,
) -> Result<(), VspError>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Serialize + Send + 'static,
{
    register_unary(manager, description, handler, ServiceValue)
}

/// Registers a service method returning `Result<Streaming<T>, E>`; `E` travels typed.
pub fn register_fallible_stream<F, A, Fut, T, E>(
    manager: &VspManager,
    description: EndpointDescription,
    ways: ErrorWays<E>,
    handler: F,
) -> Result<(), VspError>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    Fut: Future<Output = Result<Streaming<T>, E>> + Send + 'static,
    T: Serialize + Send + 'static,
    E: Serialize + Send + 'static,
{
    register_stream(manager, description, handler, move |out| {
        ServiceStreamResult(out, ways)
    })
}

/// Registers a service method returning `Streaming<T>`.
pub fn register_infallible_stream<F, A, Fut, T>(
    manager: &VspManager,
    description: EndpointDescription,
    handler: F,
) -> Result<(), VspError>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    Fut: Future<Output = Streaming<T>> + Send + 'static,
    T: Serialize + Send + 'static,
{
    register_stream(manager, description, handler, ServiceStreamValue)
}

// The four entry points above exist for the macro's diagnostics (each names the bounds of its
// shape in the user's terms); the work is done once per shape, here.

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
pub async fn call_fallible_stream<T: DeserializeOwned, E: DeserializeOwned>(
    client: &VspClient,
    service: &str,
    endpoint: &str,
    idempotent: bool,
    args: &impl Serialize,
) -> Result<CallStream<T>, CallError<E>> {
    client
        .call_stream_service(service, endpoint, args, options(idempotent))
        .await
}

/// Calls a method returning `Streaming<T>`.
pub async fn call_infallible_stream<T: DeserializeOwned>(
    client: &VspClient,
    service: &str,
    endpoint: &str,
    idempotent: bool,
    args: &impl Serialize,
) -> Result<CallStream<T>, VspError> {
    client
        .call_stream_with(service, endpoint, args, options(idempotent))
        .await
}

fn options(idempotent: bool) -> CallOptions {
    CallOptions::new().idempotent(idempotent)
}

/// Calls a method returning `Result<T, E>`.
pub async fn call_fallible<T: DeserializeOwned, E: DeserializeOwned>(
    client: &VspClient,
    service: &str,
    endpoint: &str,
    idempotent: bool,
    args: &impl Serialize,
) -> Result<T, CallError<E>> {
    client
        .call_service(service, endpoint, args, options(idempotent))
        .await
}

/// Calls a method returning a plain `T`.
pub async fn call_infallible<T: DeserializeOwned>(
    client: &VspClient,
    service: &str,
    endpoint: &str,
    idempotent: bool,
    args: &impl Serialize,
) -> Result<T, VspError> {
    client
        .call_with(service, endpoint, args, options(idempotent))
        .await
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

/// An argument a caller can send.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot travel in a VSP call: it must implement `serde::Serialize`",
    label = "used as an argument of a VSP service method here",
    note = "derive it: `#[derive(serde::Serialize, serde::Deserialize)]`"
)]
pub trait WireSer: Serialize {}

impl<T: Serialize> WireSer for T {}

/// An argument a server can read.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot travel in a VSP call: it must implement `serde::Deserialize` (for any lifetime: `DeserializeOwned`)",
    label = "used as an argument of a VSP service method here",
    note = "derive it: `#[derive(serde::Serialize, serde::Deserialize)]`"
)]
pub trait WireDe: DeserializeOwned {}

impl<T: DeserializeOwned> WireDe for T {}

/// Serializes one argument of a request struct. Through this function (instead of the type's
/// own impl), a type that cannot travel is reported once per missing trait, in VSP's words.
pub fn ser_arg<T: WireSer, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    value.serialize(serializer)
}

/// Deserializes one argument of a request struct (see [`ser_arg`]).
pub fn de_arg<'de, T: WireDe, D: serde::Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
    T::deserialize(deserializer)
}
