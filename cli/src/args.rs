//! Command-line grammar.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "basalt",
    version,
    about = "Basalt: replicated block storage for virtual machines"
)]
pub struct Cli {
    /// Control service endpoint.
    #[arg(
        long,
        global = true,
        env = "BASALT_CONTROL",
        default_value = "http://127.0.0.1:7400"
    )]
    pub control: String,
    /// The cluster CA certificate, to verify the control service (its
    /// `tls/ca.crt`).
    #[arg(long, global = true, env = "BASALT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// A file holding the API token (owner-only); or set BASALT_TOKEN.
    #[arg(long, global = true, env = "BASALT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Tenant owning the volumes, snapshots and destinations addressed by
    /// name. Unset: a tenant token's own tenant; for an admin, `default`
    /// (and every tenant in lists).
    #[arg(long, global = true, env = "BASALT_TENANT", default_value = "")]
    pub tenant: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect, attach and delete volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Snapshots of volumes, stored in an object-store destination.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Snapshots of a volume on a schedule, with retention.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// Named places where snapshots are kept (directories, S3 buckets).
    #[command(subcommand)]
    Destination(DestinationCmd),
    /// Storage servers.
    #[command(subcommand)]
    Server(ServerCmd),
    /// Node managers (hypervisor hosts).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Start a local cluster: control service, storage servers and a node manager.
    Up(UpArgs),
    /// One-time tokens with which storage servers and node managers join.
    #[command(subcommand, name = "join-token")]
    JoinToken(JoinTokenCmd),
    /// Identities of storage servers and node managers.
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Tenants, their quotas and what they use (admins).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// API tokens of tenants and admins (admins).
    #[command(subcommand)]
    Token(TokenCmd),
    /// The audit log of mutating calls: who, what, when, outcome (a tenant
    /// sees its own entries).
    Audit(AuditArgs),
}

/// A quota limit: a number, or `none` (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

pub fn parse_limit(s: &str) -> Result<Limit, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Limit(None));
    }
    s.parse()
        .map(|n| Limit(Some(n)))
        .map_err(|_| format!("bad limit {s:?}: a whole number, or `none` for no limit"))
}

