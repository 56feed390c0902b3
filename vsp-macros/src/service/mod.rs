//! `#[vsp::service]`: a trait in, the trait with `Send` futures, its request structs, its
//! server adapter and its typed client out.
//!
//! Parsing checks everything a user can get wrong and reports it at the offending tokens; the
//! generator then only writes code. Generated code names everything by absolute path so a
//! user's `Result`, `Option` or `Box` cannot change its meaning.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Attribute, Ident, ItemTrait, LitStr, Token, TraitItem, Type, Visibility};

use crate::attr::Once;
use crate::naming::{kebab_case, suffixed};

mod client;
mod parse;

use client::codecs;
use parse::{is_option, parse_method, Errors, Method, Output};

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args: ServiceArgs = syn::parse2(attr)?;
    let item: ItemTrait = syn::parse2(item)?;
    Ok(ServiceGenerator::parse(args, item)?.into_token_stream())
}

/// `#[vsp::service(name = "...", strict_schema)]`.
#[derive(Default)]
struct ServiceArgs {
    name: Option<LitStr>,
    /// Every argument, result and error type must have a JSON Schema (a compile error if not).
    strict_schema: bool,
}

impl Parse for ServiceArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut name_option = Once::new("name");
        let mut strict_option = Once::new("strict_schema");
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            if key == "strict_schema" {
                strict_option.set(key.span(), ())?;
                if !input.is_empty() {
                    input.parse::<Token![,]>()?;
                }
                continue;
            }
            if key != "name" {
                return Err(syn::Error::new(
                    key.span(),
                    format!("unknown `vsp::service` option `{key}`; the options are `name = \"...\"` and `strict_schema`"),
                ));
            }
            input.parse::<Token![=]>()?;
            let name: LitStr = input.parse()?;
            if name.value().is_empty() {
                return Err(syn::Error::new(
                    name.span(),
                    "the service name cannot be empty",
                ));
            }
            name_option.set(key.span(), name)?;
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(ServiceArgs {
            name: name_option.into_value(),
            strict_schema: strict_option.into_value().is_some(),
        })
    }
}

/// Everything needed to write the expansion.
struct ServiceGenerator {
    attrs: Vec<Attribute>,
    vis: Visibility,
    trait_ident: Ident,
    service_name: String,
    strict_schema: bool,
    methods: Vec<Method>,
}

