//! Command-line flags and the validated server configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// basalt-storage: holds primary and mirror copies of Basalt volumes.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Unique id of this server in the cluster: a DNS label (1-63 lowercase
    /// letters, digits and '-'), as it names the server in its certificate
    /// (`<id>.storage.basalt`).
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
    /// `off`: also accept backends that ask for data-plane frames in the
    /// clear, and replicate to mirrors in the clear. Certificates, grants
    /// and the Hello checks are unchanged, but frames are then neither
    /// encrypted nor individually authenticated: only for a network where
    /// no one can read or inject traffic (and for measuring the cost).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub data_encryption: String,
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
    /// Deadline of a mirror's answer to a Flush or a FUA write (an
    /// fdatasync, which a busy disk may take seconds over). A mirror that
    /// misses it is taken as hung, like one that misses --mirror-timeout-ms
    /// on a write.
    #[arg(long, default_value_t = 5000)]
    pub mirror_sync_timeout_ms: u64,
    /// Pause between attempts to reconnect to an unreachable mirror.
    #[arg(long, default_value_t = 100)]
    pub mirror_reconnect_ms: u64,
    /// Most data-plane connections open at once, counted from accept (before
    /// the handshake). Connections beyond it are closed at once. Each
    /// authenticated connection may hold up to --response-budget-mib plus
    /// about 5 MiB of buffers; keep the product within the server's memory,
    /// and the file-descriptor limit (ulimit -n) above this number.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// How long a new data-plane connection may take to complete the
    /// handshake before it is closed.
    #[arg(long, default_value_t = 5000)]
    pub handshake_timeout_ms: u64,
    /// How long a peer may stall the server: a connection whose peer reads
    /// none of its responses for this long is closed, and a syncing mirror
    /// (one whose acknowledgements no guest waits for) that acknowledges
    /// nothing for this long is disconnected, like a hung in-sync mirror
    /// after --mirror-timeout-ms.
    #[arg(long, default_value_t = 10_000)]
    pub peer_timeout_ms: u64,
    /// Bytes of responses one data-plane connection may have outstanding
    /// (read data not yet sent to a peer that is slow to read them); when
    /// it is used up, the server stops reading that connection's requests
    /// until the peer reads. At least 5 (one 4 MiB read).
    #[arg(long, default_value_t = 32)]
    pub response_budget_mib: usize,
    /// Bytes of replica frames queued for one mirror but not yet written to
    /// its connection. A mirror that falls this far behind is disconnected
    /// (its writes are recorded as missed, as for a mirror that went down)
    /// rather than let the queue grow. At least 5 (one 4 MiB write).
    #[arg(long, default_value_t = 64)]
    pub mirror_queue_mib: usize,
    /// When ready, write `{"data": "IP:PORT", "admin": "IP:PORT"}` to this
    /// file (atomically), so supervisors can wait for it and learn the ports.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Control service to register with and send heartbeats to, as
    /// HOST:PORT (or http:// / https://HOST:PORT; always over TLS), e.g.
    /// 127.0.0.1:7400. Without it the server is managed by hand.
    #[arg(long, env = "BASALT_CONTROL")]
    pub control: Option<String>,
    /// Directory holding this server's identity: the cluster CA (`ca.crt`),
    /// its certificate (`tls.crt`) and key (`tls.key`, owner-only). Filled
    /// by joining with --join-token-file (default: `<data-dir>/tls`).
    #[arg(long, env = "BASALT_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// One-time join token (from `basalt token create --role storage --id
    /// <server-id>`), used when --tls-dir holds no valid certificate: the
    /// server joins the cluster at --control and stores the certificate it
    /// gets in --tls-dir. The file must be owner-only.
    #[arg(long, env = "BASALT_JOIN_TOKEN_FILE", value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
    /// The cluster CA certificate (the control service's `tls/ca.crt`), to
    /// verify the control service when joining (default: `ca.crt` in
    /// --tls-dir).
    #[arg(long, env = "BASALT_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
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
    #[error("--server-id {0:?} is not a valid server id: use 1-63 lowercase letters, digits and '-', not starting or ending with '-' (it names the server in its certificate, <id>.storage.basalt)")]
    ServerId(String),
    #[error("{0} must be greater than zero")]
    ZeroTimer(&'static str),
    #[error("{flag} must be between {min} and {max}, got {got}")]
    OutOfRange {
        flag: &'static str,
        min: usize,
        max: usize,
        got: usize,
    },
}

/// Bounds of the numeric flags, checked by [`ServerConfig::try_from`].
pub const MAX_CONNECTIONS: usize = 1 << 20;
/// Smallest per-connection response budget and mirror queue, in MiB: one
/// largest frame (4 MiB of payload and its header) must fit.
pub const MIN_BUFFER_MIB: usize = 5;
/// Largest per-connection response budget and mirror queue, in MiB.
pub const MAX_BUFFER_MIB: usize = 4096;

/// Validated configuration of one storage server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub server_id: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `--data-encryption off`.
    pub data_clear: bool,
    pub mirror_timeout: Duration,
    pub mirror_sync_timeout: Duration,
    pub mirror_reconnect: Duration,
    /// Most data-plane connections open at once (`--max-connections`).
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub peer_timeout: Duration,
    /// Outstanding response bytes per data-plane connection.
    pub response_budget: usize,
    /// Queued bytes per mirror link.
    pub mirror_queue: usize,
    pub ready_file: Option<PathBuf>,
    pub control: Option<String>,
    pub zone: String,
    pub advertise: Option<SocketAddr>,
    pub advertise_admin: Option<SocketAddr>,
    /// This server's identity (`--tls-dir`, default `<data-dir>/tls`).
    pub tls_dir: PathBuf,
    /// One-time join token, when the server has no certificate yet.
    pub join_token_file: Option<PathBuf>,
    /// The cluster CA certificate, to verify the control service when joining.
    pub ca_file: Option<PathBuf>,
}

