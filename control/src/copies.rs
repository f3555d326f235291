//! Copies of snapshots in more destinations: made in the background
//! (CopySnapshot; resumed after a restart: a copy is idempotent), removed
//! from one destination while enough copies remain (RemoveSnapshotCopy),
//! and the archive rule of a backup policy (old snapshots moved to a
//! cheaper destination).
//!
//! A copy reads every chunk through the snapshot's destination set
//! (verified, with fallback), stores the ones the target lacks, and writes
//! the manifest last; only then does the target join `copies`. While a copy
//! runs, the target is not swept and the snapshot cannot be deleted.

use std::sync::Arc;
use std::time::Duration;

use basalt_proto::control as pb;
use basalt_snapshot::{chunk, Destination};

use crate::error::{ControlError, Result};
use crate::model::*;
use crate::store::{get_json, put_json, Op, Table};
use crate::Control;

/// Chunks copied at once.
const PARALLEL: usize = 4;

impl Control {
    pub async fn copy_snapshot(&self, r: pb::CopySnapshotRequest) -> Result<SnapshotRecord> {
        let _op = self.ops.lock().await;
        let mut s = self.find_snapshot(&r.snapshot.unwrap_or_default())?;
        if s.state != SnapshotState::Complete {
            return Err(ControlError::Precondition(format!(
                "snapshot {} is {:?}: only a COMPLETE snapshot can be copied",
                s.id, s.state
            )));
        }
        let d = self.destination_for(&s.tenant, &r.destination)?;
        if s.all_dests().contains(&d.name) {
            return Err(ControlError::AlreadyExists(format!(
                "snapshot {} is already kept (or being copied) in destination {:?}",
                s.id, d.name
            )));
        }
        s.copying.push(d.name.clone());
        self.save_snapshot(&s)?;
        tracing::info!(snapshot = s.id, destination = %d.name, "copying snapshot");
        Ok(s)
    }

