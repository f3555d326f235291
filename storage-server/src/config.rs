//! Command-line flags and the validated server configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// basalt-storage: holds primary and mirror copies of Basalt volumes.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Unique id of this server in the cluster.
    #[arg(long, env = "BASALT_SERVER_ID")]
    pub server_id: String,
    /// Directory holding the copies (created if missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Data-plane listen address (backends and primaries connect here).
    #[arg(long, default_value = "127.0.0.1:7500")]
    pub listen: SocketAddr,
    /// Admin gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:7501")]
    pub admin_listen: SocketAddr,
    /// File with the cluster key for the data-plane handshake. Without it the
    /// key is empty: development only.
    #[arg(long)]
    pub cluster_key_file: Option<PathBuf>,
    /// How long a primary waits for a mirror's acknowledgement of a write.
    /// When one is overdue the mirror is taken as hung: its connection is
    /// torn down, every write waiting for it is answered MirrorUnavailable
    /// (not acknowledged; the backend holds and resubmits it), and the loss
    /// is reported to the control service, which drops the mirror from the
    /// in-sync set. Also bounds each reconnection attempt (TCP connect plus
    /// handshake). The default keeps the guest-visible stall for a failed
    /// mirror under one second; raise it only for slow networks or disks.
    #[arg(long, default_value_t = 300)]
    pub mirror_timeout_ms: u64,
    /// Pause between attempts to reconnect to an unreachable mirror.
    #[arg(long, default_value_t = 100)]
    pub mirror_reconnect_ms: u64,
    /// When ready, write `{"data": "IP:PORT", "admin": "IP:PORT"}` to this
    /// file (atomically), so supervisors can wait for it and learn the ports.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Control service to register with and send heartbeats to, e.g.
    /// http://127.0.0.1:7400. Without it the server is managed by hand.
    #[arg(long, env = "BASALT_CONTROL")]
    pub control: Option<String>,
    /// Failure-domain label (zone or rack) used by placement.
    #[arg(long, default_value = "")]
    pub zone: String,
    /// Data-plane address to advertise to the control service (default: the
    /// listen address).
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// Admin address to advertise to the control service (default: the
    /// admin listen address).
    #[arg(long)]
    pub advertise_admin: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--server-id must be 1..=64 characters of [A-Za-z0-9._-], got {0:?}")]
    ServerId(String),
    #[error("cannot read cluster key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} must be greater than zero")]
    ZeroTimer(&'static str),
}

/// Validated configuration of one storage server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub server_id: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub cluster_key: Vec<u8>,
    pub mirror_timeout: Duration,
    pub mirror_reconnect: Duration,
    pub ready_file: Option<PathBuf>,
    pub control: Option<String>,
    pub zone: String,
    pub advertise: Option<SocketAddr>,
    pub advertise_admin: Option<SocketAddr>,
}

pub fn valid_server_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl TryFrom<Args> for ServerConfig {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        if !valid_server_id(&a.server_id) {
            return Err(ConfigError::ServerId(a.server_id));
        }
        if a.mirror_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimer("--mirror-timeout-ms"));
        }
        if a.mirror_reconnect_ms == 0 {
            return Err(ConfigError::ZeroTimer("--mirror-reconnect-ms"));
        }
        let cluster_key = match &a.cluster_key_file {
            Some(path) => std::fs::read(path).map_err(|source| ConfigError::KeyFile {
                path: path.clone(),
                source,
            })?,
            None => Vec::new(),
        };
        Ok(ServerConfig {
            server_id: a.server_id,
            data_dir: a.data_dir,
            listen: a.listen,
            admin_listen: a.admin_listen,
            cluster_key,
            mirror_timeout: Duration::from_millis(a.mirror_timeout_ms),
            mirror_reconnect: Duration::from_millis(a.mirror_reconnect_ms),
            ready_file: a.ready_file,
            control: a.control,
            zone: a.zone,
            advertise: a.advertise,
            advertise_admin: a.advertise_admin,
        })
    }
}
