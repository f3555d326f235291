//! Snapshots: the control service's side. A snapshot is a persisted record
//! driven through CREATING (the point was taken on the primary, which
//! uploads in the background; polled) to COMPLETE or FAILED, and through
//! DELETING (manifest removed, then unreferenced chunks swept) to gone.
//! Every step is idempotent and resumed after a restart (see
//! `docs/snapshots.md`).

use basalt_proto::control as pb;
use basalt_proto::storage_admin as spb;

use crate::clients::peer_error;
use crate::error::{ControlError, Result};
use crate::model::*;
use crate::store::{get_json, list_json, put_json, Op, Table};
use crate::volumes::DEFAULT_TENANT;
use crate::Control;

const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

fn tenant_or_default(t: &str) -> String {
    if t.is_empty() {
        DEFAULT_TENANT.to_owned()
    } else {
        t.to_owned()
    }
}

impl Control {
    pub(crate) fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        Ok(list_json(&*self.store, Table::Snapshots)?)
    }

    pub(crate) fn save_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        self.store
            .apply(vec![put_json(Table::Snapshots, s.key(), s)])?;
        Ok(())
    }

    /// Finds a snapshot by id, or by name within a tenant.
    pub fn find_snapshot(&self, r: &pb::SnapshotRef) -> Result<SnapshotRecord> {
        if r.id != 0 {
            return get_json(&*self.store, Table::Snapshots, &snapshot_key(r.id))?.ok_or_else(
                || ControlError::NotFound(format!("snapshot {} does not exist", r.id)),
            );
        }
        if r.name.is_empty() {
            return Err(ControlError::Invalid(
                "name a snapshot by id or by name".into(),
            ));
        }
        let tenant = tenant_or_default(&r.tenant);
        self.snapshots()?
            .into_iter()
            .find(|s| s.name == r.name && s.tenant == tenant)
            .ok_or_else(|| {
                ControlError::NotFound(format!(
                    "snapshot {:?} does not exist in tenant {tenant:?}",
                    r.name
                ))
            })
    }

    pub async fn create_snapshot(&self, r: pb::CreateSnapshotRequest) -> Result<SnapshotRecord> {
        self.take_snapshot(r, false).await
    }

    /// Takes a snapshot point; `scheduled` marks it as the schedule's (its
    /// retention may delete it).
    pub(crate) async fn take_snapshot(
        &self,
        r: pb::CreateSnapshotRequest,
        scheduled: bool,
    ) -> Result<SnapshotRecord> {
        if !crate::volumes::valid_name(&r.name) {
            return Err(ControlError::Invalid(
                "snapshot name must be 1-63 of [A-Za-z0-9._-]".into(),
            ));
        }
        let _op = self.ops.lock().await;
        let v = self.find(&r.volume.unwrap_or_default())?;
        if v.state != VolumeState::Available {
            return Err(ControlError::Precondition(format!(
                "volume {} is {:?}; snapshot it once it is available",
                v.id, v.state
            )));
        }
        if v.source.as_ref().is_some_and(|s| !s.hydrated) {
            return Err(ControlError::Precondition(format!(
                "volume {} is still loading snapshot {}; snapshot it once hydration completed",
                v.id,
                v.source.as_ref().map_or(0, |s| s.snapshot_id)
            )));
        }
        let all = self.snapshots()?;
        if all.iter().any(|s| s.name == r.name && s.tenant == v.tenant) {
            return Err(ControlError::AlreadyExists(format!(
                "snapshot {:?} already exists in tenant {:?}",
                r.name, v.tenant
            )));
        }
        if let Some(s) = all
            .iter()
            .find(|s| s.volume_id == v.id && s.state == SnapshotState::Creating)
        {
            return Err(ControlError::Precondition(format!(
                "snapshot {} of volume {} is still uploading: one at a time per volume",
                s.id, v.id
            )));
        }
        self.check_quota(
            &v.tenant,
            crate::tenants::Usage {
                snapshots: 1,
                snapshot_bytes: v.size_bytes,
                ..Default::default()
            },
        )?;
        let set = self.next_snapshot_set(&v, &r.destination, &all)?;
        // Incremental to the latest complete snapshot in the same set: its
        // chunks are where this one's unchanged blocks go.
        let parent_id = all
            .iter()
            .filter(|s| {
                s.volume_id == v.id
                    && s.state == SnapshotState::Complete
                    && s.same_set(&set.destinations, set.layout, set.stripe_blocks)
            })
            .map(|s| s.id)
            .max()
            .unwrap_or(0);
        let destinations = self.set_pb(&set.destinations, set.layout, set.stripe_blocks)?;
        // No sweep of these destinations may run while the upload does
        // (locks taken in name order).
        let mut sorted = set.destinations.clone();
        sorted.sort();
        let mut _gc = Vec::new();
        for d in &sorted {
            _gc.push(self.gc_lock(d).lock_owned().await);
        }
        let mut s = SnapshotRecord {
            id: self.store.next_id("snapshot")?,
            name: r.name,
            tenant: v.tenant.clone(),
            volume_id: v.id,
            volume_name: v.name.clone(),
            destination: set.destinations[0].clone(),
            destinations: set.destinations.clone(),
            layout: set.layout.to_owned(),
            stripe_blocks: set.stripe_blocks,
            parent_id,
            state: SnapshotState::Creating,
            failure: String::new(),
            size_bytes: v.size_bytes,
            created_at: now_unix(),
            completed_at: 0,
            primary: v.primary().to_owned(),
            epoch: v.epoch,
            point_taken: false,
            progress: SnapshotProgressRecord::default(),
            scheduled,
            copies: Vec::new(),
            copying: Vec::new(),
            copy_error: String::new(),
        };
        self.save_snapshot(&s)?;
        basalt_failpoint::hit("snapshot.after_persist");
        let req = spb::SnapshotPointRequest {
            volume_id: v.id,
            epoch: v.epoch,
            snapshot_id: s.id,
            destinations: Some(destinations),
            parent_id,
            rate_bytes_per_sec: self.config.snapshot_rate,
        };
        let point = async {
            let server = self.registry.server(&*self.store, &s.primary)?;
            let mut cl = self
                .clients
                .storage(&server.server_id, &server.admin_address)
                .await?;
            cl.snapshot_point(req)
                .await
                .map_err(|e| peer_error(&server.server_id, e))
        }
        .await;
        match point {
            Ok(r) => {
                s.point_taken = true;
                if let Some(j) = r.into_inner().job {
                    s.progress = progress_of(&j);
                }
            }
            Err(e) => {
                // Nothing was frozen: the snapshot never existed.
                self.store
                    .apply(vec![Op::Delete(Table::Snapshots, s.key())])?;
                return Err(e);
            }
        }
        self.save_snapshot(&s)?;
        // Mirrors start change maps too, so the next incremental snapshot
        // survives a failover. Best effort: a mirror without one makes that
        // snapshot compare hashes instead.
        for c in v.copies.iter().skip(1) {
            let Ok(m) = self.registry.server(&*self.store, &c.server_id) else {
                continue;
            };
            if let Ok(mut cl) = self.clients.storage(&m.server_id, &m.admin_address).await {
                let _ = cl
                    .mark_snapshot(spb::MarkSnapshotRequest {
                        volume_id: v.id,
                        snapshot_id: s.id,
                    })
                    .await;
            }
        }
        tracing::info!(snapshot = s.id, volume = v.id, parent = parent_id, destinations = ?s.destinations, layout = %s.layout, "snapshot point taken");
        Ok(s)
    }

    /// Snapshots of `r.tenant` ("" = every tenant's).
    pub fn list_snapshots(&self, r: pb::ListSnapshotsRequest) -> Result<pb::ListSnapshotsResponse> {
        let tenant = r.tenant;
        let volume = match r.volume {
            Some(v) if v.id != 0 || !v.name.is_empty() => Some(self.find(&v)?.id),
            _ => None,
        };
        let after: u64 = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse()
                .map_err(|_| ControlError::Invalid("bad page_token".into()))?
        };
        let size = match r.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        } as usize;
        let mut all: Vec<SnapshotRecord> = self
            .snapshots()?
            .into_iter()
            .filter(|s| {
                (tenant.is_empty() || s.tenant == tenant) && volume.is_none_or(|v| s.volume_id == v)
            })
            .filter(|s| s.id > after)
            .collect();
        all.sort_by_key(|s| s.id);
        let more = all.len() > size;
        all.truncate(size);
        let next_page_token = match (more, all.last()) {
            (true, Some(s)) => s.id.to_string(),
            _ => String::new(),
        };
        Ok(pb::ListSnapshotsResponse {
            snapshots: all.iter().map(snapshot_pb).collect(),
            next_page_token,
        })
    }

    pub async fn delete_snapshot(&self, r: &pb::SnapshotRef) -> Result<()> {
        let _op = self.ops.lock().await;
        let mut s = self.find_snapshot(r)?;
        if s.state == SnapshotState::Creating {
            return Err(ControlError::Precondition(format!(
                "snapshot {} is still uploading; delete it once it completed or failed",
                s.id
            )));
        }
        if let Some(v) = self.volumes()?.iter().find(|v| {
            v.source
                .as_ref()
                .is_some_and(|src| src.snapshot_id == s.id && !src.hydrated)
        }) {
            return Err(ControlError::Precondition(format!(
                "volume {} ({}) still loads its blocks from snapshot {}; delete it once hydration completed",
                v.id, v.name, s.id
            )));
        }
        if let Some(v) = self.volumes()?.iter().find(|v| {
            v.moving
                .as_ref()
                .is_some_and(|m| m.seeding && m.seed_snapshot == s.id)
        }) {
            return Err(ControlError::Precondition(format!(
                "a new copy of volume {} is being seeded from snapshot {}; delete it once that is done",
                v.id, s.id
            )));
        }
        if !s.copying.is_empty() {
            return Err(ControlError::Precondition(format!(
                "snapshot {} is being copied to {:?}; delete it once the copy is done",
                s.id, s.copying
            )));
        }
        if s.state != SnapshotState::Deleting {
            s.state = SnapshotState::Deleting;
            self.save_snapshot(&s)?;
        }
        drop(_op);
        self.finish_delete_snapshot(s).await
    }

    /// Deletes the manifest, then the record, then sweeps the destination.
    /// A crash at any step leaves a DELETING record (resumed) and no
    /// manifest naming a missing chunk: chunks go last, and only those no
    /// manifest names.
    pub(crate) async fn finish_delete_snapshot(&self, s: SnapshotRecord) -> Result<()> {
        basalt_failpoint::hit_async("snapshot.delete.after_mark").await;
        let dests = s.all_dests();
        for name in &dests {
            let dest = self.open_destination(name)?;
            dest.delete_manifest(s.id)
                .await
                .map_err(|e| ControlError::Unavailable(format!("destination {name}: {e}")))?;
        }
        basalt_failpoint::hit_async("snapshot.delete.after_manifest").await;
        // The record goes and the sweeps are owed in one transaction: a
        // crash during a sweep leaves it owed, and the poll loop runs it.
        self.forget_put_blocks(s.id)?;
        let mut ops = vec![Op::Delete(Table::Snapshots, s.key())];
        ops.extend(
            dests
                .iter()
                .map(|d| Op::Put(Table::Sweeps, d.clone(), b"1".to_vec())),
        );
        self.store.apply(ops)?;
        tracing::info!(
            snapshot = s.id,
            "snapshot deleted; sweeping its destinations"
        );
        for d in &dests {
            self.sweep(d).await?;
        }
        Ok(())
    }

    /// Deletes the destination's chunks that no manifest names, unless an
    /// upload to it is in progress (the sweep stays owed, in the `Sweeps`
    /// table, and the poll loop runs it once no upload is).
    pub(crate) async fn sweep(&self, destination: &str) -> Result<()> {
        let _gc = self.gc_lock(destination).lock_owned().await;
        if self.snapshots()?.iter().any(|s| {
            (matches!(s.state, SnapshotState::Creating | SnapshotState::Open)
                && s.dests().iter().any(|d| d == destination))
                || s.copying.iter().any(|d| d == destination)
        }) {
            tracing::info!(destination, "sweep deferred: an upload is in progress");
            return Ok(());
        }
        let dest = self.open_destination(destination)?;
        let stats = dest
            .sweep(&Default::default())
            .await
            .map_err(|e| ControlError::Unavailable(format!("sweeping {destination}: {e}")))?;
        self.store
            .apply(vec![Op::Delete(Table::Sweeps, destination.to_owned())])?;
        tracing::info!(
            destination,
            deleted = stats.chunks_deleted,
            listed = stats.chunks_listed,
            manifests = stats.manifests,
            "sweep done"
        );
        Ok(())
    }

    pub(crate) fn gc_lock(&self, destination: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.gc_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(destination.to_owned())
            .or_default()
            .clone()
    }

    /// The hydration source sent with every CreateCopy of a volume created
    /// from a snapshot.
    pub(crate) fn source_pb(&self, v: &VolumeRecord) -> Result<Option<spb::HydrationSource>> {
        let Some(src) = v.source.as_ref().filter(|s| !s.hydrated) else {
            return Ok(None);
        };
        let snap: SnapshotRecord = get_json(
            &*self.store,
            Table::Snapshots,
            &snapshot_key(src.snapshot_id),
        )?
        .ok_or_else(|| {
            ControlError::NotFound(format!(
                "snapshot {} that volume {} loads from is gone",
                src.snapshot_id, v.id
            ))
        })?;
        Ok(Some(spb::HydrationSource {
            destinations: Some(self.snapshot_set_pb(&snap)?),
            snapshot_id: src.snapshot_id,
            snapshot_size_bytes: src.snapshot_size,
            rate_bytes_per_sec: self.config.hydration_rate,
            seed: false,
        }))
    }

    /// The snapshot a new copy of `v` is seeded from: its latest complete
    /// one (0 = none, or the volume still loads its own source).
    pub(crate) fn seed_for(&self, v: &VolumeRecord) -> Result<u64> {
        if v.source.as_ref().is_some_and(|s| !s.hydrated) {
            return Ok(0);
        }
        Ok(self
            .snapshots()?
            .iter()
            .filter(|s| s.volume_id == v.id && s.state == SnapshotState::Complete)
            .filter(|s| self.snapshot_set_pb(s).is_ok())
            .map(|s| s.id)
            .max()
            .unwrap_or(0))
    }

    /// The source of a copy seeded from snapshot `id`: loaded at once, by
    /// itself, at no rate limit.
    pub(crate) fn seed_source_pb(&self, id: u64) -> Result<spb::HydrationSource> {
        let s: SnapshotRecord = get_json(&*self.store, Table::Snapshots, &snapshot_key(id))?
            .ok_or_else(|| ControlError::NotFound(format!("seed snapshot {id} is gone")))?;
        Ok(spb::HydrationSource {
            destinations: Some(self.snapshot_set_pb(&s)?),
            snapshot_id: s.id,
            snapshot_size_bytes: s.size_bytes,
            rate_bytes_per_sec: 0,
            seed: true,
        })
    }

    /// One pass: progress of uploads and hydrations, resumed deletes.
    pub async fn poll_snapshots(&self) {
        let Ok(snaps) = self.snapshots() else { return };
        for s in snaps {
            match s.state {
                SnapshotState::Creating => {
                    if let Err(e) = self.poll_upload(s).await {
                        tracing::debug!("snapshot poll: {e}");
                    }
                }
                SnapshotState::Deleting => {
                    if let Err(e) = self.finish_delete_snapshot(s).await {
                        tracing::warn!("resuming a snapshot delete: {e}");
                    }
                }
                _ => {}
            }
        }
        let owed = self.store.list(Table::Sweeps).unwrap_or_default();
        for (destination, _) in owed {
            if let Err(e) = self.sweep(&destination).await {
                tracing::warn!(destination, "owed sweep: {e}");
            }
        }
        let Ok(vols) = self.volumes() else { return };
        for v in vols {
            if v.source.as_ref().is_some_and(|s| !s.hydrated) && v.state == VolumeState::Available {
                if let Err(e) = self.poll_hydration(v).await {
                    tracing::debug!("hydration poll: {e}");
                }
            }
        }
    }

    async fn poll_upload(&self, mut s: SnapshotRecord) -> Result<()> {
        if !s.point_taken {
            // CreateSnapshot holds the lock while it takes the point: once
            // we hold it, a record still without the point is one whose
            // create was cut short by a crash.
            let _op = self.ops.lock().await;
            match get_json::<SnapshotRecord>(&*self.store, Table::Snapshots, &s.key())? {
                Some(cur) if !cur.point_taken => {}
                _ => return Ok(()),
            }
        }
        let server = self.registry.server(&*self.store, &s.primary)?;
        let job = async {
            let mut cl = self
                .clients
                .storage(&server.server_id, &server.admin_address)
                .await?;
            cl.describe_snapshot_job(spb::DescribeSnapshotJobRequest {
                volume_id: s.volume_id,
                snapshot_id: s.id,
            })
            .await
            .map(|r| r.into_inner().job)
            .map_err(|e| peer_error(&server.server_id, e))
        }
        .await;
        let failed = |why: String| (SnapshotState::Failed, why);
        let (state, failure) = match job {
            Ok(Some(j)) => {
                s.point_taken = true;
                s.progress = progress_of(&j);
                match j.state.as_str() {
                    "COMPLETE" => (SnapshotState::Complete, String::new()),
                    "FAILED" => failed(j.error),
                    _ => (SnapshotState::Creating, String::new()),
                }
            }
            Ok(None) | Err(ControlError::NotFound(_)) if !s.point_taken => failed(
                "the control service restarted while taking the point; take a new snapshot".into(),
            ),
            Ok(None) | Err(ControlError::NotFound(_)) => failed(format!(
                "storage server {} lost the upload (it restarted, or the copy was deleted): the frozen image is gone; take a new snapshot",
                s.primary
            )),
            Err(e) if !self.registry.is_up(&s.primary) => failed(format!(
                "storage server {} holding the frozen image failed during the upload ({e}); take a new snapshot",
                s.primary
            )),
            Err(e) => return Err(e),
        };
        let _op = self.ops.lock().await;
        // Re-read: a concurrent poll may have finished it.
        let Some(cur) = get_json::<SnapshotRecord>(&*self.store, Table::Snapshots, &s.key())?
        else {
            return Ok(());
        };
        if cur.state != SnapshotState::Creating {
            return Ok(());
        }
        s.state = state;
        s.failure = failure;
        if state != SnapshotState::Creating {
            s.completed_at = now_unix();
            tracing::info!(snapshot = s.id, state = ?s.state, failure = %s.failure, "snapshot finished");
        }
        if s != cur {
            self.save_snapshot(&s)?;
        }
        drop(_op);
        if state != SnapshotState::Creating {
            if let Ok(mut cl) = self
                .clients
                .storage(&server.server_id, &server.admin_address)
                .await
            {
                let _ = cl
                    .forget_snapshot_job(spb::ForgetSnapshotJobRequest {
                        volume_id: s.volume_id,
                        snapshot_id: s.id,
                    })
                    .await;
            }
        }
        Ok(())
    }

    async fn poll_hydration(&self, v: VolumeRecord) -> Result<()> {
        let mut hydrated = true;
        let mut status = None;
        for c in &v.copies {
            let server = self.registry.server(&*self.store, &c.server_id)?;
            let mut cl = self
                .clients
                .storage(&server.server_id, &server.admin_address)
                .await?;
            let info = cl
                .describe_copy(spb::DescribeCopyRequest { volume_id: v.id })
                .await
                .map_err(|e| peer_error(&server.server_id, e))?
                .into_inner()
                .copy
                .unwrap_or_default();
            if let Some(h) = info.hydration {
                hydrated = false;
                if c.server_id == v.primary() {
                    status = Some(h);
                }
            } else if c.server_id == v.primary() {
                // Its final figures (what the last poll may have missed).
                status = info.hydrated;
            }
        }
        let _op = self.ops.lock().await;
        let Some(mut cur) = get_json::<VolumeRecord>(&*self.store, Table::Volumes, &key(v.id))?
        else {
            return Ok(());
        };
        let Some(src) = cur.source.as_mut() else {
            return Ok(());
        };
        let before = src.clone();
        let done = hydrated && cur.copies == v.copies;
        if let Some(h) = status {
            src.blocks_total = h.blocks_total;
            src.blocks_present = h.blocks_present;
            src.bytes_fetched = h.bytes_fetched;
            src.error = h.error;
            src.fallbacks = h.fallbacks;
            src.hedges = h.hedges;
            src.reads = h
                .sources
                .into_iter()
                .map(|m| DestinationReadsRecord {
                    destination: m.name,
                    latency_micros: m.latency_micros,
                    reads: m.gets_ok,
                    errors: m.errors,
                    corrupt: m.corrupt,
                    repaired: m.repaired,
                    served: m.served,
                })
                .collect();
        }
        if done {
            src.hydrated = true;
            src.blocks_present = src.blocks_total;
            src.error.clear();
            tracing::info!(
                volume = v.id,
                snapshot = src.snapshot_id,
                "volume hydrated on every copy"
            );
        }
        if *src != before {
            self.save(&cur)?;
        }
        Ok(())
    }
}

