//! Reading one trait method: everything a user can get wrong is reported at its tokens, and
//! what is left is a [`Method`] the generator only writes code from.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, LitStr, Pat, PathArguments, ReturnType, TraitItemFn,
    Type,
};

use crate::attr::Once;

/// One trait method, checked.
pub(super) struct Method {
    /// Attributes other than `#[vsp(...)]` (docs, cfgs, lints).
    pub(super) attrs: Vec<Attribute>,
    pub(super) ident: Ident,
    /// The endpoint's wire name.
    pub(super) wire_name: String,
    /// Its `///` comment, for its description.
    pub(super) doc: Option<String>,
    pub(super) idempotent: bool,
    /// The rest of its declared policy (`timeout_ms`, `max_attempts`, hedging, `hash_key`).
    pub(super) policy: Policy,
    pub(super) args: Vec<(Ident, Type)>,
    /// The argument that carries a stream from the caller (`chunks: Streaming<Chunk>`), if any:
    /// a client stream, or a bidirectional one when the method returns a stream too.
    pub(super) input: Option<InputArg>,
    /// The return type as written (`()` when there is none).
    pub(super) ret: Type,
    pub(super) output: Output,
}

/// A method's declared call policy, beyond `idempotent`.
#[derive(Default)]
pub(super) struct Policy {
    pub(super) timeout_ms: Option<u64>,
    pub(super) max_attempts: Option<u32>,
    pub(super) hedge_after_ms: Option<u64>,
    pub(super) hedge_percentile: Option<f64>,
    /// The argument the call's hash key is taken from.
    pub(super) hash_key: Option<Ident>,
}

/// A method's stream from its caller.
pub(super) struct InputArg {
    pub(super) ident: Ident,
    /// `T` of its `Streaming<T>`.
    pub(super) item: Type,
}

impl Method {
    /// The arguments that travel in the request's JSON object: all but the stream.
    pub(super) fn wire_args(&self) -> impl Iterator<Item = &(Ident, Type)> {
        self.args
            .iter()
            .filter(|(name, _)| self.input.as_ref().is_none_or(|input| input.ident != *name))
    }
}

pub(super) enum Output {
    /// `-> Result<T, E>`: `E` travels typed.
    Fallible { ok: Box<Type>, err: Box<Type> },
    /// `-> T`, or nothing.
    Value,
    /// `-> Streaming<T>`: a server stream of `T`.
    Stream { item: Box<Type> },
    /// `-> Result<Streaming<T>, E>`: a stream, or `E` (typed) instead of it.
    FallibleStream { item: Box<Type>, err: Box<Type> },
}

/// Checks one trait method: `None` (with every problem in `errors`) if it cannot be an endpoint.
pub(super) fn parse_method(method: TraitItemFn, errors: &mut Errors) -> Option<Method> {
    let TraitItemFn {
        attrs,
        sig,
        default,
        ..
    } = method;
    let before = errors.len();
    if let Some(body) = &default {
        errors.push(body.span(), "a service method cannot have a default body");
    }
    check_signature(&sig, errors);
    let args = parse_args(&sig, errors);
    let input = input_arg(&args, errors);
    let (kept_attrs, name, idempotent, policy) = parse_options(attrs, errors);
    let policy = check_policy(policy, idempotent, &args, input.as_ref(), errors);
    let wire_name =
        name.unwrap_or_else(|| sig.ident.to_string().trim_start_matches("r#").to_owned());
    if RESERVED_ENDPOINTS.contains(&wire_name.as_str()) {
        errors.push(
            sig.ident.span(),
            format!(
                "`{wire_name}` is an endpoint every VSP server answers itself: rename the method, or give it another wire name with `#[vsp(name = \"...\")]`"
            ),
        );
    }
    let doc = doc_comment(&kept_attrs);
    let ret: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    if let Some(opaque) = impl_trait_in(&ret) {
        errors.push_error(syn::Error::new_spanned(
            opaque,
            "a service method cannot return `impl Trait`: the generated client and server must name the type. \
             For a stream, return `vsp::Streaming<T>` (`vsp::Streaming::new(stream)` wraps any `Stream`); \
             otherwise, a concrete type",
        ));
    }
    let output = output_of(&ret);
    (errors.len() == before).then_some(Method {
        attrs: kept_attrs,
        ident: sig.ident,
        wire_name,
        doc,
        idempotent,
        policy,
        args,
        input,
        ret,
        output,
    })
}

