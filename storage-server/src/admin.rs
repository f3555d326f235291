//! Admin gRPC service (`basalt.storage.v1.StorageAdmin`): a thin layer over
//! [`Store`]; all error mapping is in `error_map`.

use std::sync::Arc;

use basalt_proto::storage_admin as pb;
use basalt_proto::storage_admin::storage_admin_server::StorageAdmin;
use tonic::{Request, Response, Status};

use crate::copy::Copy;
use crate::error_map::grpc_status;
use crate::meta::{PeerMeta, Role};
use crate::snap::dests::SetSpec;
use crate::snap::hydrate::Source;
use crate::snap::SnapError;
use crate::store::{Layout, Store};

pub struct AdminService {
    pub store: Arc<Store>,
    pub data_address: String,
    pub data_dir: std::path::PathBuf,
}

fn peer_from_pb(p: pb::Peer) -> PeerMeta {
    PeerMeta {
        server_id: p.server_id,
        address: p.address,
        delta: p.delta,
        seed_snapshot: p.seed_snapshot,
    }
}

fn peer_to_pb(p: PeerMeta) -> pb::Peer {
    pb::Peer {
        server_id: p.server_id,
        address: p.address,
        delta: p.delta,
        seed_snapshot: p.seed_snapshot,
    }
}

fn layout_from_pb(l: Option<pb::CopyLayout>) -> Result<Layout, Status> {
    let l = l.ok_or_else(|| Status::invalid_argument("layout is required"))?;
    let role = match pb::CopyRole::try_from(l.role) {
        Ok(pb::CopyRole::Primary) => Role::Primary,
        Ok(pb::CopyRole::Mirror) => Role::Mirror,
        _ => {
            return Err(Status::invalid_argument(
                "layout.role must be PRIMARY or MIRROR",
            ))
        }
    };
    Ok(Layout {
        role,
        epoch: l.epoch,
        mirrors: l.mirrors.into_iter().map(peer_from_pb).collect(),
        primary_server_id: l.primary_server_id,
        syncing: l.syncing.into_iter().map(peer_from_pb).collect(),
        attachment: l.attachment,
    })
}

fn info(c: &Copy) -> pb::CopyInfo {
    let m = c.meta();
    pb::CopyInfo {
        volume_id: m.volume_id,
        size_bytes: m.size_bytes,
        allocated_bytes: c.allocated_bytes(),
        layout: Some(pb::CopyLayout {
            role: match m.role {
                Role::Primary => pb::CopyRole::Primary,
                Role::Mirror => pb::CopyRole::Mirror,
            } as i32,
            epoch: m.epoch,
            mirrors: m.mirrors.into_iter().map(peer_to_pb).collect(),
            primary_server_id: m.primary_server_id,
            syncing: m.syncing.into_iter().map(peer_to_pb).collect(),
            attachment: m.attachment,
        }),
        synced: {
            let mut v: Vec<String> = c
                .synced
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            v.sort();
            v
        },
        resync_bytes: c.resync_bytes.load(std::sync::atomic::Ordering::Relaxed),
        delta_resync_bytes: c
            .delta_resync_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        tracking: c.dirty.tracking(),
        hydration: c.hydration().map(|h| hydration_pb(&h)),
        hydrated: c.finished_hydration().map(|h| pb::HydrationStatus {
            complete: true,
            blocks_present: h.presence.total(),
            ..hydration_pb(&h)
        }),
        snapshots: c.snap.jobs().iter().map(|j| j.to_pb()).collect(),
    }
}

fn source_from_pb(s: pb::HydrationSource) -> Result<Source, Status> {
    if s.snapshot_id == 0 {
        return Err(Status::invalid_argument("source.snapshot_id is required"));
    }
    let set = SetSpec::from_pb(s.destinations)
        .map_err(|e| Status::invalid_argument(format!("source: {e}")))?;
    Ok(Source::new(
        s.snapshot_id,
        s.snapshot_size_bytes,
        s.rate_bytes_per_sec,
        set,
        s.seed,
    ))
}

