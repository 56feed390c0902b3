//! Server streams: credit, cancel, deadlines.

mod server_streams;
