//! Draining a storage server: every copy on it is moved elsewhere while its
//! volume stays in use. Per volume, a persisted state machine:
//!
//! 1. pick a target (placement rules, avoiding the volume's other copies'
//!    servers and failure domains) and persist `moving {from, to}`;
//! 2. create an empty mirror copy on the target and push the primary a layout
//!    naming it as *syncing*: it gets every new write and a full copy through
//!    the same ordered stream (see `storage-server/src/resync.rs`);
//! 3. when the primary reports the target synced: cutover — the target joins
//!    the copies in place of `from` (if `from` held the primary, the first
//!    in-sync mirror is promoted), the epoch is bumped, all persisted at once
//!    with `retire = from`;
//! 4. push the new layout to every copy, point the attached backend at the
//!    (possibly new) primary, delete the copy on `from`, clear `retire`.
//!
//! Every step is idempotent and the reconcile loop resumes it after a crash.
//! The epoch bump fences the old primary: its mirrors refuse its forwarded
//! writes, so it can acknowledge nothing once the new layout is pushed.

use basalt_proto::storage_admin as spb;

use crate::clients::peer_error;
use crate::error::{ControlError, Result};
use crate::model::{now_unix_ms, AttachState, CopyRecord, MoveRecord, VolumeRecord, VolumeState};
use crate::placement::place;
use crate::Control;

impl Control {
    /// Servers being drained.
    pub(crate) fn draining(&self) -> Result<Vec<String>> {
        Ok(self
            .registry
            .servers(&*self.store)?
            .into_iter()
            .filter(|s| s.draining)
            .map(|s| s.server_id)
            .collect())
    }

    /// Advances a volume's move one step, if it has one to make. Caller
    /// holds the operations lock.
    pub(crate) async fn advance_drain(
        &self,
        v: VolumeRecord,
        draining: &[String],
    ) -> Option<Result<()>> {
        let busy = v.state != VolumeState::Available
            || v.attachment
                .as_ref()
                .is_some_and(|a| a.state != AttachState::Attached);
        let wants = v.retire.is_some()
            || v.moving.is_some()
            || v.copies.iter().any(|c| draining.contains(&c.server_id));
        if busy || !wants || v.layout_pending {
            return None;
        }
        if self.rejoin_expired(&v) {
            return Some(self.abandon_rejoin(v).await);
        }
        Some(self.advance_move(v, draining).await)
    }

    /// Gives up on a dropped copy that could not rejoin in time: a new copy
    /// will be filled elsewhere.
    async fn abandon_rejoin(&self, mut v: VolumeRecord) -> Result<()> {
        let Some(m) = v.moving.take() else {
            return Ok(());
        };
        v.dropped.retain(|d| d.server_id != m.to);
        self.save(&v)?;
        tracing::warn!(volume = v.id, server = %m.to, "rejoin did not finish in time; a new copy will be made elsewhere");
        let primary = self.registry.server(&*self.store, v.primary())?;
        let mut pc = self
            .clients
            .storage(&primary.server_id, &primary.admin_address)
            .await?;
        pc.set_layout(spb::SetLayoutRequest {
            volume_id: v.id,
            layout: Some(self.layout_pb(&v, v.primary())?),
        })
        .await
        .map_err(|e| peer_error(&primary.server_id, e))?;
        if let Err(e) = self.delete_copy_on(v.id, &m.to).await {
            tracing::warn!(volume = v.id, server = %m.to, "could not delete the copy that failed to rejoin: {e}");
        }
        Ok(())
    }