/// The argument of type `Streaming<T>`, the caller's stream; more than one is an error.
fn input_arg(args: &[(Ident, Type)], errors: &mut Errors) -> Option<InputArg> {
    let mut streams = args
        .iter()
        .filter_map(|(ident, ty)| streaming_item(ty).map(|item| (ident, ty, item)));
    let (ident, _, item) = streams.next()?;
    for (_, ty, _) in streams {
        errors.push_error(syn::Error::new_spanned(
            ty,
            "a service method takes at most one stream from its caller: send one stream of an enum or a struct instead",
        ));
    }
    Some(InputArg {
        ident: ident.clone(),
        item,
    })
}

/// What the signature itself must be: `async fn(&self, ...)`, not const, unsafe, generic or
/// variadic.
fn check_signature(sig: &syn::Signature, errors: &mut Errors) {
    if sig.asyncness.is_none() {
        errors.push(sig.fn_token.span(), "service methods must be `async fn`");
    }
    if let Some(constness) = sig.constness {
        errors.push(constness.span(), "service methods cannot be `const`");
    }
    if let Some(unsafety) = sig.unsafety {
        errors.push(unsafety.span(), "service methods cannot be `unsafe`");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(
            sig.generics.span(),
            "generic methods are not supported: an endpoint needs one concrete wire type per argument",
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(variadic.span(), "variadic methods are not supported");
    }
    match sig.inputs.first() {
        Some(FnArg::Receiver(receiver))
            if receiver.reference.is_some() && receiver.mutability.is_none() => {}
        Some(FnArg::Receiver(receiver)) => errors.push(
            receiver.span(),
            "service methods take `&self`: a service is shared by every connection",
        ),
        _ => errors.push(
            sig.ident.span(),
            "service methods take `&self` as their first parameter",
        ),
    }
}

/// The arguments after `&self`: plain names of owned, concrete types.
fn parse_args(sig: &syn::Signature, errors: &mut Errors) -> Vec<(Ident, Type)> {
    let mut args = Vec::new();
    for input in sig.inputs.iter().skip(1) {
        let FnArg::Typed(arg) = input else { continue };
        match &*arg.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.mutability.is_none() && pat.subpat.is_none() => {
                if let Type::ImplTrait(ty) = &*arg.ty {
                    errors.push(ty.span(), "`impl Trait` arguments are generic, which endpoints do not support: use a concrete type");
                } else if let Type::Reference(reference) = &*arg.ty {
                    errors.push_error(syn::Error::new_spanned(
                        reference,
                        format!(
                            "arguments are owned (each call's arguments are deserialized anew): use `{}`",
                            owned_type(reference)
                        ),
                    ));
                } else {
                    args.push((pat.ident.clone(), (*arg.ty).clone()));
                }
            }
            other => errors.push(
                other.span(),
                "service method arguments must be plain names: each name is a key of the request's JSON object",
            ),
        }
    }
    args
}

/// What `#[vsp(...)]` said about the call policy, before it is checked against the method.
#[derive(Default)]
struct PolicyOptions {
    policy: Policy,
    hash_key: Option<LitStr>,
    hedge: Option<Span>,
}

