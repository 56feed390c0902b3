//! The options of VSP's attributes, `#[vsp::service(name = "...")]` and `#[vsp(name = "...",
//! idempotent)]`, and the rule that each option is given at most once.
//!
//! Why an error rather than last-one-wins: `name = "a", name = "b"` is a typo or a merge gone
//! wrong, and silently picking one changes the wire name that other services call.

use proc_macro2::Span;

/// One option of an attribute, kept until it is given twice.
pub(crate) struct Once<T> {
    keyword: &'static str,
    value: Option<T>,
}

impl<T> Once<T> {
    pub(crate) fn new(keyword: &'static str) -> Self {
        Once {
            keyword,
            value: None,
        }
    }

    /// Records the option written at `span`; a second one is an error there.
    pub(crate) fn set(&mut self, span: Span, value: T) -> syn::Result<()> {
        if self.value.is_some() {
            return Err(syn::Error::new(
                span,
                format!("`{}` specified more than once", self.keyword),
            ));
        }
        self.value = Some(value);
        Ok(())
    }

    pub(crate) fn into_value(self) -> Option<T> {
        self.value
    }
}
