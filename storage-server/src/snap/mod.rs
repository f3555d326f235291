//! Snapshots on the storage server: change tracking on every copy, and on a
//! primary the snapshot point, copy-on-write while uploading, and the
//! upload itself (see `docs/snapshots.md`).

pub mod bits;
pub mod blocks;
pub mod changes;
pub mod dests;
pub mod freeze;
pub mod hydrate;
pub mod job;
pub mod presence;
mod upload;

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::copy::Copy;
use bits::{blocks_of, Bits, BLOCK};
use changes::ChangeMaps;
use freeze::Freeze;
use job::{ChangeSource, JobState, SnapJob};

#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    #[error("volume {0} has no copy on this server")]
    NotFound(u64),
    #[error("this copy is not the volume's primary: take the snapshot point on the primary")]
    NotPrimary,
    #[error("epoch {got} is not this copy's epoch {current}: the layout changed; retry with the current one")]
    Epoch { got: u64, current: u64 },
    #[error("snapshot {0} is still uploading on this copy: one snapshot at a time per volume")]
    Busy(u64),
    #[error(
        "the volume is still loading its source snapshot: snapshot it once hydration completed"
    )]
    Hydrating,
    #[error("no snapshot job {0} on this copy (the server restarted, or it was forgotten)")]
    NoJob(u64),
    #[error("snapshot job {0} already exists on this copy")]
    Exists(u64),
    #[error("destination: {0}")]
    Destination(String),
    #[error("disk I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Snapshot state of one copy.
