//! The JSON Schemas of a service's `vsp.describe`.

use serde_json::Value;

use crate::protocol::EndpointDescription;

/// Where a service's schemas are made: schemars' generator with feature `schema`, nothing
/// without.
pub struct SchemaGen {
    #[cfg(feature = "schema")]
    generator: schemars::SchemaGenerator,
}

impl SchemaGen {
    /// `deserialize`: the schema of what the server reads (arguments), else of what it writes.
    pub(super) fn new(deserialize: bool) -> Self {
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
    pub(super) fn finish(mut self, schema: Value) -> Value {
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
        |_| crate::protocol::describe::missing_schema()
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