impl ServiceGenerator {
    fn parse(args: ServiceArgs, item: ItemTrait) -> syn::Result<Self> {
        let mut errors = Errors::default();
        if let Some(unsafety) = item.unsafety {
            errors.push(unsafety.span(), "a service trait cannot be `unsafe`");
        }
        if let Some(auto) = item.auto_token {
            errors.push(auto.span(), "a service trait cannot be `auto`");
        }
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            errors.push(
                item.generics.span(),
                "generic service traits are not supported: every endpoint needs one concrete wire type per argument",
            );
        }
        if !item.supertraits.is_empty() {
            errors.push(
                item.supertraits.span(),
                "a service trait cannot have supertraits",
            );
        }
        let mut methods: Vec<Method> = Vec::new();
        for trait_item in item.items {
            match trait_item {
                TraitItem::Fn(method) => {
                    if let Some(method) = parse_method(method, &mut errors) {
                        if let Some(first) =
                            methods.iter().find(|m| m.wire_name == method.wire_name)
                        {
                            errors.push(
                                method.ident.span(),
                                format!(
                                    "duplicate endpoint name `{}`: method `{}` already uses it",
                                    method.wire_name, first.ident
                                ),
                            );
                        }
                        methods.push(method);
                    }
                }
                other => errors.push(
                    other.span(),
                    "a service trait can only contain `async fn` methods",
                ),
            }
        }
        errors.finish()?;
        let service_name = match args.name {
            Some(name) => name.value(),
            None => kebab_case(&item.ident.to_string()),
        };
        Ok(ServiceGenerator {
            attrs: item.attrs,
            vis: item.vis,
            trait_ident: item.ident,
            service_name,
            strict_schema: args.strict_schema,
            methods,
        })
    }

    fn client_ident(&self) -> Ident {
        suffixed(&self.trait_ident, "Client")
    }

    fn server_ident(&self) -> Ident {
        suffixed(&self.trait_ident, "Server")
    }

    fn args_ident(&self, method: &Method) -> Ident {
        format_ident!("__Vsp{}{}Args", self.trait_ident, camel(&method.ident))
    }

    /// The trait, with every method returning a `Send` future.
    fn trait_def(&self) -> TokenStream {
        let ServiceGenerator {
            attrs,
            vis,
            trait_ident,
            ..
        } = self;
        let methods = self.methods.iter().map(|method| {
            let Method {
                attrs,
                ident,
                args,
                ret,
                ..
            } = method;
            let names = args.iter().map(|(name, _)| name);
            let types = args.iter().map(|(_, ty)| ty);
            quote! {
                #(#attrs)*
                fn #ident(&self, #(#names: #types),*)
                    -> impl ::core::future::Future<Output = #ret> + ::core::marker::Send;
            }
        });
        // Unless the user gave the trait one: what a server of a type that does not implement
        // it is told, `Arc<S>` first among them.
        let on_unimplemented = (!attrs.iter().any(|attr| {
            attr.path()
                .segments
                .last()
                .is_some_and(|last| last.ident == "on_unimplemented")
        }))
        .then(|| {
            let server = self.server_ident();
            let note = format!(
                "to serve an implementation shared behind an `Arc`, use `{server}::from_arc(arc)`"
            );
            quote! {
                #[diagnostic::on_unimplemented(note = #note)]
            }
        });
        quote! {
            #(#attrs)*
            #on_unimplemented
            #vis trait #trait_ident {
                #(#methods)*
            }
        }
    }

    /// One request struct per method, keyed by parameter names.
    fn args_structs(&self) -> TokenStream {
        self.methods
            .iter()
            .map(|method| {
                let ident = self.args_ident(method);
                // Each field goes through `WireSer`/`WireDe`-bound functions, so a type that is not serde
                // is reported in VSP's words (at the type), not by every serde impl using it.
                let fields = method.wire_args().map(|(name, ty)| {
                    let ser = syn::LitStr::new("::vsp::__private::ser_arg", ty.span());
                    let de = syn::LitStr::new("::vsp::__private::de_arg", ty.span());
                    // As serde does for a plain `Option` field: a missing one is `None` (with a
                    // `deserialize_with`, serde would call it missing).
                    let default = is_option(ty).then(|| quote!(default,));
                    quote_spanned! {ty.span()=>
                        #[serde(#default serialize_with = #ser, deserialize_with = #de)]
                        #name: #ty,
                    }
                });
                quote_spanned! {method.ident.span()=>
                    #[derive(::vsp::__private::serde::Serialize, ::vsp::__private::serde::Deserialize)]
                    #[serde(crate = "::vsp::__private::serde")]
                    #[doc(hidden)]
                    struct #ident {
                        #(#fields)*
                    }
                }
            })
            .collect()
    }

    /// Compile-time checks at the user's types, so a type that cannot travel is reported there.
    fn assertions(&self) -> TokenStream {
        // Arguments are checked by their request struct's (de)serialize functions.
        let mut types: Vec<&Type> = Vec::new();
        for method in &self.methods {
            match &method.output {
                Output::Fallible { ok, err } => types.extend([&**ok, &**err]),
                Output::Value => types.push(&method.ret),
                Output::Stream { item } => types.push(item),
                Output::FallibleStream { item, err } => types.extend([&**item, &**err]),
            }
            if let Some(input) = &method.input {
                types.push(&input.item);
            }
        }
        types
            .into_iter()
            .map(|ty| {
                quote_spanned! {ty.span()=>
                    const _: fn() = || {
                        #[allow(unused_imports)]
                        use ::vsp::__private::{SerializeKnown as _, SerializeMissing as _};
                        (&&::vsp::__private::TravelCheck::<#ty>::new()).next_check().assert();
                    };
                }
            })
            .collect()
    }

    fn endpoint_names(&self) -> Vec<&str> {
        self.methods.iter().map(|m| m.wire_name.as_str()).collect()
    }

    /// `XxxServer<S>`: registers every method of an implementation as an endpoint.
    fn server(&self) -> TokenStream {
        let ServiceGenerator {
            vis, trait_ident, ..
        } = self;
        let server = self.server_ident();
        let names = self.endpoint_names();
        let doc = format!(
            "Serves an implementation of [`{trait_ident}`]: pass it to [`VspManager::serve`](::vsp::VspManager::serve) and every method becomes an endpoint of `{}`.",
            self.service_name
        );
        let registrations = self.methods.iter().map(|method| {
            let args_ident = self.args_ident(method);
            let ident = &method.ident;
            let description = self.description(method);
            let names: Vec<&Ident> = method.args.iter().map(|(name, _)| name).collect();
            let wire_names: Vec<&Ident> = method.wire_args().map(|(name, _)| name).collect();
            // The caller's stream, a second parameter of the handler.
            let input = method.input.as_ref().map(|input| {
                let ident = &input.ident;
                quote!(, #ident)
            });
            let (register, text) = register_fn(method);
            // A local of the generated code, invisible to (and not shadowed by) a parameter the
            // user named `service`.
            let shared = Ident::new("service", Span::mixed_site());
            // Spanned at the method: an unmet bound on its types is reported there.
            let register = quote_spanned! {ident.span()=>
                ::vsp::__private::#register(manager, #description, #text move |#args_ident { #(#wire_names),* } #input| {
                    let #shared = ::core::clone::Clone::clone(&#shared);
                    async move { <S as #trait_ident>::#ident(&*#shared, #(#names),*).await }
                })
            };
            quote! {
                {
                    let #shared = ::core::clone::Clone::clone(&self.service);
                    #register?;
                }
            }
        });
        quote! {
            #[doc = #doc]
            #vis struct #server<S> {
                service: ::std::sync::Arc<S>,
            }

            impl<S> #server<S> {
                /// Wraps the implementation to be served (for one already in an `Arc`, see
                /// `from_arc`).
                pub fn new(service: S) -> Self {
                    #server { service: ::std::sync::Arc::new(service) }
                }

                /// Wraps an implementation shared with other owners.
                pub fn from_arc(service: ::std::sync::Arc<S>) -> Self {
                    #server { service }
                }
            }

            impl<S> ::core::clone::Clone for #server<S> {
                fn clone(&self) -> Self {
                    #server { service: ::core::clone::Clone::clone(&self.service) }
                }
            }

            impl<S> ::vsp::Service for #server<S>
            where
                S: #trait_ident + ::core::marker::Send + ::core::marker::Sync + 'static,
            {
                fn endpoint_names(&self) -> &'static [&'static str] {
                    &[#(#names),*]
                }

                fn register(self, manager: &::vsp::VspManager) -> ::core::result::Result<(), ::vsp::VspError> {
                    #(#registrations)*
                    ::core::result::Result::Ok(())
                }
            }
        }
    }

    /// A function that writes the JSON Schema of `ty`: schemars' when it has one (or a compile
    /// error without one, with `strict_schema`), else the open schema.
    fn schema_fn(&self, ty: &Type) -> TokenStream {
        if self.strict_schema {
            return quote_spanned! {ty.span()=> ::vsp::__private::strict_schema_fn::<#ty>() };
        }
        quote_spanned! {ty.span()=>
            {
                #[allow(unused_imports)]
                use ::vsp::__private::{SchemaByJsonSchema as _, SchemaOpen as _};
                (&&::vsp::__private::SchemaOf::<#ty>::new()).schema_fn()
            }
        }
    }

    /// The `EndpointDescription` of a method, made when it is registered.
    fn description(&self, method: &Method) -> TokenStream {
        let wire_name = &method.wire_name;
        let idempotent = method.idempotent;
        let doc = match &method.doc {
            Some(doc) => quote!(::core::option::Option::Some(#doc)),
            None => quote!(::core::option::Option::None),
        };
        let params = method.wire_args().map(|(name, ty)| {
            let name = name.to_string();
            let name = name.trim_start_matches("r#");
            let required = !is_option(ty);
            let schema = self.schema_fn(ty);
            quote!((#name, #required, #schema))
        });
        let (result, error) = match &method.output {
            Output::Fallible { ok: value, err } | Output::FallibleStream { item: value, err } => {
                let error = self.schema_fn(err);
                (
                    self.schema_fn(value),
                    quote!(::core::option::Option::Some(#error)),
                )
            }
            Output::Value => (
                self.schema_fn(&method.ret),
                quote!(::core::option::Option::None),
            ),
            Output::Stream { item } => (self.schema_fn(item), quote!(::core::option::Option::None)),
        };
        let described = quote! {
            ::vsp::__private::describe(#wire_name, #doc, #idempotent, &[#(#params),*], #result, #error)
        };
        match &method.input {
            None => described,
            Some(input) => {
                let name = input.ident.to_string();
                let name = name.trim_start_matches("r#");
                let schema = self.schema_fn(&input.item);
                quote!(::vsp::__private::with_input_stream(#described, #name, #schema))
            }
        }
    }
}

impl ToTokens for ServiceGenerator {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        let trait_def = self.trait_def();
        let server = self.server();
        let client = self.client();
        let args_structs = self.args_structs();
        let assertions = self.assertions();
        // The checks first: a type that cannot travel is reported by them before anything else.
        tokens.extend(quote! {
            #assertions
            #trait_def
            #server
            #client
            #args_structs
        });
    }
}

/// The `vsp::__private` function that registers `method`, and its arguments before the handler:
/// the typed error's text and HTTP status, and the codecs of its types.
fn register_fn(method: &Method) -> (TokenStream, TokenStream) {
    let (register, text) = register_fn_of_output(method);
    if method.input.is_none() {
        return (register, text);
    }
    // The same shapes, taking the caller's stream: `register_client_stream_fallible`, ...
    let kind = match &method.output {
        Output::Fallible { .. } => quote!(register_client_stream_fallible),
        Output::Value => quote!(register_client_stream_infallible),
        Output::FallibleStream { .. } => quote!(register_bidi_stream_fallible),
        Output::Stream { .. } => quote!(register_bidi_stream_infallible),
    };
    (kind, text)
}

/// The registration of a method that takes no stream, by what it returns.
fn register_fn_of_output(method: &Method) -> (TokenStream, TokenStream) {
    // The error's text (its `Display` if it has one) and HTTP status (its `HttpStatus` if it
    // has one), picked where `E` is concrete.
    let text_of = |err: &Type| {
        quote! {{
            #[allow(unused_imports)]
            use ::vsp::__private::{
                ByDefaultStatus as _, ByDisplay as _, ByHttpStatus as _, ByJson as _,
            };
            ::vsp::__private::ErrorWays::<#err>::new(
                (&&::vsp::__private::ErrorText::<#err>::new()).text_fn(),
                (&&::vsp::__private::ErrorStatus::<#err>::new()).status_fn(),
            )
        },}
    };
    match &method.output {
        Output::Fallible { ok, err } => {
            let codecs = codecs(&[ok, err]);
            let text = text_of(err);
            (quote!(register_fallible), quote!(#text #codecs))
        }
        Output::Value => (quote!(register_infallible), codecs(&[&method.ret])),
        Output::FallibleStream { item, err } => {
            let codecs = codecs(&[item, err]);
            let text = text_of(err);
            (quote!(register_fallible_stream), quote!(#text #codecs))
        }
        Output::Stream { item } => (quote!(register_infallible_stream), codecs(&[item])),
    }
}

/// `get_user` -> `GetUser`, for generated type names.
fn camel(ident: &Ident) -> String {
    ident
        .to_string()
        .trim_start_matches("r#")
        .split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}
