//! Framing: a u32 big-endian length `N`, then `N` bytes of UTF-8 JSON (or, with the top bit of
//! the length set, `N` bytes of zstd that inflate to it: see `compression`).

use std::future::Future;
use std::io;

use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{Instant, Sleep};

use super::compression::{self, COMPRESSED};
use crate::deadline;
use crate::error::ProtocolError;

/// The largest frame accepted by default: 16 MiB.
pub(crate) const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix.
pub(crate) const LENGTH_PREFIX_LEN: usize = 4;

/// How much the read buffer grows at a time. A peer that announces a large frame and then stalls
/// costs at most this much more, not the size it announced.
const READ_CHUNK: usize = 64 * 1024;

/// Frames up to this size share the reader's buffer; after a larger one the reader moves the
/// bytes that follow it to a fresh buffer, so the large frame's allocation is freed with the
/// frame (and a small frame never keeps a large allocation alive).
pub(crate) const SHARED_FRAME_MAX: usize = 16 * 1024;

/// Appends one frame to `out`: a placeholder length, whatever `write_json` writes, then the real
/// length. If `write_json` fails, `out` is left as it was.
pub(crate) fn encode_frame<E>(
    out: &mut Vec<u8>,
    write_json: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX_LEN]);
    if let Err(err) = write_json(out) {
        out.truncate(start);
        return Err(err);
    }
    // Callers check the size against the peer's limit before queueing (`frame_len`); a frame
    // above `u32::MAX` is never announced with a wrapped length.
    let len = u32::try_from(out.len() - start - LENGTH_PREFIX_LEN).unwrap_or(u32::MAX);
    out[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Why a frame was not queued.
#[derive(Debug)]
pub(crate) enum EncodeError<E> {
    /// The JSON writer failed.
    Json(E),
    /// The encoded frame is `len` bytes, above `max`.
    TooLarge { len: usize, max: usize },
}

/// As [`encode_frame`], but a frame above `max` bytes (or above what the `u32` length prefix
/// can say) is taken back out of `out` and refused: checked after encoding, since the size of
/// JSON is only known once written.
pub(crate) fn encode_frame_within<E>(
    out: &mut Vec<u8>,
    max: usize,
    write_json: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), EncodeError<E>> {
    let start = out.len();
    encode_frame(out, write_json).map_err(EncodeError::Json)?;
    let len = out.len() - start - LENGTH_PREFIX_LEN;
    // The top bit of the prefix marks a compressed frame: no plain frame may need it.
    let max = max.min((COMPRESSED - 1) as usize);
    if len > max {
        out.truncate(start);
        return Err(EncodeError::TooLarge { len, max });
    }
    Ok(())
}

/// Why reading the next frame failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The socket failed, or the peer closed it in the middle of a frame.
    Io(io::Error),
    /// The length prefix broke the protocol; the connection must be closed.
    Protocol(ProtocolError),
    /// The peer sent part of a frame and then nothing more for the frame deadline.
    Stalled {
        /// The frame deadline.
        after: Duration,
        /// Bytes of the unfinished frame received.
        buffered: usize,
    },
    /// No call in flight and no new frame for the idle timeout.
    Idle(Duration),
}

/// How long a server-side read may wait (see [`FrameReader::next_frame_within`]).
pub(crate) struct Patience<'a> {
    /// From the moment a frame is partly read to its last byte.
    pub(crate) frame: Duration,
    /// Without a call in flight, until the next frame starts.
    pub(crate) idle: Duration,
    /// Since when the connection has had no call in flight (`None` while it has some).
    pub(crate) idle_since: &'a (dyn Fn() -> Option<Instant> + Sync),
}

