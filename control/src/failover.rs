//! Acting on failed storage servers: no heartbeat for `--down-after-ms`, or
//! reported unreachable by the data path and not answering the control
//! service's own probe (`report.rs`).
//!
//! - A failed **primary**: the first surviving in-sync mirror is promoted.
//! - A failed **mirror**: it leaves the in-sync set.
//!
//! A failover is a persisted, staged state machine:
//! 1. the layout without the failed servers, epoch+1, `layout_pending` and
//!    the dropped copies are persisted at once (invariant 4);
//! 2. the layout is pushed to every surviving copy; the epoch bump fences
//!    the failed server if it comes back (its forwarded writes are refused);
//! 3. the attached backend is told (best effort: a backend also asks by
//!    itself when its requests are refused), `layout_pending` is cleared.
//!
//! A crash between the steps resumes at step 2 (the reconcile loop pushes
//! every pending layout). Until the push, a write the failed mirror missed is
//! not acknowledged (the primary answers MirrorUnavailable), so a copy
//! leaves the in-sync set before such a write is acknowledged (invariant 5).
//!
//! A volume with fewer copies than wanted is then brought back:
//! - if a dropped copy's server is back, the copy rejoins: the primary sends
//!   it only the regions written since it left (its dirty-region map);
//! - otherwise, once `--rejoin-wait-ms` has passed, a new copy is filled on
//!   another server while writes go on (the same steps as a drain,
//!   `drain.rs`, with no copy to retire);
//! - a dropped copy no longer needed is deleted when its server is back.

use crate::error::{ControlError, Result};
use crate::model::{now_unix_ms, AttachState, DroppedCopy, MoveRecord, VolumeRecord, VolumeState};
use crate::Control;

impl Control {
    /// One volume's failure handling. Caller holds the operations lock.
    /// Returns None when there was nothing to do.
    pub(crate) async fn handle_failure(&self, v: VolumeRecord) -> Option<Result<()>> {
        if v.layout_pending {
            return Some(self.push_pending(v).await.map(|_| ()));
        }
        let busy = v.state != VolumeState::Available
            || v.attachment
                .as_ref()
                .is_some_and(|a| a.state != AttachState::Attached);
        if busy || v.retire.is_some() {
            return None;
        }
        let failed: Vec<String> = v
            .copies
            .iter()
            .map(|c| c.server_id.clone())
            .filter(|s| self.registry.is_failed(s))
            .collect();
        if !failed.is_empty() {
            return Some(self.fail_over(v, &failed, "no heartbeat").await.map(|_| ()));
        }
        if v.copies.len() < v.wanted_copies() && v.moving.is_none() {
            return self.start_remirror(v).transpose();
        }
        if v.moving.is_none() && v.dropped.iter().any(|d| self.registry.is_up(&d.server_id)) {
            return Some(self.delete_dropped(v).await);
        }
        None
    }

    /// Drops `failed` from the layout (steps 1–3 above).
    pub(crate) async fn fail_over(
        &self,
        mut v: VolumeRecord,
        failed: &[String],
        why: &str,
    ) -> Result<VolumeRecord> {
        let old_primary = v.primary().to_owned();
        let survivors: Vec<_> = v
            .copies
            .iter()
            .filter(|c| !failed.contains(&c.server_id))
            .cloned()
            .collect();
        if survivors.is_empty() {
            return Err(ControlError::Unavailable(format!(
                "volume {}: every copy is on a failed server ({}); waiting for one to return",
                v.id,
                failed.join(", ")
            )));
        }
        // A move whose source or target failed starts over.
        if v.moving
            .as_ref()
            .is_some_and(|m| failed.contains(&m.from) || failed.contains(&m.to))
        {
            v.moving = None;
        }
        let now = now_unix_ms();
        for (i, c) in v.copies.iter().enumerate() {
            if failed.contains(&c.server_id) {
                v.dropped.retain(|d| d.server_id != c.server_id);
                v.dropped.push(DroppedCopy {
                    server_id: c.server_id.clone(),
                    epoch: v.epoch + 1,
                    was_primary: i == 0,
                    delta_ok: true,
                    dropped_at_ms: now,
                });
            }
        }
        v.copies = survivors;
        v.epoch += 1;
        v.layout_pending = true;
        self.save(&v)?;
        tracing::warn!(
            volume = v.id,
            failed = ?failed,
            why,
            epoch = v.epoch,
            primary = %v.primary(),
            promoted = v.primary() != old_primary,
            "failover: layout without the failed servers persisted"
        );
        basalt_failpoint::hit_async("failover.after_persist").await;
        self.push_pending(v).await
    }

