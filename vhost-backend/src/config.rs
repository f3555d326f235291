//! Command-line flags and the validated [`Config`] built from them.

use std::path::PathBuf;
use std::time::Duration;

use basalt_auth::Credentials;
use basalt_proto::wire::SECTOR_SIZE;
use clap::Parser;

/// Largest virtqueue size accepted (and offered to the VMM).
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Largest number of virtqueues (one worker thread and one primary
/// connection each).
pub const MAX_QUEUES: u16 = 16;
/// Bytes of the virtio-blk serial number (GET_ID).
pub const SERIAL_LEN: usize = 20;

/// Serves one Basalt volume to a VMM over vhost-user-blk and forwards every
/// request to the storage server holding the volume's primary copy.
#[derive(Debug, Clone, Parser)]
#[command(name = "basalt-vhost-blk", version)]
pub struct Args {
    /// vhost-user socket to listen on (a stale socket file is replaced).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Id of the volume served.
    #[arg(long)]
    pub volume_id: u64,
    /// Capacity of the volume in bytes (a multiple of 512).
    #[arg(long)]
    pub size_bytes: u64,
    /// Data-plane address (HOST:PORT) of the storage server holding the primary copy.
    #[arg(long, value_name = "HOST:PORT")]
    pub primary: String,
    /// Layout epoch of the volume (from the control service).
    #[arg(long, default_value_t = 1)]
    pub epoch: u64,
    /// Attachment generation issued by the control service when it attached
    /// the volume; stated to storage servers, which refuse a superseded one.
    #[arg(long, default_value_t = 0)]
    pub attachment: u64,
    /// Number of virtqueues (1..=16); each gets its own thread and connection.
    #[arg(long, default_value_t = 2)]
    pub queues: u16,
    /// Maximum virtqueue size (a power of two, at most 1024).
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Present the disk read-only to the guest.
    #[arg(long)]
    pub read_only: bool,
    /// Serial number returned by GET_ID (at most 20 bytes; default basalt-<volume-id>).
    #[arg(long)]
    pub serial: Option<String>,
    /// File holding the attachment grant the control service signed for
    /// this attachment (the node manager writes it); shown to the primary
    /// on every connection, re-read each time.
    #[arg(long, value_name = "PATH")]
    pub grant_file: PathBuf,
    /// `off`: ask storage servers for data-plane frames in the clear after
    /// the authenticated handshake (refused unless they run with
    /// `--data-encryption off` too). Trusted networks only.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub data_encryption: String,
    /// Pause between attempts to reach the primary, and before resubmitting
    /// after a retryable error.
    #[arg(long, default_value_t = 100)]
    pub retry_interval_ms: u64,
    /// Timeout of one TCP connect plus handshake to the primary.
    #[arg(long, default_value_t = 500)]
    pub connect_timeout_ms: u64,
    /// A primary that answers none of the requests in flight for this long
    /// is reported to the control service as unreachable (a hung or cut-off
    /// server). Part of the guest-visible stall of a failover; keep it above
    /// the storage servers' --mirror-timeout-ms, so that a hung mirror is
    /// dealt with by its primary first.
    #[arg(long, default_value_t = 400)]
    pub request_timeout_ms: u64,
    /// Control service address (HOST:PORT, or http://HOST:PORT or
    /// https://HOST:PORT: always over TLS): asked for a new layout when the
    /// primary cannot be reached or refuses our epoch. Needs --tls-dir.
    /// Without it the backend keeps retrying the layout it has.
    #[arg(long, value_name = "ADDR")]
    pub control: Option<String>,
    /// Directory with the node's identity (`ca.crt`, `tls.crt`, `tls.key`:
    /// the node manager's, which spawns this backend), presented to storage
    /// servers and the control service.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: PathBuf,
    /// Timeout of one call to the control service.
    #[arg(long, default_value_t = 3000)]
    pub control_timeout_ms: u64,
    /// How long stopping a ring (GET_VRING_BASE) or the process waits for
    /// in-flight requests before abandoning them.
    #[arg(long, default_value_t = 5000)]
    pub drain_timeout_ms: u64,
    /// Minimum interval between repeated warnings caused by the guest or by
    /// an unreachable primary (the rest are counted and summarised).
    #[arg(long, default_value_t = 1000)]
    pub log_interval_ms: u64,
    /// Id this backend presents in the handshake (default backend-<volume-id>).
    #[arg(long)]
    pub backend_id: Option<String>,
}

/// Validated configuration of one backend process.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub volume_id: u64,
    pub size_bytes: u64,
    pub primary: String,
    pub epoch: u64,
    pub attachment: u64,
    pub queues: u16,
    pub queue_size: u16,
    pub read_only: bool,
    /// Exactly [`SERIAL_LEN`] bytes, NUL-padded.
    pub serial: [u8; SERIAL_LEN],
    pub grant_file: PathBuf,
    pub retry_interval: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub control: Option<String>,
    /// The node's credentials (`--tls-dir`), for storage servers and the
    /// control service.
    pub credentials: Credentials,
    /// Data-plane TLS settings built from `credentials`.
    pub tls: std::sync::Arc<basalt_auth::session::ClientConfig>,
    pub control_timeout: Duration,
    pub drain_timeout: Duration,
    pub log_interval: Duration,
    pub backend_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--size-bytes {0} is not a positive multiple of 512; give the volume size in bytes, rounded to whole sectors")]
    Size(u64),
    #[error("--primary {0:?} is not HOST:PORT; give the data-plane address of the storage server holding the primary copy")]
    Primary(String),
    #[error("--queues {0} is out of range; use 1..={MAX_QUEUES}")]
    Queues(u16),
    #[error("--queue-size {0} is not a power of two between 2 and {MAX_QUEUE_SIZE}")]
    QueueSize(u16),
    #[error("--serial {0:?} is longer than {SERIAL_LEN} bytes; shorten it")]
    Serial(String),
    #[error("--epoch must be at least 1 (epochs start at 1)")]
    Epoch,
    #[error("--{0} must be greater than 0")]
    ZeroTimer(&'static str),
    #[error("--backend-id {0:?} must be 1..=64 bytes of UTF-8")]
    BackendId(String),
    #[error("--control {0:?} is not HOST:PORT; give the control service's address as HOST:PORT (or http://HOST:PORT, https://HOST:PORT: always over TLS)")]
    Control(String),
    #[error("{0}; check the certificate in --tls-dir")]
    Tls(String),
    #[error("cannot load the credentials in --tls-dir {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: basalt_auth::FilesError,
    },
}

