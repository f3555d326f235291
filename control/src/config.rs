//! Flags of `basalt-control`. Every timer is a flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// basalt-control: the Basalt control service.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// Directory for the embedded metadata store.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Heartbeat interval asked of storage servers and node managers.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_interval_ms: u64,
    /// A peer with no heartbeat for this long is DOWN.
    #[arg(long, default_value_t = 5000)]
    pub down_after_ms: u64,
    /// How often interrupted operations are retried.
    #[arg(long, default_value_t = 2000)]
    pub reconcile_interval_ms: u64,
    /// Timeout for calls to storage servers and node managers.
    #[arg(long, default_value_t = 3000)]
    pub peer_timeout_ms: u64,
    /// How long the control service tries to reach a server reported
    /// unreachable by the data path before it fences it (part of the
    /// guest-visible stall of a failover).
    #[arg(long, default_value_t = 200)]
    pub probe_timeout_ms: u64,
    /// How long a volume runs with fewer copies than wanted, waiting for a
    /// dropped copy's server to come back (it then rejoins with a delta
    /// resync of the regions written meanwhile), before a new copy is filled
    /// from scratch on another server.
    #[arg(long, default_value_t = 30_000)]
    pub rejoin_wait_ms: u64,
    /// A snapshot destination, `NAME=URL[,endpoint=URL][,region=R]
    /// [,allow-http][,credentials-file=PATH]`, URL `file:///dir` or
    /// `s3://bucket[/prefix]`; repeat for several. The first is the default.
    /// Without any: `local=file://<state-dir>/snapshots`.
    #[arg(long = "destination")]
    pub destinations: Vec<String>,
    /// Background hydration rate of a volume created from a snapshot, MiB/s
    /// per volume (0 = unlimited). Reads of blocks not yet local are served
    /// on demand whatever the rate.
    #[arg(long, default_value_t = 256)]
    pub hydration_rate_mib: u64,
    /// Snapshot upload rate per volume, MiB/s of volume data read (0 =
    /// unlimited): bounds what an upload takes from the guest's disk.
    #[arg(long, default_value_t = 0)]
    pub snapshot_rate_mib: u64,
    /// How often uploads and hydrations are polled for progress.
    #[arg(long, default_value_t = 250)]
    pub snapshot_poll_ms: u64,
    /// How often every destination's access is checked (a test object
    /// written, read back and deleted); `basalt destination list` shows the
    /// result.
    #[arg(long, default_value_t = 300)]
    pub destination_check_secs: u64,
    /// Create the cluster identity if it does not exist yet: the cluster CA
    /// (`<tls-dir>/ca.crt`, `ca.key`), the control service's certificate and
    /// an admin API token (`--admin-token-file`). Without it the control
    /// service refuses to start on a state directory that has none.
    #[arg(long)]
    pub bootstrap: bool,
    /// The cluster CA and the control service's certificate (default
    /// `<state-dir>/tls`). Keep `ca.key` secret: it signs every identity.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Where `--bootstrap` writes the first admin API token (default
    /// `<state-dir>/admin.token`, owner-only).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Validity of the certificates issued to storage servers and node
    /// managers when they join, in days.
    #[arg(long, default_value_t = 365)]
    pub cert_validity_days: u64,
    /// Validity of the attachment grants backends show to storage servers,
    /// in seconds; they are renewed at a quarter of it.
    #[arg(long, default_value_t = 86400)]
    pub grant_validity_secs: u64,
    /// Entries of the audit log kept (the newest; `basalt audit`).
    #[arg(long, default_value_t = 10_000)]
    pub audit_keep: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} must be greater than zero")]
    ZeroTimer(&'static str),
    #[error("--down-after-ms must be longer than --heartbeat-interval-ms")]
    DownTooShort,
    #[error("--destination: {0}")]
    Destination(String),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub down_after: Duration,
    pub reconcile_interval: Duration,
    pub peer_timeout: Duration,
    pub probe_timeout: Duration,
    pub rejoin_wait: Duration,
    /// Snapshot destinations; the first is the default.
    pub destinations: Vec<basalt_snapshot::DestinationSpec>,
    pub hydration_rate: u64,
    pub snapshot_rate: u64,
    pub snapshot_poll: Duration,
    pub destination_check: Duration,
    pub bootstrap: bool,
    pub tls_dir: PathBuf,
    pub admin_token_file: PathBuf,
    pub cert_validity: Duration,
    /// Validity of attachment grants (renewed at a quarter of it).
    pub grant_validity: Duration,
    /// Audit-log entries kept.
    pub audit_keep: u64,
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;
    fn try_from(a: Args) -> Result<Config, ConfigError> {
        for (v, n) in [
            (a.heartbeat_interval_ms, "--heartbeat-interval-ms"),
            (a.down_after_ms, "--down-after-ms"),
            (a.reconcile_interval_ms, "--reconcile-interval-ms"),
            (a.peer_timeout_ms, "--peer-timeout-ms"),
            (a.probe_timeout_ms, "--probe-timeout-ms"),
            (a.snapshot_poll_ms, "--snapshot-poll-ms"),
            (a.destination_check_secs, "--destination-check-secs"),
            (a.cert_validity_days, "--cert-validity-days"),
            (a.grant_validity_secs, "--grant-validity-secs"),
            (a.audit_keep, "--audit-keep"),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroTimer(n));
            }
        }
        if a.down_after_ms <= a.heartbeat_interval_ms {
            return Err(ConfigError::DownTooShort);
        }
        let mut destinations = a
            .destinations
            .iter()
            .map(|d| {
                basalt_snapshot::DestinationSpec::parse_flag(d)
                    .map_err(|e| ConfigError::Destination(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if destinations.is_empty() {
            destinations.push(basalt_snapshot::DestinationSpec {
                name: "local".into(),
                url: format!("file://{}", a.state_dir.join("snapshots").display()),
                ..Default::default()
            });
        }
        let mut names: Vec<&str> = destinations.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        if names.len() != destinations.len() {
            return Err(ConfigError::Destination(
                "two destinations share a name".into(),
            ));
        }
        Ok(Config {
            destinations,
            hydration_rate: a.hydration_rate_mib << 20,
            snapshot_rate: a.snapshot_rate_mib << 20,
            snapshot_poll: Duration::from_millis(a.snapshot_poll_ms),
            destination_check: Duration::from_secs(a.destination_check_secs),
            listen: a.listen,
            bootstrap: a.bootstrap,
            tls_dir: a.tls_dir.unwrap_or_else(|| a.state_dir.join("tls")),
            admin_token_file: a
                .admin_token_file
                .unwrap_or_else(|| a.state_dir.join("admin.token")),
            cert_validity: Duration::from_secs(a.cert_validity_days.saturating_mul(86400)),
            grant_validity: Duration::from_secs(a.grant_validity_secs),
            audit_keep: a.audit_keep,
            state_dir: a.state_dir,
            heartbeat_interval: Duration::from_millis(a.heartbeat_interval_ms),
            down_after: Duration::from_millis(a.down_after_ms),
            reconcile_interval: Duration::from_millis(a.reconcile_interval_ms),
            peer_timeout: Duration::from_millis(a.peer_timeout_ms),
            probe_timeout: Duration::from_millis(a.probe_timeout_ms),
            rejoin_wait: Duration::from_millis(a.rejoin_wait_ms),
        })
    }
}
