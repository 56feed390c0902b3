//! Compressed frames: zstd, negotiated per connection, bounded when inflated.
//!
//! Every VSP peer of this version reads compressed frames and says so: a client's first requests
//! on a connection (until an answer arrives) carry `"accept_encoding":"zstd"`, and the server's
//! answer to such a request carries the same key. A side that was configured to compress
//! ([`Compression`]) then sends frames above its threshold compressed, and only to a peer that
//! offered: Velithon offers nothing, so it never receives one.
//!
//! A compressed frame marks its length prefix with the top bit ([`COMPRESSED`]): the prefix is
//! `0x8000_0000 | N`, and the `N` bytes that follow are one zstd frame of the envelope's JSON,
//! which is exactly what the frame would have been uncompressed. The bit is free: no frame is
//! allowed 2 GiB. Why a flag in the prefix and not a header key: the header is inside what is
//! compressed, and a reader must know before parsing. gRPC marks its messages the same way.
//!
//! Bounds: the compressed size counts against the frame limit like any frame; the inflated size
//! must be within the frame limit too, checked against the size the zstd frame declares before
//! anything is allocated, and enforced while inflating (a frame that declares none is inflated
//! into at most the limit plus one byte, then refused). A small frame that would inflate past the
//! limit is a protocol error that closes the connection, never an allocation of that size.

use std::cell::RefCell;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::frame::LENGTH_PREFIX_LEN;
use crate::error::ProtocolError;

/// The top bit of a length prefix: the frame's bytes are zstd-compressed.
pub(crate) const COMPRESSED: u32 = 0x8000_0000;

/// The header value by which a peer offers the encodings it reads.
pub(crate) const ZSTD: &str = "zstd";

/// Whether an `accept_encoding` value offers zstd (a comma-separated list).
pub(crate) fn offers_zstd(value: &str) -> bool {
    value.split(',').any(|encoding| encoding.trim() == ZSTD)
}

/// How a client or a server compresses the frames it sends to a peer that reads them.
///
/// Off by default, as in gRPC: compression pays on slow links and costs CPU on fast ones
/// (`benches/README.md` has both figures). Receiving needs no setting: every peer of this version
/// reads compressed frames and offers to.
///
/// ```
/// use vsp::Compression;
///
/// // zstd level 1 on every frame of 1 KiB or more; smaller frames go as they are.
/// let compression = Compression::zstd().min_size(1024).level(1);
/// # let _ = compression;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    min_size: u32,
    level: i8,
}

impl Compression {
    /// zstd at level 1 on frames of 1 KiB or more.
    pub fn zstd() -> Self {
        Compression {
            min_size: 1024,
            level: 1,
        }
    }

    /// Frames smaller than this many bytes go uncompressed (at least 64).
    pub fn min_size(mut self, bytes: u32) -> Self {
        self.min_size = bytes.max(64);
        self
    }

    /// The zstd level, from 1 (fastest) to 19 (clamped).
    pub fn level(mut self, level: i8) -> Self {
        self.level = level.clamp(1, 19);
        self
    }

    fn pack(self) -> u64 {
        (u64::from(self.min_size) << 8) | u64::from(self.level as u8)
    }
}

/// A connection's sending side: whether (and how) the frames it queues are compressed. Off
/// until the peer offered zstd and this side was configured to compress.
#[derive(Debug, Default)]
pub(crate) struct Compressing {
    /// `Compression::pack`, or 0: off.
    packed: AtomicU64,
}

thread_local! {
    /// One compression context per thread, shared by its connections: a context is hundreds of
    /// KiB, too much for each of thousands of idle connections.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    /// Scratch space for one compressed frame.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Compressing {
    /// Frames queued from now on are compressed as `compression` says.
    pub(crate) fn enable(&self, compression: Compression) {
        self.packed.store(compression.pack(), Ordering::Relaxed);
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.packed.load(Ordering::Relaxed) != 0
    }

    /// Compresses the frame that starts at `start` in `out` (the last one queued), if it is at
    /// least the threshold and compressing makes it smaller.
    pub(crate) fn apply(&self, out: &mut Vec<u8>, start: usize) {
        let packed = self.packed.load(Ordering::Relaxed);
        if packed == 0 || out.len() < start + LENGTH_PREFIX_LEN {
            return;
        }
        let (min_size, level) = ((packed >> 8) as usize, i32::from(packed as u8));
        let payload = out.len() - start - LENGTH_PREFIX_LEN;
        let mut prefix = [0; LENGTH_PREFIX_LEN];
        prefix.copy_from_slice(&out[start..start + LENGTH_PREFIX_LEN]);
        // Exactly one whole, uncompressed frame was appended (nothing else is ever compressed).
        if payload < min_size || u32::from_be_bytes(prefix) as usize != payload {
            return;
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let compressed = COMPRESSOR.with_borrow_mut(|compressor| {
                let compressor = match compressor {
                    Some(compressor) => compressor,
                    None => compressor.insert(zstd::bulk::Compressor::new(level).ok()?),
                };
                compressor.set_compression_level(level).ok()?;
                scratch.clear();
                scratch.reserve(zstd::zstd_safe::compress_bound(payload));
                compressor
                    .compress_to_buffer(&out[start + LENGTH_PREFIX_LEN..], scratch)
                    .ok()
            });
            let Some(len) = compressed else { return };
            if len >= payload {
                return;
            }
            out.truncate(start);
            out.extend_from_slice(&(COMPRESSED | len as u32).to_be_bytes());
            out.extend_from_slice(&scratch[..len]);
            if scratch.capacity() > 1024 * 1024 {
                *scratch = Vec::new();
            }
        });
    }
}