fn hydration_pb(h: &crate::snap::hydrate::Hydration) -> pb::HydrationStatus {
    let stats = h.stats().unwrap_or_default();
    pb::HydrationStatus {
        snapshot_id: h.source.snapshot_id,
        blocks_total: h.presence.total(),
        blocks_present: h.presence.present(),
        bytes_fetched: h.bytes_fetched.load(std::sync::atomic::Ordering::Relaxed),
        complete: false,
        error: h.error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        sources: stats
            .members
            .iter()
            .map(|m| pb::DestinationStats {
                name: m.name.clone(),
                latency_micros: m.latency_ewma_micros,
                gets_ok: m.gets_ok,
                errors: m.errors,
                corrupt: m.corrupt,
                repaired: m.repaired,
                served: m.served,
            })
            .collect(),
        fallbacks: stats.fallbacks,
        hedges: stats.hedges,
    }
}

fn snap_status(e: SnapError) -> Status {
    let msg = e.to_string();
    match e {
        SnapError::NotFound(_) | SnapError::NoJob(_) => Status::not_found(msg),
        SnapError::Exists(_) => Status::already_exists(msg),
        SnapError::Destination(_) => Status::invalid_argument(msg),
        SnapError::NotPrimary
        | SnapError::Epoch { .. }
        | SnapError::Busy(_)
        | SnapError::Hydrating => Status::failed_precondition(msg),
        SnapError::Io(_) => Status::internal(msg),
    }
}

pub(crate) fn disk_space(path: &std::path::Path) -> (u64, u64) {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return (0, 0);
    };
    // SAFETY: statvfs fills the zeroed struct we pass; the path is a valid C string.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return (0, 0);
        }
        (
            s.f_blocks as u64 * s.f_frsize as u64,
            s.f_bavail as u64 * s.f_frsize as u64,
        )
    }
}

#[tonic::async_trait]
impl StorageAdmin for AdminService {
    async fn server_info(
        &self,
        _: Request<pb::ServerInfoRequest>,
    ) -> Result<Response<pb::ServerInfoResponse>, Status> {
        let (capacity_bytes, free_bytes) = disk_space(&self.data_dir);
        Ok(Response::new(pb::ServerInfoResponse {
            server_id: self.store.local_id().to_owned(),
            data_address: self.data_address.clone(),
            capacity_bytes,
            free_bytes,
            wire_version: u32::from(basalt_proto::wire::VERSION),
        }))
    }

    async fn create_copy(
        &self,
        r: Request<pb::CreateCopyRequest>,
    ) -> Result<Response<pb::CreateCopyResponse>, Status> {
        let r = r.into_inner();
        let layout = layout_from_pb(r.layout)?;
        let source = r.source.map(source_from_pb).transpose()?;
        let c = self
            .store
            .create_from(r.volume_id, r.size_bytes, layout, source)
            .map_err(grpc_status)?;
        tracing::info!(volume = r.volume_id, size = r.size_bytes, "created copy");
        Ok(Response::new(pb::CreateCopyResponse {
            copy: Some(info(&c)),
        }))
    }

    async fn delete_copy(
        &self,
        r: Request<pb::DeleteCopyRequest>,
    ) -> Result<Response<pb::DeleteCopyResponse>, Status> {
        let id = r.into_inner().volume_id;
        self.store.delete(id).map_err(grpc_status)?;
        tracing::info!(volume = id, "deleted copy");
        Ok(Response::new(pb::DeleteCopyResponse {}))
    }

    async fn describe_copy(
        &self,
        r: Request<pb::DescribeCopyRequest>,
    ) -> Result<Response<pb::DescribeCopyResponse>, Status> {
        let id = r.into_inner().volume_id;
        let c = self
            .store
            .get(id)
            .ok_or_else(|| grpc_status(crate::store::StoreError::NotFound(id)))?;
        Ok(Response::new(pb::DescribeCopyResponse {
            copy: Some(info(&c)),
        }))
    }

    async fn list_copies(
        &self,
        _: Request<pb::ListCopiesRequest>,
    ) -> Result<Response<pb::ListCopiesResponse>, Status> {
        let copies = self.store.list().iter().map(|c| info(c)).collect();
        Ok(Response::new(pb::ListCopiesResponse { copies }))
    }

    async fn set_layout(
        &self,
        r: Request<pb::SetLayoutRequest>,
    ) -> Result<Response<pb::SetLayoutResponse>, Status> {
        let r = r.into_inner();
        let layout = layout_from_pb(r.layout)?;
        let c = self
            .store
            .set_layout(r.volume_id, layout)
            .map_err(grpc_status)?;
        tracing::info!(volume = r.volume_id, epoch = c.epoch(), "layout changed");
        Ok(Response::new(pb::SetLayoutResponse {
            copy: Some(info(&c)),
        }))
    }