/// Server ids are DNS labels: they name the server in its certificate.
pub fn valid_server_id(id: &str) -> bool {
    basalt_auth::valid_id(id)
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
        if a.mirror_sync_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimer("--mirror-sync-timeout-ms"));
        }
        if a.mirror_reconnect_ms == 0 {
            return Err(ConfigError::ZeroTimer("--mirror-reconnect-ms"));
        }
        if a.handshake_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimer("--handshake-timeout-ms"));
        }
        if a.peer_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimer("--peer-timeout-ms"));
        }
        let in_range = |flag, min, max, got| {
            if (min..=max).contains(&got) {
                Ok(got)
            } else {
                Err(ConfigError::OutOfRange {
                    flag,
                    min,
                    max,
                    got,
                })
            }
        };
        let max_connections = in_range("--max-connections", 1, MAX_CONNECTIONS, a.max_connections)?;
        let response_budget = in_range(
            "--response-budget-mib",
            MIN_BUFFER_MIB,
            MAX_BUFFER_MIB,
            a.response_budget_mib,
        )? << 20;
        let mirror_queue = in_range(
            "--mirror-queue-mib",
            MIN_BUFFER_MIB,
            MAX_BUFFER_MIB,
            a.mirror_queue_mib,
        )? << 20;
        let tls_dir = a.tls_dir.unwrap_or_else(|| a.data_dir.join("tls"));
        Ok(ServerConfig {
            server_id: a.server_id,
            data_dir: a.data_dir,
            listen: a.listen,
            admin_listen: a.admin_listen,
            data_clear: a.data_encryption == "off",
            mirror_timeout: Duration::from_millis(a.mirror_timeout_ms),
            mirror_sync_timeout: Duration::from_millis(a.mirror_sync_timeout_ms),
            mirror_reconnect: Duration::from_millis(a.mirror_reconnect_ms),
            max_connections,
            handshake_timeout: Duration::from_millis(a.handshake_timeout_ms),
            peer_timeout: Duration::from_millis(a.peer_timeout_ms),
            response_budget,
            mirror_queue,
            ready_file: a.ready_file,
            control: a.control,
            zone: a.zone,
            advertise: a.advertise,
            advertise_admin: a.advertise_admin,
            tls_dir,
            join_token_file: a.join_token_file,
            ca_file: a.ca_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<ServerConfig, ConfigError> {
        let mut argv = vec![
            "basalt-storage",
            "--server-id",
            "s1",
            "--data-dir",
            "/tmp/x",
        ];
        argv.extend_from_slice(extra);
        ServerConfig::try_from(Args::try_parse_from(argv).expect("flags parse"))
    }

    #[test]
    fn resource_bounds_have_defaults_and_are_validated() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.handshake_timeout, Duration::from_secs(5));
        assert_eq!(c.peer_timeout, Duration::from_secs(10));
        assert_eq!(c.response_budget, 32 << 20);
        assert_eq!(c.mirror_queue, 64 << 20);
        let c = parse(&["--max-connections", "8", "--response-budget-mib", "5"]).unwrap();
        assert_eq!((c.max_connections, c.response_budget), (8, 5 << 20));
        for bad in [
            &["--max-connections", "0"][..],
            &["--max-connections", "2000000"],
            &["--response-budget-mib", "4"],
            &["--mirror-queue-mib", "0"],
            &["--mirror-queue-mib", "5000"],
        ] {
            let e = parse(bad).unwrap_err();
            assert!(
                matches!(e, ConfigError::OutOfRange { flag, .. } if flag == bad[0]),
                "{bad:?}: {e}"
            );
        }
        for bad in ["--peer-timeout-ms", "--handshake-timeout-ms"] {
            assert!(matches!(parse(&[bad, "0"]), Err(ConfigError::ZeroTimer(f)) if f == bad));
        }
    }

    fn with_id(id: &str) -> Result<ServerConfig, ConfigError> {
        let id = format!("--server-id={id}");
        let argv = ["basalt-storage", &id, "--data-dir", "/tmp/x"];
        ServerConfig::try_from(Args::try_parse_from(argv).expect("flags parse"))
    }

    #[test]
    fn a_server_id_must_be_a_dns_label() {
        for good in ["s1", "storage-7", "0", &"a".repeat(63)] {
            assert_eq!(with_id(good).unwrap().server_id, good);
        }
        for bad in [
            "",
            "S1",
            "s_1",
            "s.1",
            "-s1",
            "s1-",
            "s 1",
            "sé",
            &"a".repeat(64),
        ] {
            let e = with_id(bad).unwrap_err();
            assert!(
                matches!(&e, ConfigError::ServerId(id) if id == bad),
                "{bad:?}: {e}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("--server-id") && msg.contains("lowercase"),
                "{msg}"
            );
        }
    }

    #[test]
    fn identity_flags_default_to_the_data_dir() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.tls_dir, PathBuf::from("/tmp/x/tls"));
        assert_eq!((c.join_token_file, c.ca_file), (None, None));
        let c = parse(&[
            "--tls-dir",
            "/etc/basalt/tls",
            "--join-token-file",
            "/etc/basalt/join.token",
            "--ca-file",
            "/etc/basalt/ca.crt",
        ])
        .unwrap();
        assert_eq!(c.tls_dir, PathBuf::from("/etc/basalt/tls"));
        assert_eq!(
            c.join_token_file,
            Some(PathBuf::from("/etc/basalt/join.token"))
        );
        assert_eq!(c.ca_file, Some(PathBuf::from("/etc/basalt/ca.crt")));
    }
}