/// Reads frames from a byte stream into one growing buffer; each frame comes out as a `Bytes`
/// that shares that buffer, so no frame is copied.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_frame_size: usize,
    /// When a read first had to wait in the middle of the current frame.
    partial_since: Option<Instant>,
    /// The wake-up of a guarded read, kept across reads so most reads register no timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max_frame_size: usize) -> Self {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            // A length with the top bit set announces a compressed frame.
            max_frame_size: max_frame_size.min((COMPRESSED - 1) as usize),
            partial_since: None,
            timer: None,
        }
    }

    /// As [`next_frame`](FrameReader::next_frame), but gives up on a peer that stalls in the
    /// middle of a frame for `patience.frame` ([`ReadError::Stalled`]) or stays idle, with no
    /// call in flight, for `patience.idle` ([`ReadError::Idle`]).
    ///
    /// Why one timer kept across reads: the deadlines only matter when a read waits, and a
    /// busy connection reads thousands of times a second; the timer is re-armed only when it
    /// fires (then the real condition is checked) or when a stalled frame needs it earlier.
    pub(crate) async fn next_frame_within(
        &mut self,
        patience: &Patience<'_>,
    ) -> Result<Option<Bytes>, ReadError> {
        loop {
            if let Some(frame) = self.try_split_frame()? {
                self.partial_since = None;
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            let timer = self.timer.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep_until(deadline::after(
                    Instant::now(),
                    patience.frame.min(patience.idle),
                )))
            });
            if !self.buf.is_empty() {
                let since = *self.partial_since.get_or_insert_with(Instant::now);
                let due = deadline::after(since, patience.frame);
                if due < timer.deadline() {
                    timer.as_mut().reset(due);
                }
            }
            let read = tokio::select! {
                biased;
                read = self.io.read_buf(&mut self.buf) => read.map_err(ReadError::Io)?,
                () = timer.as_mut() => {
                    let now = Instant::now();
                    let stalled_due = self.partial_since.map(|since| deadline::after(since, patience.frame));
                    let idle_due = (patience.idle_since)().map(|since| deadline::after(since, patience.idle));
                    if stalled_due.is_some_and(|due| due <= now) {
                        return Err(ReadError::Stalled { after: patience.frame, buffered: self.buf.len() });
                    }
                    if self.buf.is_empty() && idle_due.is_some_and(|due| due <= now) {
                        return Err(ReadError::Idle(patience.idle));
                    }
                    // Not yet: wake again at the earliest moment either could be due.
                    let next = [stalled_due, idle_due.filter(|_| self.buf.is_empty())]
                        .into_iter()
                        .flatten()
                        .min()
                        .unwrap_or_else(|| deadline::after(now, patience.idle));
                    timer.as_mut().reset(next);
                    continue;
                }
            };
            if read == 0 {
                return self.end_of_stream();
            }
        }
    }

    fn end_of_stream(&self) -> Result<Option<Bytes>, ReadError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        Err(ReadError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "peer closed the connection {} bytes into a frame",
                self.buf.len()
            ),
        )))
    }

    /// The next frame's JSON, or `None` when the peer closed the stream between frames.
    ///
    /// Cancel safe: bytes read before a cancellation stay in the buffer.
    #[cfg(test)]
    pub(crate) async fn next_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    /// [`next_frame`](FrameReader::next_frame) as a poll: `Pending` registers `cx`'s waker with
    /// the stream (a client connection polls with one waker whoever reads, see
    /// `client::connection::read_turn`).
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Option<Bytes>, ReadError>> {
        loop {
            if let Some(frame) = self.try_split_frame()? {
                return std::task::Poll::Ready(Ok(Some(frame)));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            let read = {
                let read = self.io.read_buf(&mut self.buf);
                std::pin::pin!(read).poll(cx)
            };
            let read = std::task::ready!(read).map_err(ReadError::Io)?;
            if read == 0 {
                return std::task::Poll::Ready(self.end_of_stream());
            }
        }
    }

    /// A whole frame (or a length prefix above the limit) is already buffered: the next read
    /// returns without waiting on the socket.
    /// The next frame if it is already read whole (no I/O, no wait): a reader takes every frame
    /// of one read this way, without going back to the event loop between them.
    pub(crate) fn buffered_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        let frame = self.try_split_frame()?;
        if frame.is_some() {
            self.partial_since = None;
        }
        Ok(frame)
    }

    pub(crate) fn has_buffered_frame(&self) -> bool {
        if self.buf.len() < LENGTH_PREFIX_LEN {
            return false;
        }
        let mut prefix = [0u8; LENGTH_PREFIX_LEN];
        prefix.copy_from_slice(&self.buf[..LENGTH_PREFIX_LEN]);
        let len = (u32::from_be_bytes(prefix) & !COMPRESSED) as usize;
        len > self.max_frame_size || self.buf.len() >= LENGTH_PREFIX_LEN + len
    }

    fn try_split_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        if self.buf.len() < LENGTH_PREFIX_LEN {
            return Ok(None);
        }
        let mut prefix = [0u8; LENGTH_PREFIX_LEN];
        prefix.copy_from_slice(&self.buf[..LENGTH_PREFIX_LEN]);
        let prefix = u32::from_be_bytes(prefix);
        let compressed = prefix & COMPRESSED != 0;
        let len = (prefix & !COMPRESSED) as usize;
        if len > self.max_frame_size {
            return Err(ReadError::Protocol(ProtocolError::FrameTooLarge {
                len,
                max: self.max_frame_size,
            }));
        }
        if self.buf.len() < LENGTH_PREFIX_LEN + len {
            // Grow towards the announced size one chunk at a time, never all at once.
            let missing = LENGTH_PREFIX_LEN + len - self.buf.len();
            self.buf.reserve(missing.min(READ_CHUNK));
            return Ok(None);
        }
        self.buf.advance(LENGTH_PREFIX_LEN);
        let frame = self.buf.split_to(len).freeze();
        if len > SHARED_FRAME_MAX {
            let mut rest = BytesMut::with_capacity(READ_CHUNK.max(self.buf.len()));
            rest.extend_from_slice(&self.buf);
            self.buf = rest;
        }
        if compressed {
            return compression::decompress(&frame, self.max_frame_size)
                .map(Some)
                .map_err(ReadError::Protocol);
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(json: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame::<()>(&mut out, |out| {
            out.extend_from_slice(json.as_bytes());
            Ok(())
        })
        .unwrap();
        out
    }

    #[tokio::test]
    async fn reads_several_frames_from_one_write() {
        let mut bytes = frame("{\"a\":1}");
        bytes.extend(frame("[]"));
        let mut reader = FrameReader::new(&bytes[..], DEFAULT_MAX_FRAME_SIZE);
        assert_eq!(
            &reader.next_frame().await.unwrap().unwrap()[..],
            b"{\"a\":1}"
        );
        assert_eq!(&reader.next_frame().await.unwrap().unwrap()[..], b"[]");
        assert!(reader.next_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversize_prefix_is_rejected_without_allocating_it() {
        let bytes = u32::MAX.to_be_bytes();
        let mut reader = FrameReader::new(&bytes[..], 1024);
        match reader.next_frame().await {
            Err(ReadError::Protocol(ProtocolError::FrameTooLarge { len, max })) => {
                // The top bit marks a compressed frame; the rest is its length.
                assert_eq!((len, max), ((!COMPRESSED) as usize, 1024));
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(reader.buf.capacity() <= 2 * READ_CHUNK);
    }

    #[tokio::test]
    async fn a_frame_after_a_large_one_does_not_share_its_allocation() {
        let large = format!("\"{}\"", "x".repeat(SHARED_FRAME_MAX * 4));
        let mut bytes = frame(&large);
        bytes.extend(frame("{}"));
        let mut reader = FrameReader::new(&bytes[..], DEFAULT_MAX_FRAME_SIZE);
        let first = reader.next_frame().await.unwrap().unwrap();
        let second = reader.next_frame().await.unwrap().unwrap();
        assert_eq!(&second[..], b"{}");
        // Neither the small frame nor the reader's buffer shares the large frame's allocation:
        // checked by ownership, not by address (an allocator may put a new buffer next to it).
        assert!(
            first.is_unique(),
            "the small frame or the reader's buffer still shares the large frame's allocation"
        );
        drop((second, reader));
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error() {
        let mut bytes = frame("{\"a\":1}");
        bytes.truncate(bytes.len() - 2);
        let mut reader = FrameReader::new(&bytes[..], DEFAULT_MAX_FRAME_SIZE);
        assert!(matches!(reader.next_frame().await, Err(ReadError::Io(_))));
    }

    #[test]
    fn failed_encoding_leaves_the_buffer_unchanged() {
        let mut out = b"kept".to_vec();
        let result = encode_frame(&mut out, |out| {
            out.extend_from_slice(b"partial");
            Err("boom")
        });
        assert_eq!(result, Err("boom"));
        assert_eq!(out, b"kept");
    }
}
