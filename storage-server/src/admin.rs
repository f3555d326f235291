//! Admin gRPC service (`basalt.storage.v1.StorageAdmin`): a thin layer over
//! [`Store`]; all error mapping is in `error_map`.

use std::sync::Arc;

use basalt_proto::storage_admin as pb;
use basalt_proto::storage_admin::storage_admin_server::StorageAdmin;
use tonic::{Request, Response, Status};

use crate::copy::Copy;
use crate::error_map::grpc_status;
use crate::meta::{PeerMeta, Role};
use crate::store::{Layout, Store};

pub struct AdminService {
    pub store: Arc<Store>,
    pub data_address: String,
    pub data_dir: std::path::PathBuf,
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
        mirrors: l
            .mirrors
            .into_iter()
            .map(|p| PeerMeta {
                server_id: p.server_id,
                address: p.address,
                delta: p.delta,
            })
            .collect(),
        primary_server_id: l.primary_server_id,
        syncing: l
            .syncing
            .into_iter()
            .map(|p| PeerMeta {
                server_id: p.server_id,
                address: p.address,
                delta: p.delta,
            })
            .collect(),
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
            mirrors: m
                .mirrors
                .into_iter()
                .map(|p| pb::Peer {
                    server_id: p.server_id,
                    address: p.address,
                    delta: p.delta,
                })
                .collect(),
            primary_server_id: m.primary_server_id,
            syncing: m
                .syncing
                .into_iter()
                .map(|p| pb::Peer {
                    server_id: p.server_id,
                    address: p.address,
                    delta: p.delta,
                })
                .collect(),
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
        let c = self
            .store
            .create(r.volume_id, r.size_bytes, layout)
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
}
