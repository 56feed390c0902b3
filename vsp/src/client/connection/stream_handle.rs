//! The receiving end of a server stream on a client connection: items in order, credit granted
//! back as they are read, a cancel when dropped early.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use futures_core::Stream;
use serde::Serialize;

use super::{CallFailure, Connection, RawResponse, Upload};

/// The receiving end of an open stream: its items in order, and the credit it grants back as
/// they are read. Dropping it before the end cancels the stream on the server.
pub(crate) struct StreamHandle {
    connection: Arc<Connection>,
    id: u64,
    items: mpsc::UnboundedReceiver<Result<RawResponse, CallFailure>>,
    window: u32,
    /// Items read since the last grant.
    read: u32,
    ended: bool,
    /// A call that sends a stream: the server's credit for its items.
    upload: Option<Arc<Upload>>,
}

impl std::fmt::Debug for StreamHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHandle")
            .field("id", &self.id)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl StreamHandle {
    /// The instance the stream comes from.
    pub(crate) fn instance(&self) -> &str {
        &self.connection.state.instance
    }

    pub(super) fn new(
        connection: Arc<Connection>,
        id: u64,
        items: mpsc::UnboundedReceiver<Result<RawResponse, CallFailure>>,
        window: u32,
        upload: Option<Arc<Upload>>,
    ) -> Self {
        connection.state.in_flight.fetch_add(1, Ordering::Relaxed);
        StreamHandle {
            connection,
            id,
            items,
            window,
            read: 0,
            ended: false,
            upload,
        }
    }

    /// The highest protocol revision the server has answered with.
    pub(crate) fn peer_revision(&self) -> u32 {
        self.connection.state.peer_revision.load(Ordering::Relaxed)
    }

    /// Starts sending `items` as the call's own stream, on a task of its own (see `upload`);
    /// false if the call sends none.
    pub(crate) fn send_items<S>(&self, items: S) -> bool
    where
        S: Stream + Send + 'static,
        S::Item: Serialize + Send,
    {
        let Some(upload) = self.upload.clone() else {
            return false;
        };
        tokio::spawn(super::upload::pump(
            self.connection.clone(),
            self.id,
            upload,
            items,
        ));
        true
    }

    /// The next frame of the stream: an item, or its end (`stream_end == Some(true)`); `None`
    /// once the end was read.
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<RawResponse, CallFailure>>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        let frame = std::task::ready!(self.items.poll_recv(cx));
        match &frame {
            Some(Ok(response)) if response.stream_end == Some(false) => {
                // Half the window read: grant it back, so the server never waits on a reader
                // that keeps up.
                self.read += 1;
                if self.read >= (self.window / 2).max(1) {
                    self.connection
                        .state
                        .control(self.id, Some(self.read), false);
                    self.read = 0;
                }
            }
            _ => self.ended = true,
        }
        std::task::Poll::Ready(frame)
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let state = &self.connection.state;
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(upload) = &self.upload {
            state.pending().uploads.remove(&self.id);
            upload.stop();
        }
        if !self.ended {
            state.pending().streams.remove(&self.id);
            state.control(self.id, None, true);
        }
    }
}
