//! Persisted records of the control service.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VolumeState {
    /// Copies are being created (resumed after a restart).
    Creating,
    Available,
    /// Growing to `target_size` (resumed after a restart).
    Resizing,
    /// Copies are being deleted (resumed after a restart).
    Deleting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AttachState {
    Attaching,
    Attached,
    Detaching,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    pub server_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    pub node_id: String,
    pub read_only: bool,
    pub state: AttachState,
    #[serde(default)]
    pub socket_path: String,
    #[serde(default)]
    pub qemu_args: Vec<String>,
    #[serde(default)]
    pub cloud_hypervisor_args: Vec<String>,
    /// This attachment's identity: the volume's `attach_gen` when it was
    /// made. Its backend states it to storage servers and to the control
    /// service; once superseded, both refuse it.
    #[serde(default)]
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: u64,
    pub name: String,
    pub tenant: String,
    pub size_bytes: u64,
    /// Set while resizing: the size being grown to.
    #[serde(default)]
    pub target_size: u64,
    pub state: VolumeState,
    /// First copy is the primary; the rest are the in-sync mirrors.
    pub copies: Vec<CopyRecord>,
    pub epoch: u64,
    pub attachment: Option<AttachmentRecord>,
    pub created_at: i64,
    /// A copy being moved off a draining server (see `drain.rs`).
    #[serde(default)]
    pub moving: Option<MoveRecord>,
    /// After a move's cutover: the server whose old copy is still to be
    /// deleted once the new layout is pushed everywhere.
    #[serde(default)]
    pub retire: Option<String>,
    /// Copies wanted (primary + mirrors); after a failure the volume runs
    /// degraded until re-mirroring restores this many. 0 = `copies.len()`.
    #[serde(default)]
    pub replicas: u32,
    /// A failover persisted a new layout that is not yet pushed to every
    /// surviving copy; the reconcile loop pushes it (a control crash between
    /// the two steps resumes here).
    #[serde(default)]
    pub layout_pending: bool,
    /// Copies that left the layout in a failover and may come back: if
    /// their server returns within `--rejoin-wait-ms`, the copy rejoins with
    /// a delta resync instead of a new copy being filled from scratch.
    #[serde(default)]
    pub dropped: Vec<DroppedCopy>,
    /// Attachment generation, raised by every attach, forced attach and
    /// detach, persisted before it is pushed to the copies (one writer per
    /// volume: a copy refuses backends of an older generation).
    #[serde(default)]
    pub attach_gen: u64,
    /// The snapshot this volume was created from, while it hydrates (and
    /// after, for the record).
    #[serde(default)]
    pub source: Option<SourceRecord>,
    /// Where its snapshots go (None: the default destination).
    #[serde(default)]
    pub backup: Option<BackupPolicy>,
    /// Snapshots taken on a schedule (see `schedules.rs`).
    #[serde(default)]
    pub schedule: Option<ScheduleRecord>,
}

/// A volume's snapshot schedule and retention, and where it stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// Every this many seconds (0 = use `cron`).
    pub interval_secs: u64,
    /// 5-field cron expression, UTC ("" = use `interval_secs`).
    pub cron: String,
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    /// Unix seconds.
    pub next_run_at: i64,
    pub last_run_at: i64,
    pub last_error: String,
    pub last_snapshot_id: u64,
}

/// How a volume's snapshots are laid over destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupLayout {
    Single,
    Duplicate,
    Alternate,
    Striped,
}

impl BackupLayout {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupLayout::Single => "single",
            BackupLayout::Duplicate => "duplicate",
            BackupLayout::Alternate => "alternate",
            BackupLayout::Striped => "striped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPolicy {
    pub layout: BackupLayout,
    pub destinations: Vec<String>,
    /// Striped: 512 KiB blocks per stripe unit.
    #[serde(default)]
    pub stripe_blocks: u64,
    /// Snapshots older than this are moved to `archive_to` (0 = never).
    #[serde(default)]
    pub archive_after_secs: u64,
    #[serde(default)]
    pub archive_to: String,
}

