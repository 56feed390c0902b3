//! What is picked per type where the macro expands (autoref specialization): a typed error's
//! text and HTTP status.

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
            // A peer may trigger the error on every call: said once per process, not per call.
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if valid.is_none() && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    "the HTTP status {status} of a typed error is not 4xx: not sent, the gateway \
                     answers 422 (logged once)"
                );
            }
            valid
        });
        (self.text.map(|text| text(err)), status)
    }
}