/// Inflates a compressed frame's bytes into the envelope's JSON, refusing anything above `max`.
pub(crate) fn decompress(compressed: &[u8], max: usize) -> Result<Bytes, ProtocolError> {
    let too_large = |len: usize| ProtocolError::FrameTooLarge { len, max };
    let bad = |err: std::io::Error| ProtocolError::Malformed(format!("a compressed frame: {err}"));
    match zstd::zstd_safe::get_frame_content_size(compressed) {
        Ok(Some(declared)) => {
            let declared = usize::try_from(declared).unwrap_or(usize::MAX);
            if declared > max {
                return Err(too_large(declared));
            }
            let mut out = Vec::with_capacity(declared);
            DECOMPRESSOR
                .with_borrow_mut(|decompressor| {
                    let decompressor = match decompressor {
                        Some(decompressor) => decompressor,
                        None => decompressor.insert(zstd::bulk::Decompressor::new()?),
                    };
                    // Writes at most the capacity reserved: the declared size, within `max`.
                    decompressor.decompress_to_buffer(compressed, &mut out)
                })
                .map_err(bad)?;
            if out.len() != declared {
                return Err(ProtocolError::Malformed(format!(
                    "a compressed frame declared {declared} bytes and held {}",
                    out.len()
                )));
            }
            Ok(Bytes::from(out))
        }
        // No size declared: inflate as a stream, at most one byte past the limit.
        Ok(None) => {
            let mut out = Vec::new();
            zstd::stream::read::Decoder::new(compressed)
                .map_err(bad)?
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .map_err(bad)?;
            if out.len() > max {
                return Err(too_large(out.len()));
            }
            Ok(Bytes::from(out))
        }
        Err(_) => Err(ProtocolError::Malformed(
            "a compressed frame is not a zstd frame".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::encode_frame;

    fn frame(json: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame::<()>(&mut out, |out| {
            out.extend_from_slice(json);
            Ok(())
        })
        .unwrap();
        out
    }

    fn compressing() -> Compressing {
        let compressing = Compressing::default();
        compressing.enable(Compression::zstd());
        compressing
    }

    #[test]
    fn a_large_frame_is_compressed_and_inflates_to_the_same_bytes() {
        let json = format!(r#"{{"body":"{}"}}"#, "abc".repeat(10_000));
        let mut out = b"earlier frames".to_vec();
        let start = out.len();
        out.extend_from_slice(&frame(json.as_bytes()));
        compressing().apply(&mut out, start);
        let prefix = u32::from_be_bytes(out[start..start + 4].try_into().unwrap());
        assert_ne!(prefix & COMPRESSED, 0, "not marked compressed");
        let len = (prefix & !COMPRESSED) as usize;
        assert_eq!(out.len(), start + 4 + len);
        assert!(len < json.len() / 10, "{len} bytes for {}", json.len());
        let inflated = decompress(&out[start + 4..], 1 << 20).unwrap();
        assert_eq!(&inflated[..], json.as_bytes());
        assert_eq!(&out[..start], b"earlier frames");
    }

    #[test]
    fn a_small_or_incompressible_frame_goes_as_it_is() {
        let small = frame(br#"{"body":"short"}"#);
        let mut out = small.clone();
        compressing().apply(&mut out, 0);
        assert_eq!(out, small);
        // Bytes zstd cannot shrink.
        let mut noise = Vec::with_capacity(4096);
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            noise.push(b'a' + (x % 26) as u8);
        }
        let json = [b"\"".as_slice(), &noise, b"\""].concat();
        let plain = frame(&json);
        let mut out = plain.clone();
        compressing().apply(&mut out, 0);
        let prefix = u32::from_be_bytes(out[..4].try_into().unwrap());
        if prefix & COMPRESSED == 0 {
            assert_eq!(out, plain);
        } else {
            assert!(out.len() < plain.len());
        }
    }

    #[test]
    fn off_compresses_nothing() {
        let plain = frame(&vec![b' '; 10_000]);
        let mut out = plain.clone();
        Compressing::default().apply(&mut out, 0);
        assert_eq!(out, plain);
    }

    #[test]
    fn a_small_frame_that_inflates_past_the_limit_is_refused_before_allocating() {
        // 64 MiB of zeros in a few KiB: declared in the zstd frame, refused unread.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap();
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        match decompress(&bomb, 1 << 20) {
            Err(ProtocolError::FrameTooLarge { len, max }) => {
                assert_eq!((len, max), (64 << 20, 1 << 20));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_frame_without_a_declared_size_is_inflated_no_further_than_the_limit() {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut encoder, &vec![0u8; 8 << 20]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(matches!(
            zstd::zstd_safe::get_frame_content_size(&bomb),
            Ok(None)
        ));
        assert!(matches!(
            decompress(&bomb, 1 << 20),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        assert!(matches!(
            decompress(b"not zstd at all", 1 << 20),
            Err(ProtocolError::Malformed(_))
        ));
    }
}
