//! Framing: a u32 big-endian length `N`, then `N` bytes of UTF-8 JSON.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::ProtocolError;

/// The largest frame accepted by default: 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// How much the read buffer grows at a time. A peer that announces a large frame and then stalls
/// costs at most this much more, not the size it announced.
const READ_CHUNK: usize = 64 * 1024;

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
    // Frames above u32::MAX cannot be written; the maximum frame size keeps us far below it.
    let len = (out.len() - start - LENGTH_PREFIX_LEN) as u32;
    out[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Why reading the next frame failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The socket failed, or the peer closed it in the middle of a frame.
    Io(io::Error),
    /// The length prefix broke the protocol; the connection must be closed.
    Protocol(ProtocolError),
}

/// Reads frames from a byte stream into one growing buffer; each frame comes out as a `Bytes`
/// that shares that buffer, so no frame is copied.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max_frame_size: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max_frame_size: usize) -> Self {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max_frame_size,
        }
    }

    /// The next frame's JSON, or `None` when the peer closed the stream between frames.
    ///
    /// Cancel safe: bytes read before a cancellation stay in the buffer.
    pub(crate) async fn next_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            if let Some(frame) = self.try_split_frame()? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            let read = self
                .io
                .read_buf(&mut self.buf)
                .await
                .map_err(ReadError::Io)?;
            if read == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "peer closed the connection {} bytes into a frame",
                        self.buf.len()
                    ),
                )));
            }
        }
    }

    fn try_split_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        if self.buf.len() < LENGTH_PREFIX_LEN {
            return Ok(None);
        }
        let mut prefix = [0u8; LENGTH_PREFIX_LEN];
        prefix.copy_from_slice(&self.buf[..LENGTH_PREFIX_LEN]);
        let len = u32::from_be_bytes(prefix) as usize;
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
        Ok(Some(self.buf.split_to(len).freeze()))
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
                assert_eq!((len, max), (u32::MAX as usize, 1024));
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(reader.buf.capacity() <= 2 * READ_CHUNK);
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
