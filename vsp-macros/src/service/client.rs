//! `XxxClient`: the typed client of a service, one async method per trait method.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, Type};

use super::{Method, Output, ServiceGenerator};
use crate::naming::const_name;

impl ServiceGenerator {
    /// `XxxClient`: one async method per trait method.
    pub(super) fn client(&self) -> TokenStream {
        let ServiceGenerator {
            vis,
            trait_ident,
            service_name,
            ..
        } = self;
        let client = self.client_ident();
        let doc = format!(
            "Calls `{service_name}` ([`{trait_ident}`]) through a [`VspClient`](::vsp::VspClient): the mesh picks the instance, the pool the connection."
        );
        let consts = self.methods.iter().map(|method| {
            let name = const_name(&method.ident);
            let wire_name = &method.wire_name;
            let doc = format!("The wire name of [`{trait_ident}::{}`].", method.ident);
            quote! {
                #[doc = #doc]
                pub const #name: &'static str = #wire_name;
            }
        });
        let infos = self.methods.iter().map(|method| {
            let wire_name = &method.wire_name;
            let method_name = method.ident.to_string();
            let idempotent = method.idempotent;
            quote! {
                ::vsp::EndpointInfo { name: #wire_name, method: #method_name, idempotent: #idempotent }
            }
        });
        let methods = self.methods.iter().map(|method| self.client_method(method));
        // A trait method named `new` takes the constructor's name; `From<VspClient>` remains.
        let constructor = (!self.methods.iter().any(|m| m.ident == "new")).then(|| {
            quote! {
                /// A client that calls through `client`.
                pub fn new(client: ::vsp::VspClient) -> Self {
                    #client { client }
                }
            }
        });
        // Likewise `local`: a trait method of that name keeps it.
        let server = self.server_ident();
        let local = (!self.methods.iter().any(|m| m.ident == "local")).then(|| {
            let doc = format!(
                "Serves `service` in this process on a free in-memory name and returns a client of it: the one-line setup of a test, with the real implementation or a fake one (any type implementing [`{trait_ident}`]). See [`VspManager::serve_local`](::vsp::VspManager::serve_local)."
            );
            quote! {
                #[doc = #doc]
                ///
                /// # Errors
                /// [`VspError`](::vsp::VspError) if the service cannot be registered or served.
                pub async fn local<S>(service: S) -> ::core::result::Result<Self, ::vsp::VspError>
                where
                    S: #trait_ident + ::core::marker::Send + ::core::marker::Sync + 'static,
                {
                    let manager = ::vsp::VspManager::builder(Self::SERVICE_NAME).build();
                    manager.serve(#server::new(service))?;
                    ::core::result::Result::Ok(#client { client: manager.serve_local().await? })
                }
            }
        });
        quote! {
            #[doc = #doc]
            #[derive(::core::clone::Clone, ::core::fmt::Debug)]
            #vis struct #client {
                client: ::vsp::VspClient,
            }

            impl ::core::convert::From<::vsp::VspClient> for #client {
                fn from(client: ::vsp::VspClient) -> Self {
                    #client { client }
                }
            }

            impl #client {
                /// The service name on the wire.
                pub const SERVICE_NAME: &'static str = #service_name;

                /// Every endpoint of the service.
                pub const ENDPOINTS: &'static [::vsp::EndpointInfo] = &[#(#infos),*];

                #(#consts)*

                #constructor

                #local

                #(#methods)*
            }
        }
    }
    /// One method of the client: the call of its endpoint, typed as the trait method returns.
    fn client_method(&self, method: &Method) -> TokenStream {
        let service_name = &self.service_name;
        let Method {
            attrs,
            ident,
            args,
            ret,
            output,
            wire_name,
            ..
        } = method;
        let args_ident = self.args_ident(method);
        let names: Vec<&Ident> = args.iter().map(|(name, _)| name).collect();
        let wire_names: Vec<&Ident> = method.wire_args().map(|(name, _)| name).collect();
        // The caller's stream is any `Stream` of its items.
        let types = args.iter().map(|(name, ty)| match &method.input {
            Some(input) if input.ident == *name => {
                let item = &input.item;
                quote_spanned! {ty.span()=>
                    impl ::vsp::__private::Stream<Item = #item> + ::core::marker::Send + 'static
                }
            }
            _ => quote!(#ty),
        });
        let codecs = match output {
            Output::Fallible { ok, err } => codecs(&[ok, err]),
            Output::Value => codecs(&[&method.ret]),
            Output::FallibleStream { item, err } => codecs(&[item, err]),
            Output::Stream { item } => codecs(&[item]),
        };
        let (ret, call) = match output {
            Output::Fallible { ok, err } => (
                quote!(::core::result::Result<#ok, ::vsp::CallError<#err>>),
                quote!(call_fallible),
            ),
            Output::Value => (
                quote!(::core::result::Result<#ret, ::vsp::VspError>),
                quote!(call_infallible),
            ),
            Output::FallibleStream { item, err } => (
                quote!(::core::result::Result<::vsp::CallStream<#item>, ::vsp::CallError<#err>>),
                quote!(call_fallible_stream),
            ),
            Output::Stream { item } => (
                quote!(::core::result::Result<::vsp::CallStream<#item>, ::vsp::VspError>),
                quote!(call_infallible_stream),
            ),
        };
        // A method taking a stream calls the same shape's `..._sending` function with it.
        let (call, items) = match &method.input {
            None => (format_ident!("{}", call.to_string()), None),
            Some(input) => {
                let ident = &input.ident;
                (
                    format_ident!("{}_sending", call.to_string()),
                    Some(quote!(#ident,)),
                )
            }
        };
        let options = declared_options(method);
        // Spanned at the return type: an unmet bound on it is reported there.
        let call_expr = quote_spanned! {method.ret.span()=>
            ::vsp::__private::#call(
                &self.client,
                #service_name,
                #wire_name,
                #options,
                &#args_ident { #(#wire_names),* },
                #items
                #codecs
            )
        };
        quote! {
            #(#attrs)*
            pub async fn #ident(&self, #(#names: #types),*) -> #ret {
                #call_expr.await
            }
        }
    }
}

/// The `CallOptions` a method's call starts from: its declared policy (a static) and the hash
/// key taken from its argument.
fn declared_options(method: &Method) -> TokenStream {
    let idempotent = method.idempotent;
    let policy = &method.policy;
    let some = |value: Option<TokenStream>| match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    };
    let timeout = some(policy.timeout_ms.map(|v| quote!(#v)));
    let attempts = some(policy.max_attempts.map(|v| quote!(#v)));
    let after = some(policy.hedge_after_ms.map(|v| quote!(#v)));
    let percentile = some(policy.hedge_percentile.map(|v| quote!(#v)));
    let hash_key = policy.hash_key.as_ref().map(|key| quote!(.hash_key(&#key)));
    let options = quote! {
        {
        static POLICY: ::vsp::EndpointPolicy = ::vsp::__private::policy(
            #timeout, #attempts, #idempotent, #after, #percentile,
        );
        ::vsp::__private::declared(&POLICY) #hash_key
        }
    };
    options
}

/// The codecs of the types a method's result carries (one: `codec,`; two: `(ok, err),`),
/// picked where they are concrete: serde's, or, for a type that cannot travel, one that leaves
/// the reporting to `TravelCheck` (see `vsp::__private::Codec`).
pub(super) fn codecs(types: &[&Type]) -> TokenStream {
    let each = types.iter().map(|ty| {
        quote_spanned! {ty.span()=>
            {
                #[allow(unused_imports)]
                use ::vsp::__private::{ByNothing as _, BySerde as _};
                (&&::vsp::__private::CodecOf::<#ty>::new()).codec()
            }
        }
    });
    match types {
        [_] => quote!(#(#each)*,),
        _ => quote!((#(#each),*),),
    }
}
