//! A standalone `user-service`: `cargo run --example user_service -- --addr 127.0.0.1:9090`, or
//! on a Unix socket: `--addr unix:/run/vsp/user.sock` (a stale socket file from a crashed run is
//! replaced; the file is removed on exit).
//!
//! `--mdns` also announces it over multicast DNS; `--consul http://127.0.0.1:8500` registers it
//! with that Consul agent (with a TCP check); `--etcd http://127.0.0.1:2379` (repeatable)
//! registers it in etcd under a lease. Each is withdrawn on exit.
//! Prints `listening on <addr>` once ready; shuts down gracefully on SIGINT or SIGTERM.
//!
//! Security (README, "Security"): `--tls-cert FILE --tls-key FILE` serves TLS (and announces
//! `tls=1`); `--tls-client-ca FILE` also requires client certificates signed by that CA (mutual
//! TLS); `--auth-token TOKEN` requires `authorization: Bearer TOKEN` metadata on every endpoint
//! but `health`. Call it with `vsp call 127.0.0.1:9090 get_user '{"user_id":"123"}' --service
//! user-service --tls-ca ca.pem --tls-cert client.pem --tls-key client.key --meta
//! "authorization=Bearer TOKEN"`.
//!
//! Copied into a crate of your own, next to `users/mod.rs`, it needs the Getting started
//! dependencies (README) and:
//! cargo add vsp-rpc --features tls,etcd,schema
//! cargo add schemars
//! cargo add tokio --features signal
//! cargo add tracing-subscriber --features env-filter

mod users;

use users::{UserServiceClient, UserServiceServer, Users};
use vsp::discovery::{ConsulConfig, ConsulDiscovery, MdnsDiscovery};
use vsp::discovery::{EtcdConfig, EtcdDiscovery};
use vsp::server::BearerToken;
use vsp::tls::{ServerTls, ServerTlsConfig, TlsListener};
use vsp::Address;
use vsp::{ServiceMesh, VspManager};

const USAGE: &str = "usage: user_service [--addr HOST:PORT | --addr unix:/PATH] [--mdns | --consul AGENT_URL | --etcd URL...] [--weight W]
                    [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]] [--auth-token TOKEN]   (default 127.0.0.1:9090)";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let mut addr = Address::tcp("127.0.0.1", 9090);
    let mut mdns = false;
    let mut consul: Option<String> = None;
    let mut etcd: Vec<String> = Vec::new();
    let mut weight = 1.0;
    let (mut tls_cert, mut tls_key, mut tls_client_ca) = (None, None, None);
    let mut auth_token: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mdns" => mdns = true,
            "--consul" => consul = Some(args.next().ok_or(USAGE)?),
            "--etcd" => etcd.push(args.next().ok_or(USAGE)?),
            "--tls-cert" => tls_cert = Some(args.next().ok_or(USAGE)?),
            "--tls-key" => tls_key = Some(args.next().ok_or(USAGE)?),
            "--tls-client-ca" => tls_client_ca = Some(args.next().ok_or(USAGE)?),
            "--auth-token" => auth_token = Some(args.next().ok_or(USAGE)?),
            "--weight" => {
                let value = args.next().ok_or(USAGE)?;
                weight = value
                    .parse()
                    .map_err(|err| format!("bad --weight {value}: {err}\n{USAGE}"))?;
            }
            "--addr" => {
                let value = args.next().ok_or(USAGE)?;
                addr = value
                    .parse()
                    .map_err(|err| format!("bad --addr {value}: {err}\n{USAGE}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
        }
    }

    let mut builder = VspManager::builder(UserServiceClient::SERVICE_NAME).weight(weight);
    if usize::from(mdns) + usize::from(consul.is_some()) + usize::from(!etcd.is_empty()) > 1 {
        return Err(format!("--mdns, --consul and --etcd exclude each other\n{USAGE}").into());
    }
    if let Some((first, more)) = etcd.split_first() {
        let mut config = EtcdConfig::new(first);
        for endpoint in more {
            config = config.member(endpoint);
        }
        builder = builder.mesh(
            ServiceMesh::builder()
                .discovery(EtcdDiscovery::new(config))
                .build(),
        );
    }
    if mdns {
        builder = builder.mesh(
            ServiceMesh::builder()
                .discovery(MdnsDiscovery::new())
                .build(),
        );
    }
    if let Some(agent) = consul {
        let discovery = ConsulDiscovery::new(ConsulConfig::new(agent));
        builder = builder.mesh(ServiceMesh::builder().discovery(discovery).build());
    }
    if let Some(token) = auth_token {
        builder = builder.auth(BearerToken::new([token]));
    }
    let tls = match (tls_cert, tls_key, tls_client_ca) {
        (None, None, None) => None,
        (Some(cert), Some(key), client_ca) => {
            let mut config = ServerTlsConfig::from_pem_files(&cert, &key)?;
            if let Some(ca) = &client_ca {
                config = config.require_client_cert_file(ca)?;
            }
            Some(ServerTls::new(config)?)
        }
        _ => {
            return Err(format!(
                "--tls-cert and --tls-key go together (and --tls-client-ca needs them)\n{USAGE}"
            )
            .into())
        }
    };
    let manager = builder.build();
    manager.serve(UserServiceServer::new(Users::default()))?;
    if let Some(dir) = addr.unix_path().and_then(|path| path.parent()) {
        // Like systemd's RuntimeDirectory: the socket's directory is made if it is missing.
        std::fs::create_dir_all(dir)?;
    }
    let listener = vsp::transport::bind(&addr)
        .await
        .map_err(|err| format!("cannot bind {addr}: {err}"))?;
    let bound = match tls {
        Some(tls) => {
            manager
                .start_server_on(TlsListener::new(listener, tls))
                .await?
        }
        None => manager.start_server_on(listener).await?,
    };
    // Listening for the signals before saying so: a SIGTERM right after the line still drains.
    let stop = stop_signal()?;
    println!("listening on {bound}");

    stop.await?;
    println!("shutting down");
    manager.shutdown().await?;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM; the handlers are installed when this returns.
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        Ok(())
    })
}

/// Resolves on the first Ctrl-C (there is no SIGTERM outside Unix).
#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    Ok(tokio::signal::ctrl_c())
}
