//! Control frames to the server (more items for a stream, a cancel), sent only to a server
//! whose answers show it reads them; and the cancels of calls dropped before any answer said so,
//! kept until one does.

use std::sync::atomic::Ordering;

use super::ConnectionState;
use crate::protocol::frame::encode_frame;
use crate::protocol::{write_envelope, Extensions, HeaderOut, RequestIdOut, CONTROL_REVISION};

/// Cancels kept per connection until its server's revision is known.
const DEFERRED_CANCELS: usize = 64;

impl ConnectionState {
    /// Sends a control frame for call `id` (more items, or a cancel), to a server that knows
    /// them.
    pub(super) fn control(&self, id: u64, credit: Option<u32>, cancel: bool) {
        let revision = self.peer_revision.load(Ordering::Relaxed);
        if revision < CONTROL_REVISION {
            if cancel && revision == 0 {
                self.defer_cancel(id);
            }
            return;
        }
        let header = HeaderOut {
            request_id: RequestIdOut::Int(id),
            service: "",
            endpoint: "",
            is_response: false,
        };
        let _ = self.queue.push(|out| {
            encode_frame(out, |out| {
                write_envelope(out, &header, &Extensions::control(credit, cancel), |out| {
                    out.extend_from_slice(b"{}");
                    Ok::<_, std::convert::Infallible>(())
                })
            })
        });
    }

    /// Keeps the cancel of call `id` until an answer shows whether the server reads cancels.
    fn defer_cancel(&self, id: u64) {
        let mut deferred = self
            .deferred_cancels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if deferred.len() < DEFERRED_CANCELS {
            deferred.push(id);
            self.owes_cancels.store(true, Ordering::Release);
        }
    }

    /// An answer arrived (its revision learned): the cancels kept go out if the server reads
    /// them, and are forgotten if it does not.
    pub(super) fn settle_deferred_cancels(&self) {
        let ids = {
            let mut deferred = self
                .deferred_cancels
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.owes_cancels.store(false, Ordering::Release);
            std::mem::take(&mut *deferred)
        };
        if self.peer_revision.load(Ordering::Relaxed) >= CONTROL_REVISION {
            for id in ids {
                self.control(id, None, true);
            }
        }
    }
}
