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
    pub destination: String,
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
}

impl SnapshotRecord {
    pub fn key(&self) -> String {
        snapshot_key(self.id)
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
