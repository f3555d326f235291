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
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Tenant owning the volumes and snapshots addressed by name.
    #[arg(long, global = true, env = "BASALT_TENANT", default_value = "default")]
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
    /// Storage servers.
    #[command(subcommand)]
    Server(ServerCmd),
    /// Node managers (hypervisor hosts).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Start a local cluster: control service, storage servers and a node manager.
    Up(UpArgs),
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