fn progress_of(j: &spb::SnapshotJob) -> SnapshotProgressRecord {
    SnapshotProgressRecord {
        blocks_total: j.blocks_total,
        blocks_done: j.blocks_done,
        bytes_read: j.bytes_read,
        bytes_uploaded: j.bytes_uploaded,
        chunks_new: j.chunks_new,
        chunks_reused: j.chunks_reused,
        data_bytes: j.data_bytes,
        change_source: j.change_source.clone(),
        cow_blocks: j.cow_blocks,
        point_micros: j.point_micros,
    }
}

pub fn snapshot_pb(s: &SnapshotRecord) -> pb::Snapshot {
    let p = &s.progress;
    pb::Snapshot {
        id: s.id,
        name: s.name.clone(),
        tenant: s.tenant.clone(),
        volume_id: s.volume_id,
        volume_name: s.volume_name.clone(),
        state: match s.state {
            SnapshotState::Creating => "CREATING",
            SnapshotState::Complete => "COMPLETE",
            SnapshotState::Failed => "FAILED",
            SnapshotState::Deleting => "DELETING",
            SnapshotState::Open => "OPEN",
        }
        .into(),
        failure: s.failure.clone(),
        destination: s.destination.clone(),
        destinations: s.dests(),
        layout: s.layout().to_owned(),
        scheduled: s.scheduled,
        copies: s.copies.clone(),
        copying: s.copying.clone(),
        copy_error: s.copy_error.clone(),
        parent_id: s.parent_id,
        size_bytes: s.size_bytes,
        created_at: s.created_at,
        completed_at: s.completed_at,
        progress: Some(pb::SnapshotProgress {
            blocks_total: p.blocks_total,
            blocks_done: p.blocks_done,
            bytes_read: p.bytes_read,
            bytes_uploaded: p.bytes_uploaded,
            chunks_new: p.chunks_new,
            chunks_reused: p.chunks_reused,
            data_bytes: p.data_bytes,
            change_source: p.change_source.clone(),
            cow_blocks: p.cow_blocks,
            point_micros: p.point_micros,
        }),
    }
}