/// A named snapshot destination. Credentials are kept here (the store is
/// the control service's own, owner-only directory) and sent only to the
/// storage servers that upload to or load from it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationRecord {
    pub name: String,
    /// Owner tenant; "" for a destination defined by a `--destination`
    /// flag (shared by every tenant, removed only by removing the flag).
    pub tenant: String,
    pub url: String,
    pub endpoint: String,
    pub region: String,
    pub allow_http: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub created_at: i64,
    #[serde(default)]
    pub health: DestinationHealth,
}

/// The last access check of a destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationHealth {
    pub ok: bool,
    pub error: String,
    pub checked_at: i64,
    pub latency_micros: u64,
}

impl std::fmt::Debug for DestinationRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationRecord")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl DestinationRecord {
    pub fn spec(&self) -> basalt_snapshot::DestinationSpec {
        basalt_snapshot::DestinationSpec {
            name: self.name.clone(),
            url: self.url.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            allow_http: self.allow_http,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
        }
    }

    pub fn from_spec(d: &basalt_snapshot::DestinationSpec, tenant: &str) -> DestinationRecord {
        DestinationRecord {
            name: d.name.clone(),
            tenant: tenant.to_owned(),
            url: d.url.clone(),
            endpoint: d.endpoint.clone(),
            region: d.region.clone(),
            allow_http: d.allow_http,
            access_key_id: d.access_key_id.clone(),
            secret_access_key: d.secret_access_key.clone(),
            created_at: now_unix(),
            health: DestinationHealth::default(),
        }
    }
}

