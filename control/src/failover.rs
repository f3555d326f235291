//! Acting on failed storage servers (no heartbeat for `--down-after-ms`).
//!
//! - A failed **primary**: the first in-sync mirror that is up is promoted.
//! - A failed **mirror**: it leaves the in-sync set.
//!
//! Either way the new layout (copies without the failed server, epoch+1) is
//! persisted first (invariant 4), then pushed to the surviving copies and to
//! the attached backend, which reconnects and resubmits its in-flight
//! requests. Until the push, a write the failed mirror missed is not
//! acknowledged (the primary answers MirrorUnavailable), so a copy leaves the
//! in-sync set before such a write is acknowledged (invariant 5). The epoch
//! bump fences the failed server if it comes back.
//!
//! A volume with fewer copies than wanted is then re-mirrored: a new copy is
//! filled while writes go on and joins the in-sync set (the same steps as a
//! drain, `drain.rs`, with no copy to retire).

use basalt_proto::node as npb;

use crate::clients::peer_error;
use crate::error::{ControlError, Result};
use crate::model::{AttachState, MoveRecord, VolumeRecord, VolumeState};
use crate::Control;

impl Control {
    /// One pass. Caller holds the operations lock.
    pub(crate) async fn handle_failures(&self) -> usize {
        let Ok(vols) = self.volumes() else { return 0 };
        let mut n = 0;
        for v in vols {
            let busy = v.state != VolumeState::Available
                || v.attachment
                    .as_ref()
                    .is_some_and(|a| a.state != AttachState::Attached);
            if busy || v.retire.is_some() {
                continue;
            }
            let id = v.id;
            let failed: Vec<String> = v
                .copies
                .iter()
                .map(|c| c.server_id.clone())
                .filter(|s| self.registry.is_failed(s))
                .collect();
            let r = if !failed.is_empty() {
                n += 1;
                self.fail_over(v, &failed).await
            } else if v.copies.len() < v.wanted_copies() && v.moving.is_none() {
                n += 1;
                self.start_remirror(v)
            } else {
                continue;
            };
            if let Err(e) = r {
                tracing::warn!(volume = id, "failure handling: will retry: {e}");
            }
        }
        n
    }

    async fn fail_over(&self, mut v: VolumeRecord, failed: &[String]) -> Result<()> {
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
        v.copies = survivors;
        v.epoch += 1;
        self.save(&v)?;
        tracing::warn!(
            volume = v.id,
            failed = ?failed,
            epoch = v.epoch,
            primary = %v.primary(),
            promoted = v.primary() != old_primary,
            "failover: layout without the failed servers persisted"
        );
        self.push_layout(&v).await?;
        self.repoint_backend(&v).await
    }

    /// Tells the attached backend the current primary and epoch.
    pub(crate) async fn repoint_backend(&self, v: &VolumeRecord) -> Result<()> {
        let Some(a) = v.attachment.clone() else {
            return Ok(());
        };
        let node = self.registry.node(&*self.store, &a.node_id)?;
        let primary = self.registry.server(&*self.store, v.primary())?;
        let mut cl = self.clients.node(&node.node_id, &node.address).await?;
        let req = npb::UpdateLayoutRequest {
            volume_id: v.id,
            primary_address: primary.data_address,
            epoch: v.epoch,
        };
        cl.update_layout(req)
            .await
            .map_err(|e| peer_error(&format!("node {}", node.node_id), e))?;
        Ok(())
    }

    fn start_remirror(&self, mut v: VolumeRecord) -> Result<()> {
        let to = self.pick_target(&v, "")?;
        tracing::info!(volume = v.id, %to, copies = v.copies.len(), wanted = v.wanted_copies(), "re-mirroring: new copy");
        v.moving = Some(MoveRecord {
            from: String::new(),
            to,
        });
        self.save(&v)
    }
}
