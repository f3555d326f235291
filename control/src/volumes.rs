//! Volume operations. Each one persists its intent (a transitional state)
//! before touching any server or node, then performs idempotent steps, then
//! persists the result; `reconcile` resumes an operation interrupted by a
//! crash. Layout-changing operations are serialised by one async lock:
//! they are rare and short, and serialising them keeps reasoning simple.

use basalt_proto::control as pb;
use basalt_proto::node as npb;
use basalt_proto::storage_admin as spb;

use crate::clients::peer_error;
use crate::error::{ControlError, Result};
use crate::model::*;
use crate::placement::{place, Candidate};
use crate::store::{get_json, list_json, put_json, Op, Table};
use crate::Control;

pub const MIN_VOLUME: u64 = 1 << 20;
pub const MAX_VOLUME: u64 = 64 << 40;
pub const MAX_COPIES: u32 = 5;
pub const DEFAULT_TENANT: &str = "default";
const BACKEND_QUEUES: u32 = 2;

pub(crate) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn check_size(size: u64) -> Result<()> {
    if !(MIN_VOLUME..=MAX_VOLUME).contains(&size) || !size.is_multiple_of(4096) {
        return Err(ControlError::Invalid(format!(
            "size must be a multiple of 4 KiB between 1 MiB and 64 TiB, got {size} bytes"
        )));
    }
    Ok(())
}

impl Control {
    pub(crate) fn save(&self, v: &VolumeRecord) -> Result<()> {
        self.store
            .apply(vec![put_json(Table::Volumes, v.key(), v)])?;
        Ok(())
    }

    pub(crate) fn volumes(&self) -> Result<Vec<VolumeRecord>> {
        Ok(list_json(&*self.store, Table::Volumes)?)
    }

    /// Finds a volume by id, or by name within a tenant.
    pub fn find(&self, r: &pb::VolumeRef) -> Result<VolumeRecord> {
        if r.id != 0 {
            return get_json(&*self.store, Table::Volumes, &key(r.id))?
                .ok_or_else(|| ControlError::NotFound(format!("volume {} does not exist", r.id)));
        }
        if r.name.is_empty() {
            return Err(ControlError::Invalid(
                "name a volume by id or by name".into(),
            ));
        }
        let tenant = if r.tenant.is_empty() {
            DEFAULT_TENANT
        } else {
            &r.tenant
        };
        self.volumes()?
            .into_iter()
            .find(|v| v.name == r.name && v.tenant == tenant)
            .ok_or_else(|| {
                ControlError::NotFound(format!(
                    "volume {:?} does not exist in tenant {tenant:?}",
                    r.name
                ))
            })
    }

    pub(crate) fn candidates(&self) -> Result<Vec<Candidate>> {
        let vols = self.volumes()?;
        Ok(self
            .registry
            .servers(&*self.store)?
            .into_iter()
            .filter(|s| !s.draining && self.registry.is_up(&s.server_id))
            .map(|s| {
                let mine = vols
                    .iter()
                    .filter(|v| v.copies.iter().any(|c| c.server_id == s.server_id));
                Candidate {
                    allocated_bytes: mine.clone().map(|v| v.size_bytes.max(v.target_size)).sum(),
                    copies: mine.count() as u32,
                    server_id: s.server_id,
                    zone: s.zone,
                    capacity_bytes: s.capacity_bytes,
                }
            })
            .collect())
    }

