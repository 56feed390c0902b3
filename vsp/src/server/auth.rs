//! Auth hooks: a check that runs before every handler but `health`'s and may await (a token
//! lookup), with the call's [`Context`] (endpoint, metadata, peer identity) in hand.
//!
//! Why a hook and not a `tower::Layer`: VSP's handlers are not `tower::Service`s (a request is a
//! borrowed frame, answered through the connection's write buffer), so a layer would need an
//! adapter that allocates a request and a response per call on the hot path of every server,
//! with or without auth. The hook costs nothing when none is set and one boxed future per call
//! when one is; a hook that answers without waiting is checked in place, without a task.

use std::sync::Arc;

use crate::context::Context;
use crate::error::ErrorCode;
use crate::BoxFuture;

/// Why an [`AuthHook`] refused a call. The caller gets it as a
/// [`VspError::Remote`](crate::VspError::Remote) with code `unauthenticated` or
/// `permission_denied` (and a Velithon client as its `VSPError` with the message).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// No credentials, or credentials that do not check out.
    Unauthenticated(String),
    /// A known caller that may not call this endpoint.
    PermissionDenied(String),
}

impl Rejection {
    /// Unauthenticated, with a message for the caller.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Rejection::Unauthenticated(message.into())
    }

    /// Permission denied, with a message for the caller.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Rejection::PermissionDenied(message.into())
    }

    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            Rejection::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Rejection::PermissionDenied(_) => ErrorCode::PermissionDenied,
        }
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            Rejection::Unauthenticated(message) | Rejection::PermissionDenied(message) => message,
        }
    }
}

/// Decides whether a call may run; set with
/// [`VspManagerBuilder::auth`](crate::VspManagerBuilder::auth).
///
/// It runs before the arguments are decoded, for every endpoint but the built-in `health` (which
/// says only that the server is up, and which the mesh's probes call without credentials). The
/// [`Context`] says which endpoint, with which metadata, from which peer identity: per-endpoint
/// rules are a `match` on [`Context::endpoint`]. The caller's deadline bounds the wait.
///
/// Any `Fn(Context) -> impl Future<Output = Result<(), Rejection>>` is a hook:
///
/// ```
/// use vsp::server::Rejection;
/// use vsp::{Context, VspManager};
///
/// let manager = VspManager::builder("user-service")
///     .auth(|cx: Context| async move {
///         match (cx.endpoint(), cx.metadata().get("authorization")) {
///             ("list_users", _) => Ok(()), // open to everyone
///             (_, Some("Bearer s3cret")) => Ok(()),
///             (_, Some(_)) => Err(Rejection::unauthenticated("invalid token")),
///             (_, None) => Err(Rejection::unauthenticated("missing `authorization`")),
///         }
///     })
///     .build();
/// # drop(manager);
/// ```
pub trait AuthHook: Send + Sync + 'static {
    /// Checks the call described by `cx`.
    fn check(&self, cx: &Context) -> BoxFuture<'static, Result<(), Rejection>>;
}

impl<F, Fut> AuthHook for F
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), Rejection>> + Send + 'static,
{
    fn check(&self, cx: &Context) -> BoxFuture<'static, Result<(), Rejection>> {
        Box::pin(self(cx.clone()))
    }
}

/// An [`AuthHook`] that lets a call in when its `authorization` metadata is `Bearer <token>` for
/// one of the given tokens (compared in constant time); every other call is `unauthenticated`.
///
/// ```
/// let manager = vsp::VspManager::builder("user-service")
///     .auth(vsp::server::BearerToken::new(["s3cret"]))
///     .build();
/// # drop(manager);
/// ```
#[derive(Clone)]
pub struct BearerToken {
    tokens: Arc<[Box<[u8]>]>,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerToken")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl BearerToken {
    /// Accepts any of `tokens`.
    pub fn new<T: AsRef<str>>(tokens: impl IntoIterator<Item = T>) -> Self {
        BearerToken {
            tokens: tokens
                .into_iter()
                .map(|token| token.as_ref().as_bytes().into())
                .collect(),
        }
    }

    /// Whether `authorization` (the metadata value) carries one of the tokens.
    pub fn accepts(&self, authorization: &str) -> bool {
        let Some(token) = authorization
            .strip_prefix("Bearer ")
            .or_else(|| authorization.strip_prefix("bearer "))
        else {
            return false;
        };
        // Every token is compared in full, so the time taken says nothing about which matched.
        self.tokens.iter().fold(false, |found, known| {
            found | constant_time_eq(known, token.as_bytes())
        })
    }

    fn decide(&self, cx: &Context) -> Result<(), Rejection> {
        match cx.metadata().get("authorization") {
            None => Err(Rejection::unauthenticated(format!(
                "`{}` needs `authorization: Bearer <token>` metadata",
                cx.endpoint()
            ))),
            Some(value) if self.accepts(value) => Ok(()),
            Some(_) => Err(Rejection::unauthenticated("the bearer token is not valid")),
        }
    }
}

impl AuthHook for BearerToken {
    fn check(&self, cx: &Context) -> BoxFuture<'static, Result<(), Rejection>> {
        let decision = self.decide(cx);
        Box::pin(std::future::ready(decision))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_match_whole_tokens_only() {
        let auth = BearerToken::new(["abc", "other"]);
        assert!(auth.accepts("Bearer abc"));
        assert!(auth.accepts("Bearer other"));
        assert!(!auth.accepts("Bearer ab"));
        assert!(!auth.accepts("Bearer abcd"));
        assert!(!auth.accepts("abc"));
        assert!(!auth.accepts("Basic abc"));
    }
}
