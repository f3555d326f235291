//! Basalt node manager (`basalt-node`): one per hypervisor host. Attaches
//! volumes by running one supervised `basalt-vhost-blk` per volume, hands
//! out the VMM launch flags, records its attachments on disk and re-adopts
//! running backends after its own restart. See docs/node-manager.md.
//!
//! It has a certificate naming it `node <node-id>` (from its TLS directory,
//! or by joining the cluster with a one-time token): its NodeAgent server
//! takes mutual TLS only and admits the control service alone
//! ([`grpc::policy`]); it calls the control service with that certificate.
//!
//! Modules:
//! - [`config`]: flags and validated configuration;
//! - [`params`]: attachment parameters, backend command line, launch flags;
//! - [`attachments`]: the domain manager (attach, detach, resize, layout, recovery);
//! - [`supervise`]: per-attachment supervisor (restart with backoff);
//! - [`process`]: starting, watching and signalling backend processes;
//! - [`procfs`]: /proc lookups (start time, command line);
//! - [`record`]: attachment records on disk;
//! - [`safefs`]: chown/chmod/unlink in the run and state directories without following symlinks;
//! - [`ctl`]: client of a backend's control socket;
//! - [`grpc`]: the `basalt.node.v1.NodeAgent` service;
//! - [`heartbeat`]: registration and heartbeats to the control service.

pub mod attachments;
pub mod config;
pub mod ctl;
pub mod grpc;
pub mod heartbeat;
pub mod params;
pub mod process;
pub mod procfs;
pub mod record;
pub mod safefs;
pub mod supervise;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use basalt_auth::{AuthLayer, Principal};
use basalt_proto::node::node_agent_server::NodeAgentServer;
use tokio::net::TcpListener;

pub use attachments::{AttachError, Attachments};
pub use config::{Args, Config, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(
        "cannot listen on {addr}: {source}; is another basalt-node running, or the port taken?"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write --ready-file {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("recovering attachments failed: {0}")]
    Recover(#[from] AttachError),
    #[error("cannot prepare the state or run directory: {0}")]
    Prepare(#[from] safefs::FsError),
    #[error("cannot get this node's certificate: {0}")]
    Identity(#[from] basalt_auth::JoinError),
    #[error("the certificate in {dir} cannot serve TLS: {source}; replace it (remove tls.crt and tls.key and join again with --join-token-file)")]
    Tls {
        dir: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("--control: {0}")]
    Control(#[source] basalt_auth::FilesError),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Writes `{"grpc":"IP:PORT"}` to `path` atomically.
fn write_ready_file(path: &Path, grpc: SocketAddr) -> Result<(), RunError> {
    let err = |source| RunError::ReadyFile {
        path: path.to_owned(),
        source,
    };
    let body = format!("{{\"grpc\": \"{grpc}\"}}\n");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Runs the node manager until SIGTERM/SIGINT. Backends keep running when
/// it stops; the next start re-adopts them.
pub fn run(config: Config) -> Result<(), RunError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .map_err(RunError::Runtime)?;
    rt.block_on(serve(config))
}

async fn serve(config: Config) -> Result<(), RunError> {
    // The state directory is ours alone (0700), except that the VMM and
    // backend users must pass through it to the default run directory in it.
    let state_mode = if config.run_dir.starts_with(&config.state_dir) {
        0o711
    } else {
        0o700
    };
    safefs::ensure_own_dir(&config.state_dir, state_mode)?;
    for d in [
        config.state_dir.join("logs"),
        record::dir(&config.state_dir),
    ] {
        safefs::ensure_own_dir(&d, record::DIR_MODE)?;
    }
    process::prepare_run_dir(&config.run_dir)?;
    // Before any backend starts: with --control they use this identity too.
    let creds = basalt_auth::obtain(&config.join_settings()).await?;
    tracing::info!(principal = %creds.principal, dir = %config.tls_dir.display(), "using this node's certificate");
    let control_endpoint = config
        .control
        .as_deref()
        .map(|url| basalt_auth::endpoint(url, creds.client_tls(&Principal::control())))
        .transpose()
        .map_err(RunError::Control)?;
    let server = tonic::transport::Server::builder()
        .tls_config(creds.server_tls())
        .map_err(|source| RunError::Tls {
            dir: config.tls_dir.clone(),
            source,
        })?;
    let att = Attachments::new(config.backend.clone());
    att.recover().await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| RunError::Bind {
        addr: config.listen,
        source,
    })?;
    tracing::info!(node = %config.node_id, grpc = %local, attachments = att.list().len(), "basalt-node ready");
    if config.control.is_some() && config.advertise.is_none() && local.ip().is_unspecified() {
        tracing::warn!(%local, "listening on an unspecified address: the control service cannot reach this node there; pass --advertise HOST:PORT");
    }
    let hb = config
        .control
        .clone()
        .zip(control_endpoint)
        .map(|(url, endpoint)| {
            tokio::spawn(heartbeat::run(
                heartbeat::Registration {
                    control_url: url,
                    endpoint,
                    node_id: config.node_id.clone(),
                    address: config
                        .advertise
                        .clone()
                        .unwrap_or_else(|| local.to_string()),
                    default_interval: config.heartbeat_interval,
                },
                att.clone(),
            ))
        });
    if let Some(p) = &config.ready_file {
        write_ready_file(p, local)?;
    }
    let svc = grpc::NodeAgentService {
        attachments: att.clone(),
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let r = server
        .layer(AuthLayer::certificates(grpc::policy()))
        .add_service(NodeAgentServer::new(svc))
        .serve_with_incoming_shutdown(incoming, shutdown_signal())
        .await;
    if let Some(h) = hb {
        h.abort();
    }
    tracing::info!("stopped; backends keep running and are re-adopted at the next start");
    Ok(r?)
}