#[derive(Debug, Clone, clap::Args)]
pub struct QuotaArgs {
    /// Most volumes (`none`: no limit).
    #[arg(long, value_parser = parse_limit)]
    pub volumes: Option<Limit>,
    /// Most GiB provisioned by its volumes (`none`: no limit).
    #[arg(long, value_parser = parse_limit)]
    pub gib: Option<Limit>,
    /// Most GiB of snapshots, each counted at its volume's size (`none`: no
    /// limit).
    #[arg(long, value_parser = parse_limit)]
    pub snapshot_gib: Option<Limit>,
}

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant (a DNS label: lowercase letters, digits, '-'), with
    /// an optional quota; then `basalt token create --tenant NAME`.
    Create {
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// List tenants with their quotas and use.
    List,
    /// Change a tenant's quota: the limits given replace the current ones.
    Quota {
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Delete a tenant that owns nothing; its API tokens are revoked.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create an API token for the tenant of `--tenant NAME`, or with
    /// `--admin` for an admin. The secret is shown once.
    Create {
        /// An admin token (instead of a tenant's).
        #[arg(long)]
        admin: bool,
        /// The admin's name, for the audit log (default: admin).
        #[arg(long, requires = "admin")]
        name: Option<String>,
        /// Seconds until it expires (0 = never).
        #[arg(long, default_value_t = 0)]
        ttl_secs: u64,
        /// Write the token to this file (owner-only) instead of printing it.
        #[arg(long)]
        output_file: Option<PathBuf>,
    },
    /// List API tokens (never their secrets; `--tenant` for one tenant's).
    List,
    /// Revoke a token by the id `basalt token list` shows: refused from the
    /// next call on.
    Revoke { id: String },
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Entries of the last interval (30m, 4h, 7d) or since a Unix second.
    #[arg(long)]
    pub since: Option<String>,
    /// The newest this many (at most 10000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// JSON (like --output json).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MachineRole {
    Storage,
    Node,
}

impl MachineRole {
    pub fn name(self) -> &'static str {
        match self {
            MachineRole::Storage => "storage",
            MachineRole::Node => "node",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCmd {
    /// Create a one-time token for a storage server or node manager id: it
    /// starts with `--join-token-file FILE --ca-file ca.crt` and gets its
    /// certificate.
    Create {
        #[arg(long, value_enum)]
        role: MachineRole,
        /// The server id or node id (a DNS label).
        #[arg(long)]
        id: String,
        /// How long the token can be used, seconds (at most 7 days).
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// Write the token to this file (owner-only) instead of printing it.
        #[arg(long)]
        output_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentityCmd {
    /// Refuse a storage server or node manager from now on (its certificate
    /// and its id: it cannot join again under that id).
    Revoke {
        #[arg(long, value_enum)]
        role: MachineRole,
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create a replicated volume, empty or from a snapshot.
    Create {
        name: String,
        /// Size, e.g. 10G; with --from-snapshot, optional (default: the
        /// snapshot's size) and at least the snapshot's size.
        #[arg(long, required_unless_present = "from_snapshot")]
        size: Option<String>,
        /// Copies in all (primary + mirrors).
        #[arg(long, default_value_t = 2)]
        copies: u32,
        /// Create the volume from this COMPLETE snapshot (id or name); it is
        /// usable at once and loads the snapshot in the background.
        #[arg(long, value_name = "SNAPSHOT")]
        from_snapshot: Option<String>,
        /// Wait until the volume has loaded its snapshot, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// List volumes.
    List,
    /// Show one volume (by id or name).
    Show { volume: String },
    /// Grow a volume (online if attached).
    Resize {
        volume: String,
        #[arg(long)]
        size: String,
    },
    /// Attach a volume to a node; prints the hypervisor flags.
    Attach {
        volume: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        read_only: bool,
        /// Take the volume from the node it is attached to, fencing that attachment.
        #[arg(long)]
        force: bool,
    },
    /// Detach a volume.
    Detach { volume: String },
    /// Delete a volume (must be detached).
    Delete { volume: String },
    /// Write a raw image into a volume that is not attached read-write,
    /// from offset 0, block by block (every copy holds each block durably
    /// before the next is sent).
    Upload {
        volume: String,
        /// The raw image (at most the volume's size).
        file: PathBuf,
    },
    /// Read a volume that is not attached read-write into a raw image file
    /// (sparse: zero blocks are holes).
    Download { volume: String, file: PathBuf },
    /// Choose where a volume's snapshots go (from its next snapshot on).
    Backup {
        volume: String,
        /// single, duplicate (every chunk in every destination), alternate
        /// (snapshots go to the destinations in turn) or striped (chunks
        /// spread over the destinations by block range).
        #[arg(long, value_parser = ["single", "duplicate", "alternate", "striped"], required_unless_present = "clear")]
        layout: Option<String>,
        /// A destination name; repeat for several (duplicate, alternate,
        /// striped take 2 to 8).
        #[arg(long = "destination", required_unless_present = "clear")]
        destinations: Vec<String>,
        /// Striped: MiB per stripe unit (default 4).
        #[arg(long)]
        stripe_mib: Option<u32>,
        /// Move snapshots older than this (e.g. 30d, 12h) to --archive-to.
        #[arg(long, requires = "archive_to")]
        archive_after: Option<String>,
        /// The (cheaper) destination old snapshots are moved to.
        #[arg(long, requires = "archive_after")]
        archive_to: Option<String>,
        /// Back to the control service's default destination.
        #[arg(long, conflicts_with_all = ["layout", "destinations", "stripe_mib", "archive_after"])]
        clear: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DestinationType {
    /// A local or mounted directory (`--path`).
    Dir,
    /// An S3 bucket or S3-compatible server (`--bucket`).
    S3,
    /// An Azure Blob Storage container (`--container`).
    Azure,
    /// A Google Cloud Storage bucket (`--bucket`; untested against the real
    /// service, see docs/snapshots.md).
    Gcs,
}

#[derive(Debug, Subcommand)]
pub enum DestinationCmd {
    /// Add a destination for the tenant; refused unless a test object can
    /// be written, read back and deleted there.
    Add {
        name: String,
        #[arg(long = "type", value_enum)]
        kind: DestinationType,
        /// dir: absolute directory (on the storage servers and the control
        /// service: use shared storage for more than one host).
        #[arg(long, required_if_eq("kind", "dir"))]
        path: Option<PathBuf>,
        /// s3, gcs: bucket name.
        #[arg(long, required_if_eq_any([("kind", "s3"), ("kind", "gcs")]))]
        bucket: Option<String>,
        /// azure: container name.
        #[arg(long, required_if_eq("kind", "azure"))]
        container: Option<String>,
        /// s3, azure, gcs: key prefix inside the bucket or container.
        #[arg(long)]
        prefix: Option<String>,
        /// s3, azure: endpoint URL of a compatible server (for Azure with the
        /// account: http://127.0.0.1:10000/devstoreaccount1).
        #[arg(long)]
        endpoint: Option<String>,
        /// s3: region (default us-east-1).
        #[arg(long)]
        region: Option<String>,
        /// s3, azure, gcs: allow a plain-HTTP endpoint.
        #[arg(long)]
        allow_http: bool,
        /// The credentials (never pass secrets on the command line). s3:
        /// lines `access_key_id = ...` and `secret_access_key = ...`; azure:
        /// `account_name = ...` and `account_key = ...`; gcs: a
        /// service-account JSON key file.
        #[arg(long, required_if_eq_any([("kind", "s3"), ("kind", "azure"), ("kind", "gcs")]))]
        credentials_file: Option<PathBuf>,
    },
    /// List the destinations the tenant can use, with their last check.
    List,
    /// Check a destination's access now and count what it stores.
    Show { name: String },
    /// Remove a destination (refused while snapshots or backup policies use it).
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a volume: marks the point in time and returns at once (the
    /// upload runs in the background).
    Create {
        /// The volume (id or name).
        volume: String,
        /// Snapshot name, unique within the tenant.
        #[arg(long)]
        name: String,
        /// Destination to store it in (default: the control service's default).
        #[arg(long)]
        destination: Option<String>,
        /// Wait until the upload is COMPLETE, showing progress; fails if it
        /// FAILED.
        #[arg(long)]
        wait: bool,
    },
    /// List snapshots (all pages).
    List {
        /// Only this volume's snapshots (id or name).
        #[arg(long)]
        volume: Option<String>,
        /// Snapshots per call, 1-1000 (default: the control service's, 100).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: Option<u32>,
    },
    /// Show one snapshot, with its upload progress.
    Show {
        /// The snapshot (id or name).
        snapshot: String,
    },
    /// Delete a snapshot (refused while it is CREATING or a volume loads it).
    Delete {
        /// The snapshot (id or name).
        snapshot: String,
    },
    /// Make a snapshot from a raw disk image (convert other formats first:
    /// `qemu-img convert -O raw in.qcow2 out.raw`). Zero blocks are skipped.
    Import {
        /// The raw image file.
        file: PathBuf,
        /// Snapshot name, unique within the tenant.
        #[arg(long)]
        name: String,
        /// Destination to store it in (default: the control service's default).
        #[arg(long, conflicts_with = "parent")]
        destination: Option<String>,
        /// Only send the blocks that differ from this COMPLETE snapshot (id
        /// or name); the new snapshot goes to its destinations.
        #[arg(long)]
        parent: Option<String>,
    },
    /// Write a snapshot's content to a raw image file (sparse: zero blocks
    /// are holes).
    Export {
        /// The snapshot (id or name).
        snapshot: String,
        /// The file to write (created or truncated).
        file: PathBuf,
    },
    /// Copy a COMPLETE snapshot to one more destination (in the background;
    /// restores read from every copy).
    Copy {
        /// The snapshot (id or name).
        snapshot: String,
        #[arg(long)]
        destination: String,
        /// Wait until the copy is complete.
        #[arg(long)]
        wait: bool,
    },
    /// Remove a snapshot from one destination, while enough complete copies
    /// remain elsewhere; or cancel a copy being made to it.
    RemoveCopy {
        /// The snapshot (id or name).
        snapshot: String,
        #[arg(long)]
        destination: String,
    },
    /// The 512 KiB blocks that differ between two snapshots.
    Diff {
        /// The older snapshot (id or name).
        first: String,
        /// The newer snapshot (id or name).
        second: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// Set a volume's schedule and retention (replacing any).
    Set {
        /// The volume (id or name).
        volume: String,
        /// Interval, e.g. 90s, 15m, 4h, 1d.
        #[arg(long, required_unless_present = "cron", conflicts_with = "cron")]
        every: Option<String>,
        /// Cron expression, 5 fields, UTC, e.g. "0 3 * * *".
        #[arg(long)]
        cron: Option<String>,
        /// Keep the newest N scheduled snapshots.
        #[arg(long)]
        keep_last: Option<u32>,
        /// Keep the newest of each of the last N days.
        #[arg(long)]
        keep_daily: Option<u32>,
        /// Keep the newest of each of the last N ISO weeks.
        #[arg(long)]
        keep_weekly: Option<u32>,
    },
    /// Show a volume's schedule: next run, last run, last error.
    Show {
        /// The volume (id or name).
        volume: String,
    },
    /// Remove a volume's schedule (its snapshots are kept).
    Clear {
        /// The volume (id or name).
        volume: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServerCmd {
    /// List storage servers.
    List,
    /// Stop placing copies on a server.
    Drain { server_id: String },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List node managers.
    List,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Directory for all state (created if missing; reused on the next run).
    #[arg(long, default_value = ".basalt")]
    pub state_dir: PathBuf,
    /// Number of storage servers.
    #[arg(long, default_value_t = 3)]
    pub servers: u16,
    /// First port: control on it, the node manager on +1, storage servers
    /// from +10 (data and admin port each).
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
    /// Node id of the local node manager.
    #[arg(long, default_value = "node1")]
    pub node_id: String,
    /// Failure-detection timers of the cluster in milliseconds (heartbeat).
    #[arg(long, default_value_t = 500)]
    pub heartbeat_ms: u64,
}
