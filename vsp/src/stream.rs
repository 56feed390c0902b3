//! What a streaming endpoint returns: [`Streaming`], a stream of items that may end with an
//! error.

use std::fmt::Display;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

/// The items a streaming endpoint sends, built from any `Stream` (`futures::stream`,
/// `tokio-stream`, `async-stream`, a hand-written one).
///
/// Why a type of its own rather than `impl Stream`: a trait method's return type must be
/// nameable for the generated server and client, and an item stream that can fail part way
/// (a database cursor that breaks) needs a way to say so: [`Streaming::try_new`] ends the stream
/// with that error, which the caller receives as its last item.
///
/// ```
/// use vsp::Streaming;
///
/// let ticks: Streaming<u64> = Streaming::iter(0..3);
/// # drop(ticks);
/// ```
pub struct Streaming<T> {
    items: Pin<Box<dyn Stream<Item = Result<T, String>> + Send>>,
}

impl<T> std::fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming").finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Streaming<T> {
    /// A stream whose every item is sent.
    pub fn new(items: impl Stream<Item = T> + Send + 'static) -> Self {
        Streaming {
            items: Box::pin(Map { inner: items }),
        }
    }

    /// A stream that may fail: an `Err` item ends the stream with that error (the caller sees
    /// it as a `handler` error, after the items before it).
    pub fn try_new<E: Display>(items: impl Stream<Item = Result<T, E>> + Send + 'static) -> Self {
        Streaming {
            items: Box::pin(TryMap { inner: items }),
        }
    }

    /// A stream made by calling `next` on a state until it says `None`, as
    /// `futures::stream::unfold`: `next(state)` gives the next item and the state after it.
    ///
    /// ```
    /// use vsp::Streaming;
    ///
    /// // The items of a channel, until its senders are gone.
    /// let (sender, receiver) = tokio::sync::mpsc::channel::<String>(16);
    /// let lines = Streaming::unfold(receiver, |mut receiver| async move {
    ///     let line = receiver.recv().await?;
    ///     Some((line, receiver))
    /// });
    /// # drop((sender, lines));
    /// ```
    pub fn unfold<S, F, Fut>(state: S, next: F) -> Self
    where
        S: Send + 'static,
        F: FnMut(S) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Option<(T, S)>> + Send + 'static,
    {
        Streaming::new(Unfold {
            state: Some(state),
            next,
            pending: None,
        })
    }

    /// A stream of the items of `iter`.
    pub fn iter<I>(iter: I) -> Self
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + Unpin + 'static,
    {
        Streaming::new(Iter(iter.into_iter()))
    }
}

impl<T: Send + 'static> Streaming<T> {
    /// The same items, each turned into a `U` by `f`.
    pub(crate) fn map_items<U: Send + 'static>(self, f: fn(T) -> U) -> Streaming<U> {
        Streaming {
            items: Box::pin(MapItems {
                inner: self.items,
                f,
            }),
        }
    }
}

impl<T> Streaming<T> {
    /// The caller's items of a client or bidirectional stream, as the handler reads them.
    pub(crate) fn from_inbound(
        items: impl Stream<Item = Result<T, String>> + Send + 'static,
    ) -> Self {
        Streaming {
            items: Box::pin(items),
        }
    }

    /// The next item: `Some(Ok)`, `Some(Err)` (the last), or `None` at the end.
    pub(crate) fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, String>>> {
        self.items.as_mut().poll_next(cx)
    }
}

/// Read as a `Stream`, a `Streaming` gives its items: how a handler reads the stream a caller
/// sends (`async fn upload(&self, chunks: Streaming<Chunk>)`), item by item, until the caller's
/// end. A caller's item that does not decode, or a caller that cancels or leaves, ends the
/// whole call (the handler is stopped), so every item read is a good one. A stream made with
/// [`Streaming::try_new`] ends at its error (which only a caller receives).
impl<T> Stream for Streaming<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.items
            .as_mut()
            .poll_next(cx)
            .map(|item| item.and_then(Result::ok))
    }
}

pin_project_lite::pin_project! {
    struct Map<S> {
        #[pin]
        inner: S,
    }
}

impl<S: Stream> Stream for Map<S> {
    type Item = Result<S::Item, String>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.project().inner.poll_next(cx).map(|item| item.map(Ok))
    }
}

struct MapItems<T, U> {
    inner: Pin<Box<dyn Stream<Item = Result<T, String>> + Send>>,
    f: fn(T) -> U,
}

impl<T, U> Stream for MapItems<T, U> {
    type Item = Result<U, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let f = self.f;
        self.inner
            .as_mut()
            .poll_next(cx)
            .map(|item| item.map(|result| result.map(f)))
    }
}

pin_project_lite::pin_project! {
    struct TryMap<S> {
        #[pin]
        inner: S,
    }
}

impl<S, T, E> Stream for TryMap<S>
where
    S: Stream<Item = Result<T, E>>,
    E: Display,
{
    type Item = Result<T, String>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.project()
            .inner
            .poll_next(cx)
            .map(|item| item.map(|result| result.map_err(|err| err.to_string())))
    }
}

pin_project_lite::pin_project! {
    struct Unfold<S, F, Fut> {
        state: Option<S>,
        next: F,
        #[pin]
        pending: Option<Fut>,
    }
}

impl<S, F, Fut, T> Stream for Unfold<S, F, Fut>
where
    F: FnMut(S) -> Fut,
    Fut: std::future::Future<Output = Option<(T, S)>>,
{
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut this = self.project();
        if let Some(state) = this.state.take() {
            this.pending.set(Some((this.next)(state)));
        }
        let Some(pending) = this.pending.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        let step = std::task::ready!(pending.poll(cx));
        this.pending.set(None);
        Poll::Ready(step.map(|(item, state)| {
            *this.state = Some(state);
            item
        }))
    }
}

struct Iter<I>(I);

impl<I: Iterator + Unpin> Stream for Iter<I> {
    type Item = I::Item;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<I::Item>> {
        Poll::Ready(self.0.next())
    }
}
