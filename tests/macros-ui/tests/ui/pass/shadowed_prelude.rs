//! Generated code keeps working when the user shadows prelude names and names a method `new`.

#![allow(dead_code)]

type Result<T> = std::result::Result<T, ()>;
struct Option;
struct Box;
struct Vec;
struct Send;
struct Clone;

#[vsp::service]
pub trait Shadowed {
    async fn new(&self, name: String) -> u32;
    async fn clone(&self) -> String;
    async fn into(&self) -> bool;
}

struct Impl;

impl Shadowed for Impl {
    async fn new(&self, _name: String) -> u32 {
        1
    }
    async fn clone(&self) -> String {
        String::new()
    }
    async fn into(&self) -> bool {
        true
    }
}

fn main() {
    let mesh = vsp::ServiceMesh::new();
    // `new` is the method here, so the client is made with `From`.
    let client = ShadowedClient::from(vsp::VspClient::builder(mesh).build());
    let _ = client.new("x".into());
    let _server = ShadowedServer::new(Impl);
}
