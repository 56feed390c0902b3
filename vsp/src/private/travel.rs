//! What travels: the check that a result or error type can (`TravelCheck`), the codecs the
//! generated code writes and reads it through (`Codec`, `Wire`), and the arguments' bounds.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::CallError;

/// The check that a type can travel in a VSP call, as a result or a typed error: one error
/// when it cannot, whichever of serde's traits it lacks. Placed at the user's type by the
/// macro: `(&&TravelCheck::<T>::new()).next_check().assert()`. Autoref specialization
/// picks what is left to check: `Deserialize` when `T` is `Serialize`, else `Serialize` (and
/// the message asks for both), so a type that lacks both is reported once, not per trait.
pub struct TravelCheck<T>(std::marker::PhantomData<fn(&T)>);

impl<T> TravelCheck<T> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        TravelCheck(std::marker::PhantomData)
    }
}

/// `T` is `Serialize`: `Deserialize` is left.
pub struct CheckDeserialize<T>(std::marker::PhantomData<fn(&T)>);

/// `T` is not `Serialize`.
pub struct CheckSerialize<T>(std::marker::PhantomData<fn(&T)>);

/// The `Serialize` case of [`TravelCheck`].
pub trait SerializeKnown<T> {
    fn next_check(&self) -> CheckDeserialize<T>;
}

impl<T: Serialize> SerializeKnown<T> for &TravelCheck<T> {
    fn next_check(&self) -> CheckDeserialize<T> {
        CheckDeserialize(std::marker::PhantomData)
    }
}

/// The fallback of [`TravelCheck`].
pub trait SerializeMissing<T> {
    fn next_check(&self) -> CheckSerialize<T>;
}

impl<T> SerializeMissing<T> for TravelCheck<T> {
    fn next_check(&self) -> CheckSerialize<T> {
        CheckSerialize(std::marker::PhantomData)
    }
}

/// What a type that can travel passes, given what is left to check (`C`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot travel in a VSP call: it must implement `serde::Serialize` and `serde::de::DeserializeOwned`",
    label = "used in a VSP service method here",
    note = "derive them: `#[derive(serde::Serialize, serde::Deserialize)]`"
)]
pub trait Travels<C> {}

impl<T: DeserializeOwned> Travels<CheckDeserialize<T>> for T {}

impl<T: Serialize> Travels<CheckSerialize<T>> for T {}

impl<T> CheckDeserialize<T> {
    /// See [`TravelCheck`].
    pub fn assert(self)
    where
        T: Travels<Self>,
    {
    }
}

impl<T> CheckSerialize<T> {
    /// See [`TravelCheck`].
    pub fn assert(self)
    where
        T: Travels<Self>,
    {
    }
}

/// How the generated code writes and reads a type that travels, picked by autoref
/// specialization where the macro expands (`T` concrete): `(&&CodecOf::<T>::new()).codec()` is
/// [`SerdeCodec`] when `T` implements `Serialize` and `DeserializeOwned`, [`Untravelled`]
/// otherwise. Through it, the generated client and server put no serde bound of their own on
/// `T`: a type that cannot travel is reported once, by [`TravelCheck`], in VSP's words.
pub trait Codec<T>: Copy + Send + Sync + 'static {
    fn serialize<S: serde::Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error>;
    fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<T, D::Error>;
}

/// serde's own impls.
#[derive(Debug, Clone, Copy)]
pub struct SerdeCodec;

impl<T: Serialize + DeserializeOwned> Codec<T> for SerdeCodec {
    fn serialize<S: serde::Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }

    fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        T::deserialize(deserializer)
    }
}

/// The codec of a type that cannot travel. No program that picks it compiles (the
/// [`TravelCheck`] of the same type fails), so it never runs; it only keeps the generated
/// code free of the errors that check already reports.
#[derive(Debug, Clone, Copy)]
pub struct Untravelled;

const UNTRAVELLED: &str = "this type does not implement serde's traits";

impl<T> Codec<T> for Untravelled {
    fn serialize<S: serde::Serializer>(_: &T, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(UNTRAVELLED))
    }

    fn deserialize<'de, D: serde::Deserializer<'de>>(_: D) -> Result<T, D::Error> {
        Err(serde::de::Error::custom(UNTRAVELLED))
    }
}

/// See [`Codec`].
pub struct CodecOf<T>(std::marker::PhantomData<fn(&T)>);

impl<T> CodecOf<T> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        CodecOf(std::marker::PhantomData)
    }
}

/// The serde case of [`CodecOf`].
pub trait BySerde {
    fn codec(&self) -> SerdeCodec;
}

impl<T: Serialize + DeserializeOwned> BySerde for &CodecOf<T> {
    fn codec(&self) -> SerdeCodec {
        SerdeCodec
    }
}

/// The fallback of [`CodecOf`].
pub trait ByNothing {
    fn codec(&self) -> Untravelled;
}

impl<T> ByNothing for CodecOf<T> {
    fn codec(&self) -> Untravelled {
        Untravelled
    }
}

/// A value written and read through its codec `C`.
pub struct Wire<T, C>(pub T, std::marker::PhantomData<fn() -> C>);

impl<T, C> Wire<T, C> {
    pub(crate) fn new(value: T) -> Self {
        Wire(value, std::marker::PhantomData)
    }
}

impl<T, C: Codec<T>> Serialize for Wire<T, C> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        C::serialize(&self.0, serializer)
    }
}

impl<'de, T, C: Codec<T>> serde::Deserialize<'de> for Wire<T, C> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        C::deserialize(deserializer).map(Wire::new)
    }
}

/// A typed error read through its codec, back to the service's own type.
pub(super) fn unwire<E, C>(err: CallError<Wire<E, C>>) -> CallError<E> {
    match err {
        CallError::Service(wire) => CallError::Service(wire.0),
        CallError::Vsp(err) => CallError::Vsp(err),
    }
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