/// The method's `#[vsp(name = "...", idempotent, timeout_ms = N, max_attempts = N,
/// hedge_after_ms = N | hedge_percentile = F, hash_key = "arg")]` options, and its other
/// attributes (kept).
fn parse_options(
    attrs: Vec<Attribute>,
    errors: &mut Errors,
) -> (Vec<Attribute>, Option<String>, bool, PolicyOptions) {
    let mut name_option = Once::new("name");
    let mut idempotent_option = Once::new("idempotent");
    let mut timeout_option = Once::new("timeout_ms");
    let mut attempts_option = Once::new("max_attempts");
    let mut after_option = Once::new("hedge_after_ms");
    let mut percentile_option = Once::new("hedge_percentile");
    let mut key_option = Once::new("hash_key");
    let mut hedge_span = None;
    let mut kept_attrs = Vec::new();
    for attr in attrs {
        if !attr.path().is_ident("vsp") {
            kept_attrs.push(attr);
            continue;
        }
        let parsed = attr.parse_nested_meta(|meta| {
            let span = meta.path.span();
            if meta.path.is_ident("name") {
                let name: LitStr = meta.value()?.parse()?;
                if name.value().is_empty() {
                    return Err(syn::Error::new(
                        name.span(),
                        "an endpoint name cannot be empty",
                    ));
                }
                name_option.set(span, name.value())
            } else if meta.path.is_ident("idempotent") {
                idempotent_option.set(span, ())
            } else if meta.path.is_ident("timeout_ms") {
                timeout_option.set(span, positive(&meta, "a timeout of 0 ms ends every call at once")?)
            } else if meta.path.is_ident("max_attempts") {
                let attempts = positive(&meta, "`max_attempts` is at least 1 (the call itself)")?;
                attempts_option.set(span, attempts)
            } else if meta.path.is_ident("hedge_after_ms") {
                let value: syn::LitInt = meta.value()?.parse()?;
                hedge_span = Some(span);
                after_option.set(span, value.base10_parse::<u64>()?)
            } else if meta.path.is_ident("hedge_percentile") {
                let value: syn::LitFloat = meta.value()?.parse()?;
                let q: f64 = value.base10_parse()?;
                if !(q > 0.0 && q < 1.0) {
                    return Err(syn::Error::new(value.span(), "`hedge_percentile` is a fraction between 0 and 1, such as 0.95"));
                }
                hedge_span = Some(span);
                percentile_option.set(span, q)
            } else if meta.path.is_ident("hash_key") {
                let value: LitStr = meta.value()?.parse()?;
                key_option.set(span, value)
            } else {
                Err(meta.error(
                    "unknown `vsp` option; expected `name = \"...\"`, `idempotent`, `timeout_ms = N`, `max_attempts = N`, `hedge_after_ms = N`, `hedge_percentile = F` or `hash_key = \"arg\"`",
                ))
            }
        });
        if let Err(err) = parsed {
            errors.push_error(err);
        }
    }
    let idempotent = idempotent_option.into_value().is_some();
    let (after, percentile) = (after_option.into_value(), percentile_option.into_value());
    let options = PolicyOptions {
        policy: Policy {
            timeout_ms: timeout_option.into_value(),
            max_attempts: attempts_option.into_value(),
            hedge_after_ms: after,
            hedge_percentile: percentile,
            hash_key: None,
        },
        hash_key: key_option.into_value(),
        hedge: hedge_span,
    };
    if let (Some(_), Some(_), Some(span)) = (after, percentile, hedge_span) {
        errors.push(
            span,
            "give `hedge_after_ms` or `hedge_percentile`, not both",
        );
    }
    (kept_attrs, name_option.into_value(), idempotent, options)
}

/// A positive integer option's value; zero is the error `zero`.
fn positive<T: std::str::FromStr + PartialEq + From<u8>>(
    meta: &syn::meta::ParseNestedMeta<'_>,
    zero: &str,
) -> syn::Result<T>
where
    T::Err: std::fmt::Display,
{
    let value: syn::LitInt = meta.value()?.parse()?;
    let parsed: T = value.base10_parse()?;
    if parsed == T::from(0) {
        return Err(syn::Error::new(value.span(), zero));
    }
    Ok(parsed)
}

/// The declared policy, checked against the method: a hedge only on an idempotent method, a
/// hash key naming one of its arguments (not its stream).
fn check_policy(
    options: PolicyOptions,
    idempotent: bool,
    args: &[(Ident, Type)],
    input: Option<&InputArg>,
    errors: &mut Errors,
) -> Policy {
    let PolicyOptions {
        mut policy,
        hash_key,
        hedge,
    } = options;
    if let (Some(span), false) = (hedge, idempotent) {
        errors.push(
            span,
            "only an idempotent method can be hedged (its second attempt may run too): add `idempotent`",
        );
    }
    if let Some(key) = hash_key {
        let name = key.value();
        match args.iter().find(|(ident, _)| *ident == name) {
            Some((ident, _)) if input.is_some_and(|input| input.ident == *ident) => errors.push(
                key.span(),
                format!("`{name}` is the caller's stream: a hash key is a plain argument"),
            ),
            Some((ident, _)) => policy.hash_key = Some(ident.clone()),
            None => {
                let known: Vec<String> = args.iter().map(|(ident, _)| ident.to_string()).collect();
                errors.push(
                    key.span(),
                    format!(
                        "`hash_key = \"{name}\"` names no argument of this method (its arguments: {})",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ),
                );
            }
        }
    }
    policy
}