/// `HOST:PORT` of a control service address given as `HOST:PORT`,
/// `http://HOST:PORT` or `https://HOST:PORT` (see [`basalt_auth::endpoint`]).
fn control_host_port(addr: &str) -> Option<&str> {
    let rest = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr)
        .trim_end_matches('/');
    (!rest.contains('/') && valid_host_port(rest)).then_some(rest)
}

fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

fn millis(name: &'static str, ms: u64) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(ConfigError::ZeroTimer(name));
    }
    Ok(Duration::from_millis(ms))
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        if a.size_bytes == 0 || a.size_bytes % SECTOR_SIZE != 0 {
            return Err(ConfigError::Size(a.size_bytes));
        }
        if !valid_host_port(&a.primary) {
            return Err(ConfigError::Primary(a.primary));
        }
        if a.queues == 0 || a.queues > MAX_QUEUES {
            return Err(ConfigError::Queues(a.queues));
        }
        if a.queue_size < 2 || a.queue_size > MAX_QUEUE_SIZE || !a.queue_size.is_power_of_two() {
            return Err(ConfigError::QueueSize(a.queue_size));
        }
        if a.epoch == 0 {
            return Err(ConfigError::Epoch);
        }
        let serial_str = a
            .serial
            .unwrap_or_else(|| format!("basalt-{}", a.volume_id));
        if serial_str.len() > SERIAL_LEN {
            return Err(ConfigError::Serial(serial_str));
        }
        let mut serial = [0u8; SERIAL_LEN];
        serial[..serial_str.len()].copy_from_slice(serial_str.as_bytes());
        let backend_id = a
            .backend_id
            .unwrap_or_else(|| format!("backend-{}", a.volume_id));
        if backend_id.is_empty() || backend_id.len() > 64 {
            return Err(ConfigError::BackendId(backend_id));
        }
        if let Some(c) = &a.control {
            if control_host_port(c).is_none() {
                return Err(ConfigError::Control(c.clone()));
            }
        }
        let credentials =
            Credentials::load(&a.tls_dir).map_err(|source| ConfigError::Credentials {
                path: a.tls_dir.clone(),
                source,
            })?;
        let tls =
            basalt_auth::session::client_config(&credentials, None, a.data_encryption == "off")
                .map_err(|e| ConfigError::Tls(e.to_string()))?;
        Ok(Config {
            socket: a.socket,
            volume_id: a.volume_id,
            size_bytes: a.size_bytes,
            primary: a.primary,
            epoch: a.epoch,
            attachment: a.attachment,
            queues: a.queues,
            queue_size: a.queue_size,
            read_only: a.read_only,
            serial,
            grant_file: a.grant_file,
            retry_interval: millis("retry-interval-ms", a.retry_interval_ms)?,
            connect_timeout: millis("connect-timeout-ms", a.connect_timeout_ms)?,
            request_timeout: millis("request-timeout-ms", a.request_timeout_ms)?,
            control: a.control,
            credentials,
            tls,
            control_timeout: millis("control-timeout-ms", a.control_timeout_ms)?,
            drain_timeout: millis("drain-timeout-ms", a.drain_timeout_ms)?,
            log_interval: millis("log-interval-ms", a.log_interval_ms)?,
            backend_id,
        })
    }
}