    pub async fn create_volume(&self, mut r: pb::CreateVolumeRequest) -> Result<VolumeRecord> {
        let tenant = if r.tenant.is_empty() {
            DEFAULT_TENANT.to_owned()
        } else {
            r.tenant
        };
        if !valid_name(&r.name) || !valid_name(&tenant) {
            return Err(ControlError::Invalid(
                "name and tenant must be 1-63 of [A-Za-z0-9._-]".into(),
            ));
        }
        let source = match r.from_snapshot.as_ref() {
            Some(sr) if sr.id != 0 || !sr.name.is_empty() => {
                let mut sr = sr.clone();
                if sr.tenant.is_empty() {
                    sr.tenant = tenant.clone();
                }
                let snap = self.find_snapshot(&sr)?;
                if snap.state != SnapshotState::Complete {
                    return Err(ControlError::Precondition(format!(
                        "snapshot {} is {:?}: only a complete snapshot can be restored",
                        snap.id, snap.state
                    )));
                }
                if r.size_bytes == 0 {
                    r.size_bytes = snap.size_bytes;
                }
                if r.size_bytes < snap.size_bytes {
                    return Err(ControlError::Invalid(format!(
                        "size {} is smaller than snapshot {}'s size {}: a volume from a snapshot may only be as large or larger",
                        r.size_bytes, snap.id, snap.size_bytes
                    )));
                }
                Some(SourceRecord {
                    snapshot_id: snap.id,
                    destination: snap.destination.clone(),
                    snapshot_size: snap.size_bytes,
                    blocks_total: snap.size_bytes.div_ceil(basalt_snapshot::BLOCK_SIZE),
                    ..Default::default()
                })
            }
            _ => None,
        };
        check_size(r.size_bytes)?;
        let backup = match r.backup_policy.as_ref() {
            Some(p) if !p.destinations.is_empty() => Some(self.check_policy(&tenant, p)?),
            _ => None,
        };
        let copies = if r.copies == 0 { 2 } else { r.copies };
        if copies > MAX_COPIES {
            return Err(ControlError::Invalid(format!(
                "copies must be 1..={MAX_COPIES}, got {copies}"
            )));
        }
        let _op = self.ops.lock().await;
        if self
            .volumes()?
            .iter()
            .any(|v| v.name == r.name && v.tenant == tenant)
        {
            return Err(ControlError::AlreadyExists(format!(
                "volume {:?} already exists in tenant {tenant:?}",
                r.name
            )));
        }
        self.check_quota(
            &tenant,
            crate::tenants::Usage {
                volumes: 1,
                volume_bytes: r.size_bytes,
                ..Default::default()
            },
        )?;
        let servers = place(&self.candidates()?, copies as usize, r.size_bytes)
            .map_err(ControlError::Exhausted)?;
        let v = VolumeRecord {
            id: self.store.next_id("volume")?,
            name: r.name,
            tenant,
            size_bytes: r.size_bytes,
            target_size: 0,
            state: VolumeState::Creating,
            copies: servers
                .into_iter()
                .map(|server_id| CopyRecord { server_id })
                .collect(),
            epoch: 1,
            attachment: None,
            created_at: now_unix(),
            moving: None,
            retire: None,
            replicas: copies,
            layout_pending: false,
            dropped: vec![],
            attach_gen: 0,
            source,
            backup,
            schedule: None,
        };
        self.save(&v)?;
        tracing::info!(volume = v.id, name = %v.name, size = v.size_bytes, copies = ?v.copies, "creating volume");
        self.finish_create(v).await
    }