/// The first `impl Trait` in `ty`, wherever it sits (`Result<impl Stream<..>, E>` too).
fn impl_trait_in(ty: &Type) -> Option<&Type> {
    match ty {
        Type::ImplTrait(_) => Some(ty),
        Type::Path(path) => path.path.segments.iter().find_map(|segment| {
            let syn::PathArguments::AngleBracketed(generics) = &segment.arguments else {
                return None;
            };
            generics.args.iter().find_map(|arg| match arg {
                syn::GenericArgument::Type(ty) => impl_trait_in(ty),
                _ => None,
            })
        }),
        Type::Reference(reference) => impl_trait_in(&reference.elem),
        Type::Paren(paren) => impl_trait_in(&paren.elem),
        Type::Group(group) => impl_trait_in(&group.elem),
        Type::Array(array) => impl_trait_in(&array.elem),
        Type::Slice(slice) => impl_trait_in(&slice.elem),
        Type::Tuple(tuple) => tuple.elems.iter().find_map(impl_trait_in),
        _ => None,
    }
}

/// What the return type makes of the endpoint: a value, a typed error, a stream, or both.
fn output_of(ret: &Type) -> Output {
    match result_types(ret) {
        Some((ok, err)) => match streaming_item(&ok) {
            Some(item) => Output::FallibleStream {
                item: Box::new(item),
                err: Box::new(err),
            },
            None => Output::Fallible {
                ok: Box::new(ok),
                err: Box::new(err),
            },
        },
        None => match streaming_item(ret) {
            Some(item) => Output::Stream {
                item: Box::new(item),
            },
            None => Output::Value,
        },
    }
}

/// Whether `ty` is spelled `Option<...>` (any path ending in `Option` with one type argument).
pub(super) fn is_option(ty: &Type) -> bool {
    let Type::Path(path) = ty else { return false };
    path.path.segments.last().is_some_and(|last| {
        last.ident == "Option"
            && matches!(&last.arguments, PathArguments::AngleBracketed(args) if args.args.len() == 1)
    })
}

/// The wire names every server answers itself (`vsp::protocol::HEALTH_ENDPOINT` and
/// `DESCRIBE_ENDPOINT`).
const RESERVED_ENDPOINTS: [&str; 2] = ["health", "vsp.describe"];

/// The text of `///` comments (`#[doc = "..."]`), one leading space per line removed, as rustdoc
/// does; `None` when there is none.
fn doc_comment(attrs: &[Attribute]) -> Option<String> {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|attr| attr.path().is_ident("doc"))
        .filter_map(|attr| match &attr.meta {
            syn::Meta::NameValue(syn::MetaNameValue {
                value:
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(text),
                        ..
                    }),
                ..
            }) => Some(text.value()),
            _ => None,
        })
        .flat_map(|text| {
            text.split('\n')
                .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let text = lines.join("\n").trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// What to write instead of a borrowed argument type: `String` for `&str`, `Vec<T>` for `&[T]`,
/// `T` for `&T`.
fn owned_type(reference: &syn::TypeReference) -> String {
    match &*reference.elem {
        Type::Path(path) if path.path.is_ident("str") => "String".to_owned(),
        Type::Path(path) if path.path.is_ident("Path") => "PathBuf".to_owned(),
        Type::Slice(slice) => {
            let elem = &slice.elem;
            format!("Vec<{}>", quote::quote!(#elem)).replace(' ', "")
        }
        elem => quote::quote!(#elem).to_string().replace(' ', ""),
    }
}

/// `T` and `E` of a return type spelled `Result<T, E>` (any path ending in `Result` with two
/// type arguments).
fn result_types(ty: &Type) -> Option<(Type, Type)> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(generics) = &last.arguments else {
        return None;
    };
    let mut types = generics.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty.clone()),
        _ => None,
    });
    let (ok, err) = (types.next()?, types.next()?);
    (types.next().is_none() && generics.args.len() == 2).then_some((ok, err))
}

/// `T` of a type spelled `Streaming<T>` (any path ending in `Streaming` with one type argument:
/// `vsp::Streaming<T>`, or `Streaming<T>` imported).
fn streaming_item(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Streaming" {
        return None;
    }
    let PathArguments::AngleBracketed(generics) = &last.arguments else {
        return None;
    };
    match generics.args.iter().collect::<Vec<_>>().as_slice() {
        [GenericArgument::Type(item)] => Some(item.clone()),
        _ => None,
    }
}

/// Collects every error so the user sees them all at once.
#[derive(Default)]
pub(super) struct Errors(Option<syn::Error>);

impl Errors {
    pub(super) fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push_error(syn::Error::new(span, message));
    }

    pub(super) fn push_error(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |all| all.into_iter().count())
    }

    pub(super) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}