    /// Steps 2 and 3: push the persisted layout, tell the backend.
    pub(crate) async fn push_pending(&self, mut v: VolumeRecord) -> Result<VolumeRecord> {
        self.push_layout(&v).await?;
        basalt_failpoint::hit_async("failover.after_push").await;
        if let Err(e) = self.repoint_backend(&v).await {
            tracing::warn!(
                volume = v.id,
                "failover: could not tell the backend (it asks by itself when refused): {e}"
            );
        }
        v.layout_pending = false;
        self.save(&v)?;
        tracing::info!(volume = v.id, epoch = v.epoch, "failover: layout pushed");
        Ok(v)
    }

    /// Starts bringing a degraded volume back to its wanted copy count:
    /// a returning dropped copy first, a new one once the wait is over.
    fn start_remirror(&self, mut v: VolumeRecord) -> Result<Option<()>> {
        let now = now_unix_ms();
        let wait = self.config.rejoin_wait.as_millis() as i64;
        let back = v
            .dropped
            .iter()
            .find(|d| self.registry.is_up(&d.server_id) && self.can_host(&v, &d.server_id))
            .cloned();
        let (to, delta) = match back {
            Some(d) => (d.server_id.clone(), d.delta_ok),
            None if v.dropped.iter().any(|d| now - d.dropped_at_ms < wait) => return Ok(None),
            None => (self.pick_target(&v, "")?, false),
        };
        tracing::info!(volume = v.id, %to, delta, copies = v.copies.len(), wanted = v.wanted_copies(), "re-mirroring");
        // Only a new copy may be seeded: a returning one holds its own data.
        let rejoining = v.dropped.iter().any(|d| d.server_id == to);
        let seed_snapshot = if rejoining { 0 } else { self.seed_for(&v)? };
        v.moving = Some(MoveRecord {
            from: String::new(),
            to,
            delta,
            started_ms: now,
            seed_snapshot,
            seeding: seed_snapshot != 0,
            seed_created: false,
        });
        self.save(&v)?;
        Ok(Some(()))
    }

    /// A server may take a copy of `v` if it is not in the layout already
    /// and is not draining.
    fn can_host(&self, v: &VolumeRecord, server_id: &str) -> bool {
        !v.copies.iter().any(|c| c.server_id == server_id)
            && self
                .registry
                .server(&*self.store, server_id)
                .is_ok_and(|s| !s.draining)
    }

    /// Deletes the stale copies of dropped servers that are back and not
    /// needed (the volume has its copies again).
    async fn delete_dropped(&self, mut v: VolumeRecord) -> Result<()> {
        let back: Vec<String> = v
            .dropped
            .iter()
            .filter(|d| self.registry.is_up(&d.server_id))
            .map(|d| d.server_id.clone())
            .collect();
        for s in back {
            if !v.copies.iter().any(|c| c.server_id == s) {
                self.delete_copy_on(v.id, &s).await?;
                tracing::info!(volume = v.id, server = %s, "stale copy of a dropped server deleted");
            }
            v.dropped.retain(|d| d.server_id != s);
            self.save(&v)?;
        }
        Ok(())
    }

    /// A rejoin that did not finish in time is abandoned (the server may be
    /// up for heartbeats but unreachable from the primary).
    pub(crate) fn rejoin_expired(&self, v: &VolumeRecord) -> bool {
        v.moving.as_ref().is_some_and(|m| {
            m.from.is_empty()
                && v.dropped.iter().any(|d| d.server_id == m.to)
                && now_unix_ms() - m.started_ms > self.config.rejoin_wait.as_millis() as i64
        })
    }

    /// Tells the attached backend the current primary and epoch.
    pub(crate) async fn repoint_backend(&self, v: &VolumeRecord) -> Result<()> {
        let Some(a) = v.attachment.clone() else {
            return Ok(());
        };
        let node = self.registry.node(&*self.store, &a.node_id)?;
        let primary = self.registry.server(&*self.store, v.primary())?;
        let mut cl = self.clients.node(&node.node_id, &node.address).await?;
        let req = basalt_proto::node::UpdateLayoutRequest {
            volume_id: v.id,
            primary_address: primary.data_address,
            epoch: v.epoch,
            attachment: a.generation,
            grant: self.sign_grant(v, &a)?,
        };
        cl.update_layout(req)
            .await
            .map_err(|e| crate::clients::peer_error(&format!("node {}", node.node_id), e))?;
        Ok(())
    }
}