    pub(crate) async fn finish_create(&self, mut v: VolumeRecord) -> Result<VolumeRecord> {
        match self.create_copies(&v).await {
            Ok(()) => {
                v.state = VolumeState::Available;
                self.save(&v)?;
                tracing::info!(volume = v.id, "volume available");
                Ok(v)
            }
            Err(e) if matches!(e, ControlError::Unavailable(_)) => {
                // Roll back: nothing was acknowledged to the user.
                tracing::warn!(volume = v.id, "create failed, rolling back: {e}");
                v.state = VolumeState::Deleting;
                self.save(&v)?;
                let _ = self.finish_delete(v).await;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn peer(&self, server_id: &str) -> Result<spb::Peer> {
        let s = self.registry.server(&*self.store, server_id)?;
        Ok(spb::Peer {
            server_id: s.server_id,
            address: s.data_address,
            delta: false,
            seed_snapshot: 0,
        })
    }

    pub(crate) fn layout_pb(&self, v: &VolumeRecord, server_id: &str) -> Result<spb::CopyLayout> {
        if server_id == v.primary() {
            let mirrors = v.copies[1..]
                .iter()
                .map(|c| self.peer(&c.server_id))
                .collect::<Result<Vec<_>>>()?;
            // A target still loading its seed snapshot is not fed yet.
            let syncing = match &v.moving {
                Some(m) if !m.seeding => vec![spb::Peer {
                    delta: m.delta,
                    seed_snapshot: m.seed_snapshot,
                    ..self.peer(&m.to)?
                }],
                _ => vec![],
            };
            Ok(spb::CopyLayout {
                role: spb::CopyRole::Primary as i32,
                epoch: v.epoch,
                mirrors,
                primary_server_id: String::new(),
                syncing,
                attachment: v.attach_gen,
            })
        } else {
            Ok(spb::CopyLayout {
                role: spb::CopyRole::Mirror as i32,
                epoch: v.epoch,
                mirrors: vec![],
                primary_server_id: v.primary().to_owned(),
                syncing: vec![],
                attachment: v.attach_gen,
            })
        }
    }

    async fn create_copies(&self, v: &VolumeRecord) -> Result<()> {
        // Mirrors first, so the primary's links find them.
        for c in v.copies.iter().skip(1).chain(v.copies.first()) {
            let s = self.registry.server(&*self.store, &c.server_id)?;
            let mut cl = self.clients.storage(&s.server_id, &s.admin_address).await?;
            let req = spb::CreateCopyRequest {
                volume_id: v.id,
                size_bytes: v.size_bytes,
                layout: Some(self.layout_pb(v, &c.server_id)?),
                source: self.source_pb(v)?,
            };
            match cl.create_copy(req).await {
                Ok(_) => {}
                Err(st) if st.code() == tonic::Code::AlreadyExists => {
                    // A resumed create: accept the copy if it is the one we asked for.
                    let d = cl
                        .describe_copy(spb::DescribeCopyRequest { volume_id: v.id })
                        .await
                        .map_err(|e| peer_error(&s.server_id, e))?;
                    if d.into_inner().copy.map(|c| c.size_bytes) != Some(v.size_bytes) {
                        return Err(ControlError::Precondition(format!(
                            "server {} already holds a different copy of volume {}",
                            s.server_id, v.id
                        )));
                    }
                }
                Err(st) => return Err(peer_error(&s.server_id, st)),
            }
        }
        Ok(())
    }

    pub async fn delete_volume(&self, r: &pb::VolumeRef) -> Result<()> {
        let _op = self.ops.lock().await;
        let mut v = self.find(r)?;
        if let Some(a) = &v.attachment {
            return Err(ControlError::Precondition(format!(
                "volume {} is attached to node {}; detach it first",
                v.id, a.node_id
            )));
        }
        if v.state != VolumeState::Deleting {
            v.state = VolumeState::Deleting;
            self.save(&v)?;
        }
        self.finish_delete(v).await
    }

    /// Deletes a volume's copy on one server; an unknown server or an
    /// absent copy counts as done.
    pub(crate) async fn delete_copy_on(&self, volume_id: u64, server_id: &str) -> Result<()> {
        let s = match self.registry.server(&*self.store, server_id) {
            Ok(s) => s,
            Err(ControlError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut cl = self
            .clients
            .storage(&s.server_id, &s.admin_address)
            .await
            .map_err(|e| {
                ControlError::Unavailable(format!("{e}; the delete finishes when it is back"))
            })?;
        match cl.delete_copy(spb::DeleteCopyRequest { volume_id }).await {
            Ok(_) => Ok(()),
            Err(st) if st.code() == tonic::Code::NotFound => Ok(()),
            Err(st) => Err(peer_error(&s.server_id, st)),
        }
    }

    pub(crate) async fn finish_delete(&self, v: VolumeRecord) -> Result<()> {
        for s in v
            .copies
            .iter()
            .map(|c| &c.server_id)
            .chain(v.dropped.iter().map(|d| &d.server_id))
            .chain(v.moving.iter().map(|m| &m.to))
        {
            self.delete_copy_on(v.id, s).await?;
        }
        self.store
            .apply(vec![Op::Delete(Table::Volumes, v.key())])?;
        tracing::info!(volume = v.id, "volume deleted");
        Ok(())
    }

    pub async fn attach(&self, r: pb::AttachVolumeRequest) -> Result<VolumeRecord> {
        let vref = r.volume.unwrap_or_default();
        let _op = self.ops.lock().await;
        let mut v = self.find(&vref)?;
        let node = self.registry.node(&*self.store, &r.node_id)?;
        if !self.registry.is_up(&node.node_id) {
            return Err(ControlError::Unavailable(format!(
                "node {} is down (no recent heartbeat)",
                node.node_id
            )));
        }
        if v.state != VolumeState::Available {
            return Err(ControlError::Precondition(format!(
                "volume {} is {:?}; wait for it to be available",
                v.id, v.state
            )));
        }
        if let Some(a) = &v.attachment {
            if a.node_id == r.node_id
                && a.read_only == r.read_only
                && a.state == AttachState::Attached
            {
                return Ok(v);
            }
            if !r.force {
                return Err(ControlError::Precondition(format!(
                    "volume {} is attached to node {}; detach it first, or attach with force to fence that attachment",
                    v.id, a.node_id
                )));
            }
            // Fence: a new epoch and attachment generation, persisted first,
            // then pushed to every copy, so the old backend's requests are
            // refused from now on, whatever layout it learns later.
            let old_node = a.node_id.clone();
            v.epoch += 1;
            v.attach_gen += 1;
            v.attachment = None;
            // The fenced backend may have held writes only an old primary
            // saw: such a copy may not rejoin by delta.
            for d in v.dropped.iter_mut().filter(|d| d.was_primary) {
                d.delta_ok = false;
            }
            self.save(&v)?;
            self.push_layout(&v).await?;
            tracing::warn!(
                volume = v.id,
                epoch = v.epoch,
                "forced attach: old attachment fenced"
            );
            // The old host may be gone; its backend is fenced either way.
            if let Err(e) = self.detach_from_node(v.id, &old_node).await {
                tracing::warn!(volume = v.id, node = %old_node, "could not stop the fenced backend: {e}");
            }
        }
        v.attach_gen += 1;
        v.attachment = Some(AttachmentRecord {
            node_id: r.node_id,
            read_only: r.read_only,
            state: AttachState::Attaching,
            socket_path: String::new(),
            qemu_args: vec![],
            cloud_hypervisor_args: vec![],
            generation: v.attach_gen,
        });
        self.save(&v)?;
        self.finish_attach(v).await
    }

    /// Pushes the persisted layout to every copy: mirrors first, then the
    /// primary. A copy takes a new epoch only from a layout (never from a
    /// data request), so a mirror must hold the new epoch before the
    /// primary forwards writes carrying it.
    pub(crate) async fn push_layout(&self, v: &VolumeRecord) -> Result<()> {
        for c in v.copies.iter().skip(1).chain(v.copies.first()) {
            let s = self.registry.server(&*self.store, &c.server_id)?;
            let mut cl = self.clients.storage(&s.server_id, &s.admin_address).await?;
            let req = spb::SetLayoutRequest {
                volume_id: v.id,
                layout: Some(self.layout_pb(v, &c.server_id)?),
            };
            cl.set_layout(req)
                .await
                .map_err(|e| peer_error(&s.server_id, e))?;
        }
        Ok(())
    }

    pub(crate) async fn finish_attach(&self, mut v: VolumeRecord) -> Result<VolumeRecord> {
        let Some(a) = v.attachment.clone() else {
            return Ok(v);
        };
        let result = async {
            // Every copy learns the new attachment before its backend exists.
            self.push_layout(&v).await?;
            let node = self.registry.node(&*self.store, &a.node_id)?;
            let primary = self.registry.server(&*self.store, v.primary())?;
            let mut cl = self.clients.node(&node.node_id, &node.address).await?;
            let req = npb::AttachRequest {
                volume_id: v.id,
                size_bytes: v.size_bytes,
                primary_address: primary.data_address,
                epoch: v.epoch,
                read_only: a.read_only,
                queues: BACKEND_QUEUES,
                attachment: a.generation,
                grant: self.sign_grant(&v, &a)?,
            };
            cl.attach(req)
                .await
                .map(|r| r.into_inner())
                .map_err(|e| peer_error(&format!("node {}", node.node_id), e))
        }
        .await;
        match result {
            Ok(resp) => {
                v.attachment = Some(AttachmentRecord {
                    state: AttachState::Attached,
                    socket_path: resp.socket_path,
                    qemu_args: resp.qemu_args,
                    cloud_hypervisor_args: resp.cloud_hypervisor_args,
                    ..a
                });
                self.save(&v)?;
                tracing::info!(volume = v.id, node = %v.attachment.as_ref().map(|a| a.node_id.as_str()).unwrap_or(""), "attached");
                Ok(v)
            }
            Err(e) => {
                v.attachment = None;
                self.save(&v)?;
                Err(e)
            }
        }
    }

    pub async fn detach(&self, r: &pb::VolumeRef) -> Result<VolumeRecord> {
        let _op = self.ops.lock().await;
        let mut v = self.find(r)?;
        let Some(a) = v.attachment.as_mut() else {
            return Ok(v);
        };
        a.state = AttachState::Detaching;
        self.save(&v)?;
        self.finish_detach(v).await
    }

    async fn detach_from_node(&self, volume_id: u64, node_id: &str) -> Result<()> {
        let node = self.registry.node(&*self.store, node_id)?;
        let mut cl = self
            .clients
            .node(&node.node_id, &node.address)
            .await
            .map_err(|e| {
                ControlError::Unavailable(format!(
                    "{e}; the detach finishes when it is back (or attach elsewhere with force)"
                ))
            })?;
        match cl.detach(npb::DetachRequest { volume_id }).await {
            Ok(_) => Ok(()),
            Err(st) if st.code() == tonic::Code::NotFound => Ok(()),
            Err(st) => Err(peer_error(&format!("node {}", node.node_id), st)),
        }
    }

    pub(crate) async fn finish_detach(&self, mut v: VolumeRecord) -> Result<VolumeRecord> {
        let Some(a) = v.attachment.clone() else {
            return Ok(v);
        };
        self.detach_from_node(v.id, &a.node_id).await?;
        // The detached attachment is superseded: its backend (if it somehow
        // survived) is refused by every copy once the layout is pushed.
        v.attachment = None;
        v.attach_gen += 1;
        v.layout_pending = true;
        self.save(&v)?;
        tracing::info!(volume = v.id, "detached");
        match self.push_pending(v.clone()).await {
            Ok(v) => Ok(v),
            Err(e) => {
                tracing::warn!(
                    volume = v.id,
                    "detach: layout not pushed yet, retried in the background: {e}"
                );
                Ok(v)
            }
        }
    }

    pub async fn resize(&self, r: pb::ResizeVolumeRequest) -> Result<VolumeRecord> {
        let _op = self.ops.lock().await;
        let mut v = self.find(&r.volume.unwrap_or_default())?;
        check_size(r.new_size_bytes)?;
        if r.new_size_bytes < v.size_bytes {
            return Err(ControlError::Precondition(format!(
                "volume {} is {} bytes; shrinking to {} is not supported (volumes only grow)",
                v.id, v.size_bytes, r.new_size_bytes
            )));
        }
        if r.new_size_bytes == v.size_bytes {
            return Ok(v);
        }
        if v.state != VolumeState::Available {
            return Err(ControlError::Precondition(format!(
                "volume {} is {:?}; wait for it to be available",
                v.id, v.state
            )));
        }
        if let Some(a) = &v.attachment {
            if a.state != AttachState::Attached {
                return Err(ControlError::Precondition(format!(
                    "volume {} is being attached or detached; retry",
                    v.id
                )));
            }
        }
        self.check_quota(
            &v.tenant,
            crate::tenants::Usage {
                volume_bytes: r.new_size_bytes - v.size_bytes,
                ..Default::default()
            },
        )?;
        v.state = VolumeState::Resizing;
        v.target_size = r.new_size_bytes;
        self.save(&v)?;
        self.finish_resize(v).await
    }

    pub(crate) async fn finish_resize(&self, mut v: VolumeRecord) -> Result<VolumeRecord> {
        for c in &v.copies {
            let s = self.registry.server(&*self.store, &c.server_id)?;
            let mut cl = self.clients.storage(&s.server_id, &s.admin_address).await?;
            cl.resize_copy(spb::ResizeCopyRequest {
                volume_id: v.id,
                new_size_bytes: v.target_size,
            })
            .await
            .map_err(|e| peer_error(&s.server_id, e))?;
        }
        if let Some(a) = v.attachment.clone() {
            let node = self.registry.node(&*self.store, &a.node_id)?;
            let mut cl = self.clients.node(&node.node_id, &node.address).await?;
            cl.resize(npb::ResizeRequest {
                volume_id: v.id,
                size_bytes: v.target_size,
            })
            .await
            .map_err(|e| peer_error(&format!("node {}", node.node_id), e))?;
        }
        v.size_bytes = v.target_size;
        v.target_size = 0;
        v.state = VolumeState::Available;
        self.save(&v)?;
        tracing::info!(volume = v.id, size = v.size_bytes, "resized");
        Ok(v)
    }
}