/// A directory with a node's credentials, for the whole test run.
#[cfg(test)]
pub(crate) fn node_tls() -> &'static str {
    static DIR: std::sync::OnceLock<(tempfile::TempDir, String)> = std::sync::OnceLock::new();
    &DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let tls = d.path().join("tls");
        basalt_auth::testing::TestPki::new().install(&tls, basalt_auth::Role::Node, "n0");
        let p = tls.to_str().unwrap().to_owned();
        (d, p)
    })
    .1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Config, String> {
        let mut v = vec![
            "basalt-vhost-blk",
            "--socket",
            "/tmp/x.sock",
            "--volume-id",
            "7",
            "--size-bytes",
            "1048576",
            "--primary",
            "127.0.0.1:4000",
            "--grant-file",
            "/run/grant",
        ];
        if !extra.contains(&"--tls-dir") {
            v.extend_from_slice(&["--tls-dir", node_tls()]);
        }
        v.extend_from_slice(extra);
        let a = Args::try_parse_from(v).map_err(|e| e.to_string())?;
        Config::try_from(a).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = args(&[]).unwrap();
        assert_eq!(c.queues, 2);
        assert_eq!(c.queue_size, 256);
        assert_eq!(c.epoch, 1);
        assert_eq!(&c.serial[..8], b"basalt-7");
        assert_eq!(c.serial[8..], [0; 12]);
        assert_eq!(c.backend_id, "backend-7");
        assert_eq!(c.grant_file, std::path::Path::new("/run/grant"));
        assert_eq!(c.credentials.principal.to_string(), "node n0");
        assert_eq!(c.retry_interval, Duration::from_millis(100));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(args(&["--queues", "0"]).unwrap_err().contains("--queues"));
        assert!(args(&["--queues", "17"]).is_err());
        assert!(args(&["--queue-size", "300"])
            .unwrap_err()
            .contains("power of two"));
        assert!(args(&["--queue-size", "2048"]).is_err());
        assert!(args(&["--serial", "123456789012345678901"]).is_err());
        assert!(args(&["--serial", "12345678901234567890"]).is_ok());
        assert!(args(&["--epoch", "0"]).is_err());
        assert!(args(&["--retry-interval-ms", "0"]).is_err());
        assert!(args(&["--request-timeout-ms", "0"]).is_err());
        let e = args(&["--tls-dir", "/nonexistent/tls"]).unwrap_err();
        assert!(e.contains("--tls-dir"), "{e}");
    }

    #[test]
    fn the_control_service_needs_the_nodes_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let pki = basalt_auth::testing::TestPki::new();
        pki.install(&tls, basalt_auth::Role::Node, "n1");
        let tls = tls.to_str().unwrap();

        for ok in [
            "127.0.0.1:7400",
            "http://127.0.0.1:7400",
            "https://127.0.0.1:7400/",
            "control.example:7400",
        ] {
            let c = args(&["--control", ok, "--tls-dir", tls]).unwrap();
            assert_eq!(c.control.as_deref(), Some(ok));
            assert_eq!(c.credentials.principal.to_string(), "node n1");
        }
        for bad in [
            "",
            "127.0.0.1",
            "http://",
            "ftp://127.0.0.1:7400",
            "https://127.0.0.1:7400/path",
            "127.0.0.1:0",
        ] {
            let e = args(&["--control", bad, "--tls-dir", tls]).unwrap_err();
            assert!(e.contains("is not HOST:PORT"), "{bad:?}: {e}");
        }
        let missing = dir.path().join("missing");
        let e = args(&[
            "--control",
            "127.0.0.1:7400",
            "--tls-dir",
            missing.to_str().unwrap(),
        ])
        .unwrap_err();
        assert!(e.contains("--tls-dir") && e.contains("missing"), "{e}");
    }

    #[test]
    fn rejects_bad_size_and_primary() {
        for (size, primary) in [
            ("1000", "h:1"),
            ("0", "h:1"),
            ("512", "nohost"),
            ("512", ":80"),
            ("512", "h:0"),
        ] {
            let v = vec![
                "x",
                "--socket",
                "s",
                "--volume-id",
                "1",
                "--size-bytes",
                size,
                "--primary",
                primary,
                "--grant-file",
                "g",
                "--tls-dir",
                node_tls(),
            ];
            let a = Args::try_parse_from(v).unwrap();
            assert!(Config::try_from(a).is_err(), "{size} {primary}");
        }
        assert!(valid_host_port("[::1]:4000"));
        assert!(valid_host_port("storage-1.example:4000"));
    }
}
