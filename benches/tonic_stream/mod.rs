//! tonic's streams, the streams section's peer, over HTTP/2 on loopback: `StreamUsers(n)` answers
//! `n` `User` messages (the same three strings as VSP's items), `UploadUsers` counts the users
//! a caller streams to it (client streaming), `EchoUsers` answers each user it receives with
//! itself (bidirectional).
//!
//! No `.proto` and no `protoc`: the messages are written with prost's derive, and the client and
//! server in `generated.rs` were generated once by `tonic_build::manual` from this service:
//! package `bench`, service `StreamBench`, codec `tonic_prost::ProstCodec`; methods
//! `stream_users` (route `StreamUsers`, server streaming, `StreamRequest` to `User`),
//! `upload_users` (`UploadUsers`, client streaming, `User` to `Uploaded`) and `echo_users`
//! (`EchoUsers`, both, `User` to `User`).
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

/// What `UploadUsers` answers: how many users came.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Uploaded {
    #[prost(uint64, tag = "1")]
    pub count: u64,
}

fn user() -> User {
    User {
        id: "123".into(),
        name: "John Doe".into(),
        email: "john@example.com".into(),
    }
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
        let items = tokio_stream::iter((0..n).map(|_| Ok(user())));
        Ok(Response::new(Box::pin(items)))
    }

    async fn upload_users(
        &self,
        request: Request<tonic::Streaming<User>>,
    ) -> Result<Response<Uploaded>, Status> {
        let mut users = request.into_inner();
        let mut count = 0;
        while let Some(user) = users.message().await? {
            assert_eq!(user.name, "John Doe");
            count += 1;
        }
        Ok(Response::new(Uploaded { count }))
    }

    type EchoUsersStream = std::pin::Pin<
        Box<dyn tonic::codegen::tokio_stream::Stream<Item = Result<User, Status>> + Send>,
    >;

    async fn echo_users(
        &self,
        request: Request<tonic::Streaming<User>>,
    ) -> Result<Response<Self::EchoUsersStream>, Status> {
        Ok(Response::new(Box::pin(request.into_inner())))
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

/// Streams `n` users to `UploadUsers`; the number it counted.
pub async fn upload(
    client: &mut stream_bench_client::StreamBenchClient<tonic::transport::Channel>,
    n: u64,
) -> u64 {
    let users = tokio_stream::iter((0..n).map(|_| user()));
    let counted = client.upload_users(users).await.unwrap().into_inner().count;
    assert_eq!(counted, n);
    counted
}

/// Streams `n` users to `EchoUsers` and reads the `n` answers; the number read.
pub async fn echo(
    client: &mut stream_bench_client::StreamBenchClient<tonic::transport::Channel>,
    n: u64,
) -> u64 {
    let users = tokio_stream::iter((0..n).map(|_| user()));
    let mut answers = client.echo_users(users).await.unwrap().into_inner();
    let mut read = 0;
    while let Some(user) = answers.message().await.unwrap() {
        assert_eq!(user.name, "John Doe");
        read += 1;
    }
    assert_eq!(read, n);
    read
}
