//! tonic's server streaming, the streams section's peer: a `StreamUsers(n)` RPC answering `n`
//! `User` messages (the same three strings as VSP's items), over HTTP/2 on loopback.
//!
//! No `.proto` and no `protoc`: the messages are written with prost's derive, and the client and
//! server in `generated.rs` were generated once by `tonic_build::manual` from this service:
//! package `bench`, service `StreamBench`, method `stream_users` (route `StreamUsers`),
//! server-streaming, input `StreamRequest`, output `User`, codec `tonic_prost::ProstCodec`.
#![allow(dead_code, clippy::all)]

use std::net::SocketAddr;

use tonic::{Request, Response, Status};

include!("generated.rs");

/// The request: how many users to stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamRequest {
    #[prost(uint64, tag = "1")]
    pub n: u64,
}

/// One item: the benchmark's user.
#[derive(Clone, PartialEq, prost::Message)]
pub struct User {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub email: String,
}

struct Users;

#[tonic::async_trait]
impl stream_bench_server::StreamBench for Users {
    type StreamUsersStream = std::pin::Pin<
        Box<dyn tonic::codegen::tokio_stream::Stream<Item = Result<User, Status>> + Send>,
    >;

    async fn stream_users(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamUsersStream>, Status> {
        let n = request.into_inner().n;
        let items = tokio_stream::iter((0..n).map(|_| {
            Ok(User {
                id: "123".into(),
                name: "John Doe".into(),
                email: "john@example.com".into(),
            })
        }));
        Ok(Response::new(Box::pin(items)))
    }
}

/// Serves the tonic peer on a free loopback port.
pub async fn start() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(stream_bench_server::StreamBenchServer::new(Users))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// A client of the tonic peer, on one HTTP/2 connection.
pub async fn connect(
    addr: SocketAddr,
) -> stream_bench_client::StreamBenchClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    stream_bench_client::StreamBenchClient::new(channel)
}

/// Reads one stream of `n` users to its end; the number read.
pub async fn read(
    client: &mut stream_bench_client::StreamBenchClient<tonic::transport::Channel>,
    n: u64,
) -> u64 {
    let mut stream = client
        .stream_users(StreamRequest { n })
        .await
        .unwrap()
        .into_inner();
    let mut read = 0;
    while let Some(user) = stream.message().await.unwrap() {
        assert_eq!(user.name, "John Doe");
        read += 1;
    }
    read
}
