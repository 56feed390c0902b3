//! Procedural macros of VSP. Use them through the `vsp` crate: `#[vsp::service]` and
//! `#[vsp::call]`; their documentation lives there.

use proc_macro::TokenStream;

mod attr;
mod call;
mod naming;
mod service;

/// Turns a service trait into its endpoints, server adapter and typed client. See `vsp::service`.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand_with(attr, item, service::expand)
}

/// Writes the body of a function that calls one service method. See `vsp::call`.
#[proc_macro_attribute]
pub fn call(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand_with(attr, item, call::expand)
}

fn expand_with(
    attr: TokenStream,
    item: TokenStream,
    expand: fn(
        proc_macro2::TokenStream,
        proc_macro2::TokenStream,
    ) -> syn::Result<proc_macro2::TokenStream>,
) -> TokenStream {
    expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
