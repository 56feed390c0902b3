//! The server: serving, starting, shutting down, limits and hostile peers.

mod bad_input;
mod deadlines_and_caps;
mod describe;
mod hostile_peers;
mod limits;
mod local;
mod round_trip;
mod shutdown;
mod start;
mod stats;
mod transports;
mod typed_service;
mod workers;
