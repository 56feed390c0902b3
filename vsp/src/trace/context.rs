//! The W3C trace context: ids, `traceparent` and `tracestate`, and their parsing.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

/// The longest `tracestate` passed on (the W3C limit on what a vendor must propagate).
const MAX_TRACESTATE: usize = 512;

/// A trace's id: 16 bytes, never all zero; displayed as 32 lowercase hex digits.
///
/// Kept as two `u64`s (high, low) rather than a `u128`, so it does not raise the alignment of
/// everything that carries it (a handler's context, a call's future).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub(super) [u64; 2]);

/// A span's id: 8 bytes, never all zero; displayed as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub(super) u64);

impl TraceId {
    /// The id as a number.
    pub fn to_u128(self) -> u128 {
        u128::from(self.0[0]) << 64 | u128::from(self.0[1])
    }

    pub(super) fn from_u128(id: u128) -> Self {
        TraceId([(id >> 64) as u64, id as u64])
    }
}

impl SpanId {
    /// The id as a number.
    pub fn to_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.to_u128())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where a span sits in a distributed trace: the W3C trace context (`traceparent` and
/// `tracestate`).
///
/// Inside a handler, [`Context::trace`](crate::Context::trace) is the server span's; calls made
/// there continue it. To start a trace by hand (the `vsp` CLI does), put
/// [`TraceContext::new_root`]'s [`traceparent`](TraceContext::traceparent) in a call's metadata.
///
/// ```
/// use vsp::trace::TraceContext;
///
/// let parent = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")?;
/// assert_eq!(parent.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(parent.is_sampled());
/// let child = parent.child();
/// assert_eq!(child.trace_id(), parent.trace_id());
/// assert_ne!(child.span_id(), parent.span_id());
/// assert!(TraceContext::parse("00-not-a-trace").is_err());
/// # Ok::<(), vsp::trace::InvalidTraceParent>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub(super) trace_id: TraceId,
    pub(super) span_id: SpanId,
    pub(super) flags: u8,
    pub(super) tracestate: Option<Arc<str>>,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.write_traceparent(&mut [0; TRACEPARENT_LEN]))?;
        if let Some(state) = &self.tracestate {
            write!(f, " ({state})")?;
        }
        Ok(())
    }
}

/// Why a `traceparent` was not taken: it does not follow the W3C format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent: {0}")]
pub struct InvalidTraceParent(&'static str);

const TRACEPARENT_LEN: usize = 55;
const SAMPLED: u8 = 1;

impl TraceContext {
    /// A new trace: a fresh random trace id and span id, sampled.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: TraceId::from_u128(random_u128()),
            span_id: SpanId(random_u64()),
            flags: SAMPLED,
            tracestate: None,
        }
    }

    /// Parses a W3C `traceparent` (`version-traceid-parentid-flags`, lowercase hex).
    ///
    /// # Errors
    /// [`InvalidTraceParent`] naming the part that is wrong (all-zero ids, version `ff`, upper
    /// case, a bad length).
    pub fn parse(traceparent: &str) -> Result<Self, InvalidTraceParent> {
        let text = traceparent.trim_matches([' ', '\t']);
        let bytes = text.as_bytes();
        if bytes.len() < TRACEPARENT_LEN {
            return Err(InvalidTraceParent("shorter than 55 characters"));
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return Err(InvalidTraceParent("not four dash-separated fields"));
        }
        let version = hex(&bytes[0..2]).ok_or(InvalidTraceParent("version is not hex"))?;
        match version {
            0xff => return Err(InvalidTraceParent("version ff is invalid")),
            // Version 00 is exactly 55 characters; later versions may append `-...`.
            0 if bytes.len() != TRACEPARENT_LEN => {
                return Err(InvalidTraceParent("version 00 with trailing characters"))
            }
            _ if bytes.len() > TRACEPARENT_LEN && bytes[TRACEPARENT_LEN] != b'-' => {
                return Err(InvalidTraceParent("trailing characters"))
            }
            _ => {}
        }
        let trace_id = hex(&bytes[3..35]).ok_or(InvalidTraceParent("trace id is not hex"))?;
        let span_id = hex(&bytes[36..52]).ok_or(InvalidTraceParent("parent id is not hex"))?;
        let flags = hex(&bytes[53..55]).ok_or(InvalidTraceParent("flags are not hex"))?;
        if trace_id == 0 {
            return Err(InvalidTraceParent("trace id is all zeros"));
        }
        if span_id == 0 {
            return Err(InvalidTraceParent("parent id is all zeros"));
        }
        Ok(TraceContext {
            trace_id: TraceId::from_u128(trace_id),
            span_id: SpanId(span_id as u64),
            flags: flags as u8,
            tracestate: None,
        })
    }

    /// This context with `tracestate` (the vendor list that travels with it). A value longer
    /// than 512 bytes, or with characters outside printable ASCII, is dropped.
    pub fn with_tracestate(mut self, tracestate: &str) -> Self {
        let usable = !tracestate.is_empty()
            && tracestate.len() <= MAX_TRACESTATE
            && tracestate.bytes().all(|b| (0x20..0x7f).contains(&b));
        self.tracestate = usable.then(|| Arc::from(tracestate));
        self
    }

    /// A child of this span: the same trace (and flags and state), a new span id.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: SpanId(random_u64()),
            ..self.clone()
        }
    }

    /// The trace this span belongs to.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// This span's id (the parent id a child sees).
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the trace's origin chose to record it.
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The `tracestate` passed along, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The W3C `traceparent` of this span (version 00).
    pub fn traceparent(&self) -> String {
        self.write_traceparent(&mut [0; TRACEPARENT_LEN]).to_owned()
    }

    /// Writes the `traceparent` into `buf` without allocating.
    pub(crate) fn write_traceparent<'b>(&self, buf: &'b mut [u8; TRACEPARENT_LEN]) -> &'b str {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut put = |at: usize, value: u128, digits: usize| {
            for i in 0..digits {
                let nibble = (value >> (4 * (digits - 1 - i))) & 0xf;
                buf[at + i] = HEX[nibble as usize];
            }
        };
        put(0, 0, 2);
        put(3, self.trace_id.to_u128(), 32);
        put(36, u128::from(self.span_id.0), 16);
        put(53, u128::from(self.flags), 2);
        buf[2] = b'-';
        buf[35] = b'-';
        buf[52] = b'-';
        std::str::from_utf8(buf).unwrap_or("")
    }
}

/// Lowercase hex to a number; `None` for anything else (upper case included, as W3C says).
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |value, &digit| {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(nibble))
    })
}

/// A random non-zero id. A per-thread xorshift generator seeded from the OS's hash keys: ids
/// must be unique, not secret, and made without a lock.
pub(super) fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|state| loop {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        let id = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        if id != 0 {
            return id;
        }
    })
}

fn random_u128() -> u128 {
    u128::from(random_u64()) << 64 | u128::from(random_u64())
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    hasher.write_u128(now);
    hasher.finish() | 1
}