#[derive(Default)]
pub struct SnapState {
    pub changes: Mutex<ChangeMaps>,
    /// While a point walks the allocated extents outside the ordering lock:
    /// the blocks mutated meanwhile (added to what the walk found).
    walk: Mutex<Option<Bits>>,
    freeze: Mutex<Option<Arc<Freeze>>>,
    jobs: Mutex<HashMap<u64, Arc<SnapJob>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SnapState {
    /// Called under the copy's ordering lock before a mutation of
    /// `offset..offset+len` is applied to the data file `data`.
    pub fn before_mutation(&self, data: &File, offset: u64, len: u64) -> std::io::Result<()> {
        lock(&self.changes).on_mutation(offset, len);
        if let Some(w) = lock(&self.walk).as_mut() {
            w.set_range(bits::touched(offset, len));
        }
        let freeze = lock(&self.freeze).clone();
        match freeze {
            Some(f) => f.before_mutation(data, offset, len),
            None => Ok(()),
        }
    }

    /// A snapshot point is finding the allocated extents.
    pub fn walking(&self) -> bool {
        lock(&self.walk).is_some()
    }

    pub fn jobs(&self) -> Vec<Arc<SnapJob>> {
        let mut v: Vec<_> = lock(&self.jobs).values().cloned().collect();
        v.sort_by_key(|j| j.snapshot_id);
        v
    }

    pub fn job(&self, snapshot_id: u64) -> Option<Arc<SnapJob>> {
        lock(&self.jobs).get(&snapshot_id).cloned()
    }

    /// Drops a finished job (a running one is kept).
    pub fn forget(&self, snapshot_id: u64) -> Result<(), SnapError> {
        let mut jobs = lock(&self.jobs);
        match jobs.get(&snapshot_id) {
            None => Ok(()),
            Some(j) if j.state() == JobState::Running => Err(SnapError::Busy(snapshot_id)),
            Some(_) => {
                jobs.remove(&snapshot_id);
                Ok(())
            }
        }
    }
}

/// What the control service asks of a primary at a snapshot point.
pub struct PointRequest {
    pub snapshot_id: u64,
    pub epoch: u64,
    pub parent_id: u64,
    pub destinations: dests::SetSpec,
    /// Volume bytes read per second (0 = unlimited).
    pub rate_bytes_per_sec: u64,
}

/// Takes the snapshot point of `copy` and starts its upload in the
/// background. Must run inside a tokio runtime.
pub fn point(copy: &Arc<Copy>, req: PointRequest) -> Result<Arc<SnapJob>, SnapError> {
    let set = req.destinations.open().map_err(SnapError::Destination)?;
    if copy.hydration().is_some() {
        return Err(SnapError::Hydrating);
    }
    // Without a change map the point reads every allocated block. Finding
    // them (SEEK_DATA over a fragmented file can take a while) happens
    // outside the ordering lock; the blocks mutated meanwhile are tracked
    // and added under it, so none allocated before the point is missed.
    let needs_walk = {
        let _order = lock(&copy.order);
        let tracked = req.parent_id != 0 && lock(&copy.snap.changes).since(req.parent_id).is_some();
        let mut walk = lock(&copy.snap.walk);
        if walk.is_some() {
            return Err(SnapError::Busy(req.snapshot_id));
        }
        if !tracked {
            *walk = Some(Bits::default());
        }
        !tracked
    };
    let walked = if needs_walk {
        let w = allocated_blocks(copy, blocks_of(copy.size()));
        basalt_failpoint::hit("snapshot.after_walk");
        match w {
            Ok(w) => Some(w),
            Err(e) => {
                *lock(&copy.snap.walk) = None;
                return Err(e.into());
            }
        }
    } else {
        None
    };
    let started = Instant::now();
    let (job, freeze, candidates) = {
        let _order = lock(&copy.order);
        let during_walk = lock(&copy.snap.walk).take();
        if !copy.is_primary() {
            return Err(SnapError::NotPrimary);
        }
        if req.epoch != copy.epoch() {
            return Err(SnapError::Epoch {
                got: req.epoch,
                current: copy.epoch(),
            });
        }
        if let Some(j) = lock(&copy.snap.jobs).get(&req.snapshot_id) {
            return Err(SnapError::Exists(j.snapshot_id));
        }
        if let Some(j) = lock(&copy.snap.jobs)
            .values()
            .find(|j| j.state() == JobState::Running)
        {
            return Err(SnapError::Busy(j.snapshot_id));
        }
        let size = copy.size();
        let blocks = blocks_of(size);
        let tracked = (req.parent_id != 0)
            .then(|| lock(&copy.snap.changes).since(req.parent_id))
            .flatten();
        let (source, candidates) = match (tracked, walked, during_walk) {
            (Some(bits), _, _) => (ChangeSource::ChangeMap, bits),
            (None, Some(mut found), Some(during)) => {
                found.merge(&during);
                let source = if req.parent_id == 0 {
                    ChangeSource::Full
                } else {
                    ChangeSource::HashCompare
                };
                (source, found)
            }
            // Cannot happen (one point at a time); refuse rather than guess.
            _ => return Err(SnapError::Busy(req.snapshot_id)),
        };
        let mut pending = Bits::new(blocks);
        let list = candidates.ones(blocks);
        for &b in &list {
            pending.set(b);
        }
        let freeze = Arc::new(Freeze::new(copy.dir(), req.snapshot_id, size, pending)?);
        lock(&copy.snap.changes).point(req.snapshot_id, true);
        *lock(&copy.snap.freeze) = Some(freeze.clone());
        let job = Arc::new(SnapJob::new(
            req.snapshot_id,
            size,
            source,
            started.elapsed().as_micros() as u64,
            list.len() as u64,
        ));
        lock(&copy.snap.jobs).insert(req.snapshot_id, job.clone());
        (job, freeze, list)
    };
    tracing::info!(
        volume = copy.volume_id,
        snapshot = req.snapshot_id,
        parent = req.parent_id,
        blocks = candidates.len(),
        source = job.change_source.as_str(),
        point_micros = job.point_micros,
        "snapshot point taken; uploading"
    );
    let task = upload::Upload {
        copy: copy.clone(),
        job: job.clone(),
        freeze,
        set: Arc::new(set),
        parent_id: req.parent_id,
        candidates,
        rate: req.rate_bytes_per_sec,
    };
    tokio::spawn(task.run());
    Ok(job)
}

/// A mirror heard of a snapshot point: it starts a (late) change map.
pub fn mark(copy: &Copy, snapshot_id: u64) {
    let _order = lock(&copy.order);
    lock(&copy.snap.changes).point(snapshot_id, false);
}

/// Ends the copy-on-write of a finished upload.
fn unfreeze(copy: &Copy) {
    *lock(&copy.snap.freeze) = None;
}

/// Blocks holding allocated data (`SEEK_DATA`); holes read as zeroes.
fn allocated_blocks(copy: &Copy, blocks: u64) -> std::io::Result<Bits> {
    let mut bits = Bits::new(blocks);
    let mut pos = 0;
    let size = copy.size();
    while pos < size {
        match copy.next_data(pos).map_err(std::io::Error::other)? {
            Some((s, e)) if s < size => {
                let e = e.min(size);
                bits.set_range(s / BLOCK..e.div_ceil(BLOCK));
                pos = e.max(s + 1);
            }
            _ => break,
        }
    }
    Ok(bits)
}
