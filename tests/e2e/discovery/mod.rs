//! Discovery backends against real daemons (Consul is a stateful fake of its HTTP API).

mod consul;
mod dns;
mod etcd;
mod mdns;
