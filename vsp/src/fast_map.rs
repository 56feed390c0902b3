//! The hash map of the per-call paths: keys VSP chooses or a user configured (request ids it
//! numbers itself, service and instance names, endpoint names), looked up on every call.
//!
//! Why not the standard SipHash: its resistance to hash flooding protects maps keyed by what a
//! peer sends; these are not (a server's maps keyed by a peer's request ids keep SipHash), and
//! SipHash costs on every call. FxHash (rustc's) hashes a request id in one multiply.

use std::collections::HashMap;

/// A `HashMap` with FxHash.
pub(crate) type FastMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;
