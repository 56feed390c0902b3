//! TLS, identities, metadata and auth hooks.

mod metadata_auth;
mod tls;
