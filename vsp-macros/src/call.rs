//! `#[vsp::call(Trait::method)]`: writes the body of a function that calls one service method
//! through the trait's generated client.
//!
//! The method name and the arguments are emitted with the user's spans, so a method that does not
//! exist or an argument of the wrong type is reported at the user's tokens.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Attribute, Block, FnArg, Pat, Path, PathArguments, Signature, Token, Visibility};

use crate::naming::suffixed;

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let target: Path = syn::parse2(attr.clone()).map_err(|err| {
        syn::Error::new(
            err.span(),
            "expected the method to call, as `#[vsp::call(Service::method)]`",
        )
    })?;
    let item: BodilessFn = syn::parse2(item)?;
    CallGenerator::parse(target, item).map(|generator| generator.generate())
}

/// `#[attrs] vis async fn name(client: &VspClient, args...) -> Ret;` (a body is refused).
struct BodilessFn {
    attrs: Vec<Attribute>,
    vis: Visibility,
    sig: Signature,
}

impl Parse for BodilessFn {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let sig: Signature = input.parse()?;
        if input.peek(syn::token::Brace) {
            let body: Block = input.parse()?;
            return Err(syn::Error::new(
                body.span(),
                "`#[vsp::call]` writes the body: end the signature with `;`",
            ));
        }
        input.parse::<Token![;]>()?;
        Ok(BodilessFn { attrs, vis, sig })
    }
}

struct CallGenerator {
    item: BodilessFn,
    client_type: Path,
    method: syn::Ident,
    client_arg: syn::Ident,
    args: Vec<syn::Ident>,
}

impl CallGenerator {
    fn parse(target: Path, item: BodilessFn) -> syn::Result<Self> {
        if target.segments.len() < 2 {
            return Err(syn::Error::new(
                target.span(),
                "expected `Service::method`: the service trait, then the method",
            ));
        }
        if let Some(segment) = target
            .segments
            .iter()
            .find(|s| !matches!(s.arguments, PathArguments::None))
        {
            return Err(syn::Error::new(
                segment.arguments.span(),
                "service traits are not generic",
            ));
        }
        let mut client_type = target.clone();
        let method = client_type
            .segments
            .pop()
            .map(|pair| pair.into_value().ident)
            .expect("checked: at least two segments");
        client_type.segments.pop_punct();
        let trait_segment = client_type
            .segments
            .last_mut()
            .expect("checked: at least two segments");
        trait_segment.ident = suffixed(&trait_segment.ident, "Client");

        let sig = &item.sig;
        if sig.asyncness.is_none() {
            return Err(syn::Error::new(
                sig.fn_token.span(),
                "a `#[vsp::call]` function must be `async fn`",
            ));
        }
        if !sig.generics.params.is_empty() {
            return Err(syn::Error::new(
                sig.generics.span(),
                "a `#[vsp::call]` function cannot be generic",
            ));
        }
        let mut inputs = sig.inputs.iter();
        let client_arg = match inputs.next() {
            Some(FnArg::Typed(arg)) => plain_name(&arg.pat)?,
            Some(other) => {
                return Err(syn::Error::new(
                    other.span(),
                    "the first parameter is the client, as `client: &VspClient`",
                ))
            }
            None => {
                return Err(syn::Error::new(
                    sig.paren_token.span.join(),
                    "the first parameter is the client, as `client: &VspClient`",
                ))
            }
        };
        let args = inputs
            .map(|input| match input {
                FnArg::Typed(arg) => plain_name(&arg.pat),
                FnArg::Receiver(receiver) => Err(syn::Error::new(
                    receiver.span(),
                    "`self` is not a method argument",
                )),
            })
            .collect::<syn::Result<Vec<_>>>()?;
        Ok(CallGenerator {
            item,
            client_type,
            method,
            client_arg,
            args,
        })
    }

    fn generate(self) -> TokenStream {
        let CallGenerator {
            item,
            client_type,
            method,
            client_arg,
            args,
        } = self;
        let BodilessFn { attrs, vis, sig } = item;
        // Spanned at the user's path, so "no method named ..." points at it.
        let call = quote_spanned! {method.span()=>
            <#client_type as ::core::convert::From<_>>::from(
                ::core::clone::Clone::clone(#client_arg)
            ).#method(#(#args),*)
        };
        // Declared as failing with `VspError`: only a method that fails with it fits, and one
        // that fails with `CallError<E>` is told so in those words.
        let body = if declares_vsp_error(&sig.output) {
            quote_spanned! {sig.output.span()=> ::vsp::__private::vsp_error_only(#call.await) }
        } else {
            quote! { ::core::result::Result::map_err(#call.await, ::core::convert::Into::into) }
        };
        quote! {
            #(#attrs)*
            // The client may already be the generated one, and the error already the declared one.
            #[allow(clippy::useless_conversion)]
            #vis #sig {
                #body
            }
        }
    }
}

/// Whether the return type is spelled `Result<_, VspError>` (any path ending in those names).
fn declares_vsp_error(output: &syn::ReturnType) -> bool {
    let syn::ReturnType::Type(_, ty) = output else {
        return false;
    };
    let syn::Type::Path(path) = &**ty else {
        return false;
    };
    let Some(last) = path.path.segments.last() else {
        return false;
    };
    let PathArguments::AngleBracketed(generics) = &last.arguments else {
        return false;
    };
    if last.ident != "Result" || generics.args.len() != 2 {
        return false;
    }
    matches!(
        generics.args.iter().nth(1),
        Some(syn::GenericArgument::Type(syn::Type::Path(error)))
            if error.path.segments.last().is_some_and(|s| s.ident == "VspError")
    )
}

fn plain_name(pat: &Pat) -> syn::Result<syn::Ident> {
    match pat {
        Pat::Ident(pat) if pat.subpat.is_none() => Ok(pat.ident.clone()),
        other => Err(syn::Error::new(
            other.span(),
            "`#[vsp::call]` parameters must be plain names",
        )),
    }
}
