//! A snapshot job on a primary: its progress and outcome, as the control
//! service polls them (`DescribeSnapshotJob`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use basalt_proto::storage_admin as pb;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Running,
    Complete,
    Failed(String),
}

/// How the blocks to read were chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSource {
    /// Blocks written since the parent's point, from a change map.
    ChangeMap,
    /// No usable map: every allocated block is read and compared with the
    /// parent's hashes.
    HashCompare,
    /// No parent.
    Full,
}

impl ChangeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeSource::ChangeMap => "CHANGE_MAP",
            ChangeSource::HashCompare => "HASH_COMPARE",
            ChangeSource::Full => "FULL",
        }
    }
}

pub struct SnapJob {
    pub snapshot_id: u64,
    pub size: u64,
    pub change_source: ChangeSource,
    pub point_micros: u64,
    pub blocks_total: u64,
    pub blocks_done: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub chunks_new: AtomicU64,
    pub chunks_reused: AtomicU64,
    pub data_bytes: AtomicU64,
    pub cow_blocks: AtomicU64,
    pub state: Mutex<JobState>,
}

impl SnapJob {
    pub fn new(
        snapshot_id: u64,
        size: u64,
        change_source: ChangeSource,
        point_micros: u64,
        blocks_total: u64,
    ) -> SnapJob {
        SnapJob {
            snapshot_id,
            size,
            change_source,
            point_micros,
            blocks_total,
            blocks_done: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_uploaded: AtomicU64::new(0),
            chunks_new: AtomicU64::new(0),
            chunks_reused: AtomicU64::new(0),
            data_bytes: AtomicU64::new(0),
            cow_blocks: AtomicU64::new(0),
            state: Mutex::new(JobState::Running),
        }
    }

    pub fn state(&self) -> JobState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn finish(&self, s: JobState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    pub fn to_pb(&self) -> pb::SnapshotJob {
        let (state, error) = match self.state() {
            JobState::Running => ("RUNNING", String::new()),
            JobState::Complete => ("COMPLETE", String::new()),
            JobState::Failed(e) => ("FAILED", e),
        };
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        pb::SnapshotJob {
            snapshot_id: self.snapshot_id,
            state: state.into(),
            error,
            size_bytes: self.size,
            blocks_total: self.blocks_total,
            blocks_done: n(&self.blocks_done),
            bytes_read: n(&self.bytes_read),
            bytes_uploaded: n(&self.bytes_uploaded),
            chunks_new: n(&self.chunks_new),
            chunks_reused: n(&self.chunks_reused),
            data_bytes: n(&self.data_bytes),
            change_source: self.change_source.as_str().into(),
            cow_blocks: n(&self.cow_blocks),
            point_micros: self.point_micros,
        }
    }
}