    async fn resize_copy(
        &self,
        r: Request<pb::ResizeCopyRequest>,
    ) -> Result<Response<pb::ResizeCopyResponse>, Status> {
        let r = r.into_inner();
        let c = self
            .store
            .resize(r.volume_id, r.new_size_bytes)
            .map_err(grpc_status)?;
        tracing::info!(
            volume = r.volume_id,
            size = r.new_size_bytes,
            "resized copy"
        );
        Ok(Response::new(pb::ResizeCopyResponse {
            copy: Some(info(&c)),
        }))
    }

    async fn read_block(
        &self,
        r: Request<pb::ReadBlockRequest>,
    ) -> Result<Response<pb::ReadBlockResponse>, Status> {
        let r = r.into_inner();
        let c = self
            .store
            .get(r.volume_id)
            .ok_or_else(|| snap_status(SnapError::NotFound(r.volume_id)))?;
        let data = crate::snap::blocks::read(&c, r.offset, r.length as usize)
            .await
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::ReadBlockResponse { data }))
    }

    async fn write_block(
        &self,
        r: Request<pb::WriteBlockRequest>,
    ) -> Result<Response<pb::WriteBlockResponse>, Status> {
        let r = r.into_inner();
        let c = self
            .store
            .get(r.volume_id)
            .ok_or_else(|| snap_status(SnapError::NotFound(r.volume_id)))?;
        crate::snap::blocks::write(&c, r.epoch, r.offset, r.data)
            .await
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::WriteBlockResponse {}))
    }

    async fn snapshot_point(
        &self,
        r: Request<pb::SnapshotPointRequest>,
    ) -> Result<Response<pb::SnapshotPointResponse>, Status> {
        let r = r.into_inner();
        if r.snapshot_id == 0 {
            return Err(Status::invalid_argument("snapshot_id is required"));
        }
        let destinations = SetSpec::from_pb(r.destinations).map_err(Status::invalid_argument)?;
        let c = self
            .store
            .get(r.volume_id)
            .ok_or_else(|| snap_status(SnapError::NotFound(r.volume_id)))?;
        let job = crate::snap::point(
            &c,
            crate::snap::PointRequest {
                snapshot_id: r.snapshot_id,
                epoch: r.epoch,
                parent_id: r.parent_id,
                destinations,
                rate_bytes_per_sec: r.rate_bytes_per_sec,
            },
        )
        .map_err(snap_status)?;
        Ok(Response::new(pb::SnapshotPointResponse {
            job: Some(job.to_pb()),
        }))
    }

    async fn describe_snapshot_job(
        &self,
        r: Request<pb::DescribeSnapshotJobRequest>,
    ) -> Result<Response<pb::DescribeSnapshotJobResponse>, Status> {
        let r = r.into_inner();
        let c = self
            .store
            .get(r.volume_id)
            .ok_or_else(|| snap_status(SnapError::NotFound(r.volume_id)))?;
        let job = c
            .snap
            .job(r.snapshot_id)
            .ok_or_else(|| snap_status(SnapError::NoJob(r.snapshot_id)))?;
        Ok(Response::new(pb::DescribeSnapshotJobResponse {
            job: Some(job.to_pb()),
        }))
    }

    async fn forget_snapshot_job(
        &self,
        r: Request<pb::ForgetSnapshotJobRequest>,
    ) -> Result<Response<pb::ForgetSnapshotJobResponse>, Status> {
        let r = r.into_inner();
        if let Some(c) = self.store.get(r.volume_id) {
            c.snap.forget(r.snapshot_id).map_err(snap_status)?;
        }
        Ok(Response::new(pb::ForgetSnapshotJobResponse {}))
    }

    async fn mark_snapshot(
        &self,
        r: Request<pb::MarkSnapshotRequest>,
    ) -> Result<Response<pb::MarkSnapshotResponse>, Status> {
        let r = r.into_inner();
        let c = self
            .store
            .get(r.volume_id)
            .ok_or_else(|| snap_status(SnapError::NotFound(r.volume_id)))?;
        crate::snap::mark(&c, r.snapshot_id);
        Ok(Response::new(pb::MarkSnapshotResponse {}))
    }
}
