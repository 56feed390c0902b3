//! Server streams, client streams and bidirectional streams: credit, cancel, deadlines.

mod client_streams;
mod server_streams;
mod typed_streams;