    /// Starts the copy jobs of every snapshot being copied (once each).
    pub fn start_copies(self: &Arc<Self>) {
        let Ok(snaps) = self.snapshots() else { return };
        for s in snaps {
            for target in &s.copying {
                let key = (s.id, target.clone());
                if !self
                    .copy_jobs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone())
                {
                    continue;
                }
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.run_copy(key.0, &key.1).await {
                        tracing::warn!(snapshot = key.0, destination = %key.1, "snapshot copy failed, retrying in 5 s: {e}");
                        me.note_copy_error(key.0, &key.1, &e).await;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    me.copy_jobs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                });
            }
        }
    }

    async fn run_copy(&self, id: u64, target: &str) -> Result<()> {
        let Some(s) =
            get_json::<SnapshotRecord>(&*self.store, Table::Snapshots, &snapshot_key(id))?
        else {
            return Ok(());
        };
        let set = self.open_set(&s)?;
        let to = Arc::new(self.open_destination(target)?);
        let unavailable = |what: &str, e: String| ControlError::Unavailable(format!("{what}: {e}"));
        let m = set
            .get_manifest(id)
            .await
            .map_err(|e| unavailable("reading the manifest", e.to_string()))?;
        let set = Arc::new(set);
        let mut tasks: tokio::task::JoinSet<std::result::Result<u64, String>> =
            tokio::task::JoinSet::new();
        let mut bytes = 0;
        let mut blocks = m.blocks.iter();
        loop {
            while tasks.len() < PARALLEL {
                let Some((&b, &cid)) = blocks.next() else {
                    break;
                };
                let (set, to, len) = (set.clone(), to.clone(), m.block_len(b));
                tasks.spawn(async move {
                    if to.has_chunk(&cid).await.map_err(|e| e.to_string())? {
                        return Ok(0);
                    }
                    let data = set
                        .get_chunk(b, &cid, len)
                        .await
                        .map_err(|e| e.to_string())?;
                    let (_, stored) = chunk::encode(&data);
                    let n = stored.len() as u64;
                    to.put_chunk(&cid, stored)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(n)
                });
            }
            let Some(r) = tasks.join_next().await else {
                break;
            };
            bytes += r
                .map_err(|e| unavailable("copy task", e.to_string()))?
                .map_err(|e| unavailable("copying a chunk", e))?;
        }
        to.put_manifest(&m)
            .await
            .map_err(|e| unavailable("storing the manifest", e.to_string()))?;
        let _op = self.ops.lock().await;
        let Some(mut cur) =
            get_json::<SnapshotRecord>(&*self.store, Table::Snapshots, &snapshot_key(id))?
        else {
            return Ok(());
        };
        if !cur.copying.iter().any(|d| d == target) {
            // Cancelled meanwhile: take back the manifest just stored, so a
            // sweep frees the chunks.
            drop(_op);
            to.delete_manifest(id)
                .await
                .map_err(|e| unavailable("removing a cancelled copy's manifest", e.to_string()))?;
            return self.sweep(target).await;
        }
        cur.copying.retain(|d| d != target);
        if !cur.copies.iter().any(|d| d == target) {
            cur.copies.push(target.to_owned());
        }
        cur.copy_error.clear();
        self.save_snapshot(&cur)?;
        tracing::info!(
            snapshot = id,
            destination = target,
            bytes,
            "snapshot copied"
        );
        Ok(())
    }

    /// Shows a copy's last failure in the snapshot (it is retried).
    async fn note_copy_error(&self, id: u64, target: &str, e: &ControlError) {
        let _op = self.ops.lock().await;
        let Ok(Some(mut s)) =
            get_json::<SnapshotRecord>(&*self.store, Table::Snapshots, &snapshot_key(id))
        else {
            return;
        };
        let msg = format!("copy to {target}: {e} (retrying)");
        if s.copying.iter().any(|d| d == target) && s.copy_error != msg {
            s.copy_error = msg;
            let _ = self.save_snapshot(&s);
        }
    }

    pub async fn remove_snapshot_copy(
        &self,
        r: pb::RemoveSnapshotCopyRequest,
    ) -> Result<SnapshotRecord> {
        let op = self.ops.lock().await;
        let mut s = self.find_snapshot(&r.snapshot.unwrap_or_default())?;
        if s.copying.contains(&r.destination) {
            // Cancels the copy: what it stored there is swept.
            s.copying.retain(|d| *d != r.destination);
            s.copy_error.clear();
            tracing::info!(snapshot = s.id, destination = %r.destination, "snapshot copy cancelled");
            return self.drop_from(s, &[r.destination], op).await;
        }
        if s.state != SnapshotState::Complete || !s.copying.is_empty() {
            return Err(ControlError::Precondition(format!(
                "snapshot {} is {:?}{}: remove a copy once it is COMPLETE and no copy is being made",
                s.id,
                s.state,
                if s.copying.is_empty() { "" } else { " and being copied" }
            )));
        }
        let name = r.destination;
        let required = if s.layout() == "duplicate" { 2 } else { 1 };
        let in_copies = s.copies.contains(&name);
        let in_set = s.dests().contains(&name);
        if !in_copies && !in_set {
            return Err(ControlError::NotFound(format!(
                "snapshot {} is not kept in destination {name:?}",
                s.id
            )));
        }
        if in_set && s.layout() == "striped" {
            return Err(ControlError::Precondition(format!(
                "destination {name:?} holds one stripe of snapshot {}: a stripe cannot be removed alone",
                s.id
            )));
        }
        if s.full_copies() <= required {
            return Err(ControlError::Precondition(format!(
                "snapshot {} has {} complete cop{} and needs {required}: copy it elsewhere first (basalt snapshot copy)",
                s.id,
                s.full_copies(),
                if s.full_copies() == 1 { "y" } else { "ies" }
            )));
        }
        if in_copies {
            s.copies.retain(|d| *d != name);
        } else {
            let mut dests = s.dests();
            dests.retain(|d| *d != name);
            if dests.is_empty() {
                // A single snapshot's one destination: its first copy
                // takes its place.
                dests.push(s.copies.remove(0));
            }
            if dests.len() == 1 {
                s.layout = "single".into();
            }
            s.destination = dests[0].clone();
            s.destinations = dests;
        }
        self.drop_from(s, &[name], op).await
    }

    /// Deletes `s`'s manifest from `gone` (already removed from the record
    /// `s`), then saves `s` owing a sweep of each, then sweeps. A crash
    /// before the save leaves the old record, whose remaining copies still
    /// hold everything.
    async fn drop_from(
        &self,
        s: SnapshotRecord,
        gone: &[String],
        op: tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<SnapshotRecord> {
        for name in gone {
            let d: Destination = self.open_destination(name)?;
            d.delete_manifest(s.id)
                .await
                .map_err(|e| ControlError::Unavailable(format!("destination {name}: {e}")))?;
        }
        let mut ops = vec![put_json(Table::Snapshots, s.key(), &s)];
        ops.extend(
            gone.iter()
                .map(|d| Op::Put(Table::Sweeps, d.clone(), b"1".to_vec())),
        );
        self.store.apply(ops)?;
        drop(op);
        tracing::info!(snapshot = s.id, removed = ?gone, "snapshot removed from destinations");
        for d in gone {
            self.sweep(d).await?;
        }
        Ok(s)
    }

    /// The archive rule of every volume's backup policy: a snapshot older
    /// than `archive_after_secs` is copied to `archive_to`, then removed
    /// from its other destinations.
    pub async fn archive_old(&self) {
        let (Ok(vols), Ok(snaps)) = (self.volumes(), self.snapshots()) else {
            return;
        };
        let now = now_unix();
        for v in vols {
            let Some(p) = v.backup.as_ref().filter(|p| p.archive_after_secs > 0) else {
                continue;
            };
            let old = snaps.iter().filter(|s| {
                s.volume_id == v.id
                    && s.state == SnapshotState::Complete
                    && now - s.created_at >= p.archive_after_secs as i64
                    && s.dests() != [p.archive_to.clone()]
            });
            for s in old {
                let r = if s.copies.contains(&p.archive_to) {
                    self.move_to(s.id, &p.archive_to).await.map(drop)
                } else if !s.copying.contains(&p.archive_to) {
                    self.copy_snapshot(pb::CopySnapshotRequest {
                        snapshot: Some(pb::SnapshotRef {
                            id: s.id,
                            ..Default::default()
                        }),
                        destination: p.archive_to.clone(),
                    })
                    .await
                    .map(drop)
                } else {
                    Ok(())
                };
                if let Err(e) = r {
                    tracing::warn!(snapshot = s.id, archive = %p.archive_to, "archiving: {e}");
                }
            }
        }
    }

    /// Makes the copy in `to` the snapshot's only place.
    async fn move_to(&self, id: u64, to: &str) -> Result<SnapshotRecord> {
        let op = self.ops.lock().await;
        let Some(mut s) =
            get_json::<SnapshotRecord>(&*self.store, Table::Snapshots, &snapshot_key(id))?
        else {
            return Err(ControlError::NotFound(format!("snapshot {id} is gone")));
        };
        if s.state != SnapshotState::Complete || !s.copies.iter().any(|d| d == to) {
            return Ok(s);
        }
        let gone: Vec<String> = s.dests();
        s.copies.retain(|d| d != to);
        s.destination = to.to_owned();
        s.destinations = vec![to.to_owned()];
        s.layout = "single".into();
        s.stripe_blocks = 0;
        tracing::info!(snapshot = id, archive = to, "snapshot archived");
        self.drop_from(s, &gone, op).await
    }
}