/// A volume's source snapshot and its hydration, as last seen on the
/// primary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub snapshot_id: u64,
    pub destination: String,
    pub snapshot_size: u64,
    pub blocks_total: u64,
    pub blocks_present: u64,
    pub bytes_fetched: u64,
    /// Every block is local on every copy: the snapshot is no longer needed.
    pub hydrated: bool,
    /// Last error the primary reported (it retries).
    #[serde(default)]
    pub error: String,
    /// How each destination served the primary's reads.
    #[serde(default)]
    pub reads: Vec<DestinationReadsRecord>,
    #[serde(default)]
    pub fallbacks: u64,
    #[serde(default)]
    pub hedges: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationReadsRecord {
    pub destination: String,
    pub latency_micros: u64,
    pub reads: u64,
    pub errors: u64,
    pub corrupt: u64,
    pub repaired: u64,
    pub served: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SnapshotState {
    /// Point taken; uploading on `primary` (polled; resumed after a restart).
    Creating,
    Complete,
    Failed,
    /// Manifest being deleted (resumed after a restart).
    Deleting,
    /// A direct snapshot taking blocks (StartSnapshot), until completed.
    Open,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotProgressRecord {
    pub blocks_total: u64,
    pub blocks_done: u64,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
    pub data_bytes: u64,
    pub change_source: String,
    pub cow_blocks: u64,
    pub point_micros: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: u64,
    pub name: String,
    pub tenant: String,
    pub volume_id: u64,
    pub volume_name: String,
    /// The first of `destinations` (records written before snapshots had
    /// several hold only this).
    pub destination: String,
    /// Every destination holding it.
    #[serde(default)]
    pub destinations: Vec<String>,
    /// single, duplicate or striped ("" = single).
    #[serde(default)]
    pub layout: String,
    #[serde(default)]
    pub stripe_blocks: u64,
    pub parent_id: u64,
    pub state: SnapshotState,
    #[serde(default)]
    pub failure: String,
    pub size_bytes: u64,
    pub created_at: i64,
    #[serde(default)]
    pub completed_at: i64,
    /// Server running the upload, and the layout epoch of the point.
    pub primary: String,
    pub epoch: u64,
    /// The primary took the point (persisted once SnapshotPoint returned).
    #[serde(default)]
    pub point_taken: bool,
    #[serde(default)]
    pub progress: SnapshotProgressRecord,
    /// Taken by the volume's schedule (retention may delete it).
    #[serde(default)]
    pub scheduled: bool,
    /// Destinations holding a full copy besides `destinations`.
    #[serde(default)]
    pub copies: Vec<String>,
    /// Destinations a copy is being made to (resumed after a restart).
    #[serde(default)]
    pub copying: Vec<String>,
    /// The last failure of a copy being made (it is retried).
    #[serde(default)]
    pub copy_error: String,
}

impl SnapshotRecord {
    pub fn key(&self) -> String {
        snapshot_key(self.id)
    }

    /// Every destination holding it.
    pub fn dests(&self) -> Vec<String> {
        if self.destinations.is_empty() {
            vec![self.destination.clone()]
        } else {
            self.destinations.clone()
        }
    }

    /// Every destination holding (or receiving) any of it.
    pub fn all_dests(&self) -> Vec<String> {
        let mut v = self.dests();
        v.extend(self.copies.iter().cloned());
        v.extend(self.copying.iter().cloned());
        v
    }

    /// Complete copies of the snapshot: each copy, each member of a
    /// duplicate set, and the set itself otherwise.
    pub fn full_copies(&self) -> usize {
        let set = match self.layout() {
            "duplicate" => self.dests().len(),
            _ => 1,
        };
        set + self.copies.len()
    }

    pub fn layout(&self) -> &str {
        if self.layout.is_empty() {
            "single"
        } else {
            &self.layout
        }
    }

    /// Same destinations, same layout: chunks of one can be reused by the
    /// other (an incremental snapshot's parent must share its set).
    pub fn same_set(&self, dests: &[String], layout: &str, stripe_blocks: u64) -> bool {
        self.dests() == dests && self.layout() == layout && self.stripe_blocks == stripe_blocks
    }
}

pub fn snapshot_key(id: u64) -> String {
    format!("{id:020}")
}

/// A copy dropped from a volume's layout by a failover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedCopy {
    pub server_id: String,
    /// Epoch of the layout that dropped it.
    pub epoch: u64,
    /// It held the primary copy.
    pub was_primary: bool,
    /// A delta resync is safe: every write it may hold that the others do
    /// not was resubmitted by the attached backend. False after a forced
    /// attach (the backend holding those writes may be gone).
    pub delta_ok: bool,
    /// Unix milliseconds.
    pub dropped_at_ms: i64,
}

impl VolumeRecord {
    pub fn wanted_copies(&self) -> usize {
        if self.replicas == 0 {
            self.copies.len()
        } else {
            self.replicas as usize
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub from: String,
    pub to: String,
    /// A dropped copy rejoining: the primary may resync only the regions
    /// written since it left (its dirty-region map).
    #[serde(default)]
    pub delta: bool,
    /// Unix milliseconds when the move started (a rejoin that does not
    /// finish within `--rejoin-wait-ms` is abandoned).
    #[serde(default)]
    pub started_ms: i64,
    /// A new copy seeded from this complete snapshot (loaded from its
    /// destination, not read from the primary); the primary then sends only
    /// the blocks written since (0 = a full copy from the primary).
    #[serde(default)]
    pub seed_snapshot: u64,
    /// The target is still loading the seed snapshot: the primary does not
    /// feed it yet.
    #[serde(default)]
    pub seeding: bool,
    /// The seeded target copy was created (so a copy found there later is
    /// ours, loaded or not).
    #[serde(default)]
    pub seed_created: bool,
}

impl VolumeRecord {
    pub fn key(&self) -> String {
        key(self.id)
    }

    pub fn primary(&self) -> &str {
        self.copies
            .first()
            .map(|c| c.server_id.as_str())
            .unwrap_or("")
    }
}

/// Volume keys sort numerically.
pub fn key(id: u64) -> String {
    format!("{id:020}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub server_id: String,
    pub data_address: String,
    pub admin_address: String,
    pub zone: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    #[serde(default)]
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    pub address: String,
}

pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