    async fn advance_move(&self, mut v: VolumeRecord, draining: &[String]) -> Result<()> {
        if let Some(from) = v.retire.clone() {
            return self.finish_cutover(v, &from).await;
        }
        let Some(m) = v.moving.clone() else {
            let Some(from) = v
                .copies
                .iter()
                .find(|c| draining.contains(&c.server_id))
                .map(|c| c.server_id.clone())
            else {
                return Ok(());
            };
            let to = self.pick_target(&v, &from)?;
            tracing::info!(volume = v.id, %from, %to, "drain: moving copy");
            let seed_snapshot = self.seed_for(&v)?;
            v.moving = Some(MoveRecord {
                from,
                to,
                delta: false,
                started_ms: now_unix_ms(),
                seed_snapshot,
                seeding: seed_snapshot != 0,
                seed_created: false,
            });
            self.save(&v)?;
            return Box::pin(self.advance_move(v, draining)).await;
        };
        // Step 2 (idempotent): the target copy exists and the primary feeds it.
        let to = self.registry.server(&*self.store, &m.to)?;
        let mut cl = self
            .clients
            .storage(&to.server_id, &to.admin_address)
            .await?;
        let source = match self.source_pb(&v)? {
            Some(s) => Some(s),
            None if m.seed_snapshot != 0 => Some(self.seed_source_pb(m.seed_snapshot)?),
            None => None,
        };
        let req = spb::CreateCopyRequest {
            volume_id: v.id,
            size_bytes: v.size_bytes,
            layout: Some(self.layout_pb(&v, &m.to)?),
            source,
        };
        match cl.create_copy(req).await {
            Ok(_) if m.seeding => {
                if let Some(mv) = v.moving.as_mut() {
                    mv.seed_created = true;
                }
                self.save(&v)?;
            }
            Ok(_) => {}
            Err(st) if st.code() == tonic::Code::AlreadyExists => {
                // A seeded target must be the copy we created from the seed
                // (still loading it); anything else there (a stale copy, or
                // ours after a crash once loaded) gets a full copy instead.
                if m.seeding && !m.seed_created {
                    let held = cl
                        .describe_copy(spb::DescribeCopyRequest { volume_id: v.id })
                        .await
                        .map_err(|e| peer_error(&to.server_id, e))?
                        .into_inner()
                        .copy
                        .and_then(|c| c.hydration)
                        .map(|h| h.snapshot_id);
                    if held != Some(m.seed_snapshot) {
                        tracing::info!(volume = v.id, to = %m.to, "the target already holds a copy: full copy instead of seeding");
                        if let Some(mv) = v.moving.as_mut() {
                            mv.seeding = false;
                            mv.seed_snapshot = 0;
                        }
                        self.save(&v)?;
                        return Box::pin(self.advance_move(v, draining)).await;
                    }
                }
                // A resumed step, or a dropped copy rejoining: make it a
                // mirror of the current primary at the current epoch.
                let req = spb::SetLayoutRequest {
                    volume_id: v.id,
                    layout: Some(self.layout_pb(&v, &m.to)?),
                };
                cl.set_layout(req)
                    .await
                    .map_err(|e| peer_error(&to.server_id, e))?;
            }
            Err(st) => return Err(peer_error(&to.server_id, st)),
        }
        if m.seeding {
            // The target loads the seed snapshot from its destination; the
            // primary feeds it once that is done.
            let info = cl
                .describe_copy(spb::DescribeCopyRequest { volume_id: v.id })
                .await
                .map_err(|e| peer_error(&to.server_id, e))?
                .into_inner()
                .copy
                .unwrap_or_default();
            if info.hydration.is_some() {
                return Ok(());
            }
            if let Some(mv) = v.moving.as_mut() {
                mv.seeding = false;
            }
            self.save(&v)?;
            tracing::info!(volume = v.id, to = %m.to, snapshot = m.seed_snapshot, "new copy seeded from the snapshot; the primary sends the blocks written since");
            return Box::pin(self.advance_move(v, draining)).await;
        }
        let primary = self.registry.server(&*self.store, v.primary())?;
        let mut pc = self
            .clients
            .storage(&primary.server_id, &primary.admin_address)
            .await?;
        let info = pc
            .describe_copy(spb::DescribeCopyRequest { volume_id: v.id })
            .await
            .map_err(|e| peer_error(&primary.server_id, e))?
            .into_inner()
            .copy
            .unwrap_or_default();
        let feeding = info
            .layout
            .as_ref()
            .is_some_and(|l| l.syncing.iter().any(|p| p.server_id == m.to));
        if !feeding {
            let req = spb::SetLayoutRequest {
                volume_id: v.id,
                layout: Some(self.layout_pb(&v, v.primary())?),
            };
            pc.set_layout(req)
                .await
                .map_err(|e| peer_error(&primary.server_id, e))?;
            return Ok(());
        }
        if !info.synced.contains(&m.to) {
            return Ok(()); // still copying; the next pass checks again
        }
        // Step 3: cutover, persisted before anyone acts on it.
        let from_primary = v.primary() == m.from;
        let mut copies: Vec<CopyRecord> = v
            .copies
            .iter()
            .filter(|c| c.server_id != m.from)
            .cloned()
            .collect();
        copies.push(CopyRecord {
            server_id: m.to.clone(),
        });
        v.copies = copies;
        v.epoch += 1;
        v.moving = None;
        v.dropped.retain(|d| d.server_id != m.to);
        v.retire = Some(m.from.clone());
        self.save(&v)?;
        tracing::info!(volume = v.id, from = %m.from, to = %m.to, epoch = v.epoch, new_primary = %v.primary(), from_primary, "drain: cutover");
        self.finish_cutover(v, &m.from).await
    }

    pub(crate) fn pick_target(&self, v: &VolumeRecord, from: &str) -> Result<String> {
        let servers = self.registry.servers(&*self.store)?;
        let zone_of = |id: &str| {
            servers
                .iter()
                .find(|s| s.server_id == id)
                .map(|s| s.zone.clone())
                .unwrap_or_default()
        };
        let taken: Vec<String> = v
            .copies
            .iter()
            .filter(|c| c.server_id != from)
            .map(|c| {
                let z = zone_of(&c.server_id);
                if z.is_empty() {
                    c.server_id.clone()
                } else {
                    z
                }
            })
            .collect();
        let cands: Vec<_> = self
            .candidates()?
            .into_iter()
            .filter(|c| c.server_id != from && !v.copies.iter().any(|x| x.server_id == c.server_id))
            .filter(|c| {
                !taken.contains(if c.zone.is_empty() {
                    &c.server_id
                } else {
                    &c.zone
                })
            })
            .collect();
        let p = place(&cands, 1, v.size_bytes.max(v.target_size)).map_err(|e| {
            ControlError::Exhausted(format!("cannot move volume {} off {from}: {e}", v.id))
        })?;
        Ok(p[0].clone())
    }

    /// Step 4: push the new layout, repoint the backend, delete the old copy.
    async fn finish_cutover(&self, mut v: VolumeRecord, from: &str) -> Result<()> {
        self.push_layout(&v).await?;
        self.repoint_backend(&v).await?;
        if !from.is_empty() {
            self.delete_copy_on(v.id, from).await?;
        }
        v.retire = None;
        self.save(&v)?;
        tracing::info!(volume = v.id, %from, "drain: copy moved");
        Ok(())
    }
}
