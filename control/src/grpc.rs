//! The tonic server: a thin layer over [`Control`].

use std::sync::Arc;

use basalt_auth::Role;
use basalt_proto::control as pb;
use basalt_proto::control::control_server;
use tonic::{Request, Response, Status};

use crate::audit::Note;
use crate::error::ControlError;
use crate::model::ServerRecord;
use crate::scope::{open, Scope};
use crate::store::{get_json, put_json, Table};
use crate::Control;

pub struct Api(pub Arc<Control>);

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl control_server::Control for Api {
    async fn create_volume(&self, r: Request<pb::CreateVolumeRequest>) -> R<pb::Volume> {
        let (s, note, m) = open(r)?;
        let m = self.0.scope_create_volume(&s, &note, m)?;
        let v = self.0.create_volume(m).await?;
        note.target(format!("volume {} ({}/{})", v.id, v.tenant, v.name));
        Ok(Response::new(self.0.volume_pb(&v)))
    }

    async fn delete_volume(
        &self,
        r: Request<pb::DeleteVolumeRequest>,
    ) -> R<pb::DeleteVolumeResponse> {
        let (s, note, m) = open(r)?;
        let v = self.0.scope_volume(&s, &note, m.volume)?;
        self.0.delete_volume(&v).await?;
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn describe_volume(&self, r: Request<pb::DescribeVolumeRequest>) -> R<pb::Volume> {
        let (s, note, m) = open(r)?;
        let v = self.0.find(&self.0.scope_volume(&s, &note, m.volume)?)?;
        Ok(Response::new(self.0.volume_pb(&v)))
    }

    async fn list_volumes(&self, r: Request<pb::ListVolumesRequest>) -> R<pb::ListVolumesResponse> {
        let (s, _, mut m) = open(r)?;
        s.field(&mut m.tenant).map_err(Status::from)?;
        let tenant = m.tenant;
        let volumes = self
            .0
            .volumes()?
            .iter()
            .filter(|v| tenant.is_empty() || v.tenant == tenant)
            .map(|v| self.0.volume_pb(v))
            .collect();
        Ok(Response::new(pb::ListVolumesResponse { volumes }))
    }

    async fn create_snapshot(&self, r: Request<pb::CreateSnapshotRequest>) -> R<pb::Snapshot> {
        let (s, note, mut m) = open(r)?;
        m.volume = Some(self.0.scope_volume(&s, &note, m.volume)?);
        let s = self.0.create_snapshot(m).await?;
        note.target(format!("snapshot {} ({}/{})", s.id, s.tenant, s.name));
        Ok(Response::new(crate::snapshots::snapshot_pb(&s)))
    }

    async fn describe_snapshot(&self, r: Request<pb::DescribeSnapshotRequest>) -> R<pb::Snapshot> {
        let (s, note, m) = open(r)?;
        let s = self
            .0
            .find_snapshot(&self.0.scope_snapshot(&s, &note, m.snapshot)?)?;
        Ok(Response::new(crate::snapshots::snapshot_pb(&s)))
    }

    async fn list_snapshots(
        &self,
        r: Request<pb::ListSnapshotsRequest>,
    ) -> R<pb::ListSnapshotsResponse> {
        let (s, _, m) = open(r)?;
        let m = self.0.scope_list_snapshots(&s, m)?;
        Ok(Response::new(self.0.list_snapshots(m)?))
    }

    async fn delete_snapshot(
        &self,
        r: Request<pb::DeleteSnapshotRequest>,
    ) -> R<pb::DeleteSnapshotResponse> {
        let (s, note, m) = open(r)?;
        let snap = self.0.scope_snapshot(&s, &note, m.snapshot)?;
        self.0.delete_snapshot(&snap).await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn add_destination(&self, r: Request<pb::AddDestinationRequest>) -> R<pb::Destination> {
        let (s, note, mut m) = open(r)?;
        note.target(format!("destination {}", m.name));
        s.field(&mut m.tenant)?;
        let d = self.0.add_destination(m).await?;
        note.tenant(&d.tenant);
        Ok(Response::new(crate::destinations::destination_pb(&d, 0)))
    }

    async fn list_destinations(
        &self,
        r: Request<pb::ListDestinationsRequest>,
    ) -> R<pb::ListDestinationsResponse> {
        let (s, _, mut m) = open(r)?;
        s.field(&mut m.tenant)?;
        Ok(Response::new(pb::ListDestinationsResponse {
            destinations: self.0.list_destinations(&m.tenant)?,
        }))
    }

    async fn describe_destination(&self, r: Request<pb::DestinationRef>) -> R<pb::Destination> {
        let (s, note, m) = open(r)?;
        let d = self.0.scope_destination(&s, &note, m, false)?;
        Ok(Response::new(self.0.describe_destination(&d).await?))
    }

    async fn remove_destination(
        &self,
        r: Request<pb::DestinationRef>,
    ) -> R<pb::RemoveDestinationResponse> {
        let (s, note, m) = open(r)?;
        let d = self.0.scope_destination(&s, &note, m, true)?;
        self.0.remove_destination(&d).await?;
        Ok(Response::new(pb::RemoveDestinationResponse {}))
    }

    async fn set_backup_policy(&self, r: Request<pb::SetBackupPolicyRequest>) -> R<pb::Volume> {
        let (s, note, mut m) = open(r)?;
        m.volume = Some(self.0.scope_volume(&s, &note, m.volume)?);
        let v = self.0.set_backup_policy(m).await?;
        Ok(Response::new(self.0.volume_pb(&v)))
    }

    async fn set_schedule(&self, r: Request<pb::SetScheduleRequest>) -> R<pb::Volume> {
        let (s, note, mut m) = open(r)?;
        m.volume = match m.volume {
            Some(v) => Some(self.0.scope_volume(&s, &note, Some(v))?),
            None => None,
        };
        let v = self.0.set_schedule(m).await?;
        Ok(Response::new(self.0.volume_pb(&v)))
    }

    async fn write_volume_block(
        &self,
        r: Request<pb::WriteVolumeBlockRequest>,
    ) -> R<pb::WriteVolumeBlockResponse> {
        let (s, note, mut m) = open(r)?;
        m.volume = Some(self.0.scope_volume(&s, &note, m.volume)?);
        Ok(Response::new(self.0.write_volume_block(m).await?))
    }

    async fn read_volume_block(
        &self,
        r: Request<pb::ReadVolumeBlockRequest>,
    ) -> R<pb::ReadVolumeBlockResponse> {
        let (s, note, mut m) = open(r)?;
        m.volume = Some(self.0.scope_volume(&s, &note, m.volume)?);
        Ok(Response::new(self.0.read_volume_block(m).await?))
    }

    async fn copy_snapshot(&self, r: Request<pb::CopySnapshotRequest>) -> R<pb::Snapshot> {
        let (s, note, mut m) = open(r)?;
        m.snapshot = Some(self.0.scope_snapshot(&s, &note, m.snapshot)?);
        let s = self.0.copy_snapshot(m).await?;
        Ok(Response::new(crate::snapshots::snapshot_pb(&s)))
    }

    async fn remove_snapshot_copy(
        &self,
        r: Request<pb::RemoveSnapshotCopyRequest>,
    ) -> R<pb::Snapshot> {
        let (s, note, mut m) = open(r)?;
        m.snapshot = Some(self.0.scope_snapshot(&s, &note, m.snapshot)?);
        let s = self.0.remove_snapshot_copy(m).await?;
        Ok(Response::new(crate::snapshots::snapshot_pb(&s)))
    }

    async fn start_snapshot(&self, r: Request<pb::StartSnapshotRequest>) -> R<pb::Snapshot> {
        let (s, note, m) = open(r)?;
        let m = self.0.scope_start_snapshot(&s, &note, m)?;
        let s = self.0.start_direct_snapshot(m).await?;
        note.target(format!("snapshot {} ({}/{})", s.id, s.tenant, s.name));
        Ok(Response::new(crate::snapshots::snapshot_pb(&s)))
    }

    async fn put_snapshot_block(
        &self,
        r: Request<pb::PutSnapshotBlockRequest>,
    ) -> R<pb::PutSnapshotBlockResponse> {
        let (s, note, m) = open(r)?;
        self.0.scope_snapshot_id(&s, &note, m.snapshot_id)?;
        Ok(Response::new(self.0.put_snapshot_block(m).await?))
    }

    async fn complete_snapshot(&self, r: Request<pb::CompleteSnapshotRequest>) -> R<pb::Snapshot> {
        let (s, note, m) = open(r)?;
        note.target(format!("snapshot {}", m.snapshot_id));
        self.0.scope_snapshot_id(&s, &note, m.snapshot_id)?;
        let s = self.0.complete_direct_snapshot(m).await?;
        Ok(Response::new(crate::snapshots::snapshot_pb(&s)))
    }

    async fn list_snapshot_blocks(
        &self,
        r: Request<pb::ListSnapshotBlocksRequest>,
    ) -> R<pb::ListSnapshotBlocksResponse> {
        let (s, note, mut m) = open(r)?;
        m.snapshot = Some(self.0.scope_snapshot(&s, &note, m.snapshot)?);
        Ok(Response::new(self.0.list_snapshot_blocks(m).await?))
    }

    async fn list_changed_blocks(
        &self,
        r: Request<pb::ListChangedBlocksRequest>,
    ) -> R<pb::ListChangedBlocksResponse> {
        let (s, _, m) = open(r)?;
        let m = self.0.scope_changed_blocks(&s, m)?;
        Ok(Response::new(self.0.list_changed_blocks(m).await?))
    }

    async fn get_snapshot_block(
        &self,
        r: Request<pb::GetSnapshotBlockRequest>,
    ) -> R<pb::GetSnapshotBlockResponse> {
        let (s, note, mut m) = open(r)?;
        m.snapshot = Some(self.0.scope_snapshot(&s, &note, m.snapshot)?);
        Ok(Response::new(self.0.get_snapshot_block(m).await?))
    }

    async fn resize_volume(&self, r: Request<pb::ResizeVolumeRequest>) -> R<pb::Volume> {
        let (s, note, mut m) = open(r)?;
        m.volume = Some(self.0.scope_volume(&s, &note, m.volume)?);
        let v = self.0.resize(m).await?;
        Ok(Response::new(self.0.volume_pb(&v)))
    }

    async fn report_unreachable(
        &self,
        r: Request<pb::ReportUnreachableRequest>,
    ) -> R<pb::ReportUnreachableResponse> {
        Ok(Response::new(
            self.0
                .report_unreachable(&basalt_auth::caller(&r)?.clone(), r.into_inner())
                .await?,
        ))
    }

    async fn attach_volume(&self, r: Request<pb::AttachVolumeRequest>) -> R<pb::Volume> {
        let (s, note, mut m) = open(r)?;
        m.volume = Some(self.0.scope_volume(&s, &note, m.volume)?);
        let v = self.0.attach(m).await?;
        Ok(Response::new(self.0.volume_pb(&v)))
    }

    async fn detach_volume(&self, r: Request<pb::DetachVolumeRequest>) -> R<pb::Volume> {
        let (s, note, m) = open(r)?;
        let v = self
            .0
            .detach(&self.0.scope_volume(&s, &note, m.volume)?)
            .await?;
        Ok(Response::new(self.0.volume_pb(&v)))
    }

    async fn register_storage_server(
        &self,
        r: Request<pb::RegisterStorageServerRequest>,
    ) -> R<pb::RegisterStorageServerResponse> {
        let caller = basalt_auth::caller(&r)?.clone();
        let s = r
            .into_inner()
            .server
            .ok_or_else(|| Status::invalid_argument("server is required"))?;
        basalt_auth::require_self(&caller, Role::Storage, &s.server_id)?;
        tracing::info!(server = %s.server_id, data = %s.data_address, "storage server registered");
        self.0.registry.register_server(&*self.0.store, s)?;
        Ok(Response::new(pb::RegisterStorageServerResponse {
            heartbeat_interval_ms: self.0.heartbeat_ms(),
        }))
    }

    async fn storage_server_heartbeat(
        &self,
        r: Request<pb::StorageServerHeartbeatRequest>,
    ) -> R<pb::StorageServerHeartbeatResponse> {
        let caller = basalt_auth::caller(&r)?.clone();
        let hb = r.into_inner();
        basalt_auth::require_self(&caller, Role::Storage, &hb.server_id)?;
        self.0.registry.server_heartbeat(&*self.0.store, hb)?;
        Ok(Response::new(pb::StorageServerHeartbeatResponse {}))
    }

    async fn list_storage_servers(
        &self,
        _: Request<pb::ListStorageServersRequest>,
    ) -> R<pb::ListStorageServersResponse> {
        Ok(Response::new(pb::ListStorageServersResponse {
            servers: self.0.servers_pb()?,
        }))
    }

    async fn drain_storage_server(
        &self,
        r: Request<pb::DrainStorageServerRequest>,
    ) -> R<pb::StorageServer> {
        Note::of(&r).target(format!("storage server {}", r.get_ref().server_id));
        let id = r.into_inner().server_id;
        let _op = self.0.ops.lock().await;
        let mut s: ServerRecord = get_json(&*self.0.store, Table::Servers, &id)
            .map_err(ControlError::from)?
            .ok_or_else(|| {
                ControlError::NotFound(format!("storage server {id:?} is not registered"))
            })?;
        if !s.draining {
            s.draining = true;
            self.0
                .store
                .apply(vec![put_json(Table::Servers, id.clone(), &s)])
                .map_err(ControlError::from)?;
            tracing::info!(server = %id, "draining: copies will be moved off it");
        }
        let pb = self.0.servers_pb()?.into_iter().find(|x| x.server_id == id);
        pb.map(Response::new)
            .ok_or_else(|| Status::not_found(format!("storage server {id:?} is not registered")))
    }

    async fn register_node(
        &self,
        r: Request<pb::RegisterNodeRequest>,
    ) -> R<pb::RegisterNodeResponse> {
        let caller = basalt_auth::caller(&r)?.clone();
        let n = r
            .into_inner()
            .node
            .ok_or_else(|| Status::invalid_argument("node is required"))?;
        basalt_auth::require_self(&caller, Role::Node, &n.node_id)?;
        tracing::info!(node = %n.node_id, address = %n.address, "node registered");
        self.0.registry.register_node(&*self.0.store, n)?;
        Ok(Response::new(pb::RegisterNodeResponse {
            heartbeat_interval_ms: self.0.heartbeat_ms(),
        }))
    }

    async fn node_heartbeat(
        &self,
        r: Request<pb::NodeHeartbeatRequest>,
    ) -> R<pb::NodeHeartbeatResponse> {
        let caller = basalt_auth::caller(&r)?.clone();
        let hb = r.into_inner();
        basalt_auth::require_self(&caller, Role::Node, &hb.node_id)?;
        self.0.registry.node_heartbeat(&*self.0.store, hb)?;
        Ok(Response::new(pb::NodeHeartbeatResponse {}))
    }

    async fn list_nodes(&self, _: Request<pb::ListNodesRequest>) -> R<pb::ListNodesResponse> {
        Ok(Response::new(pb::ListNodesResponse {
            nodes: self.0.registry.nodes_pb(&*self.0.store)?,
        }))
    }

    async fn create_join_token(
        &self,
        r: Request<pb::CreateJoinTokenRequest>,
    ) -> R<pb::CreateJoinTokenResponse> {
        let m = r.get_ref();
        Note::of(&r).target(format!("join token for {} {}", m.role, m.id));
        Ok(Response::new(self.0.create_join_token(r.into_inner())?))
    }

    async fn join(&self, r: Request<pb::JoinRequest>) -> R<pb::JoinResponse> {
        let note = Note::of(&r);
        let j = self.0.join(r.into_inner()).await?;
        if let Some(p) = basalt_auth::Role::parse(&j.role)
            .and_then(|role| basalt_auth::Principal::new(role, &j.id).ok())
        {
            note.target(format!("certificate for {p}"));
            note.principal(p);
        }
        Ok(Response::new(j))
    }

    async fn revoke_identity(
        &self,
        r: Request<pb::RevokeIdentityRequest>,
    ) -> R<pb::RevokeIdentityResponse> {
        let m = r.get_ref();
        Note::of(&r).target(format!("{} {}", m.role, m.id));
        self.0.revoke_identity(r.into_inner())?;
        Ok(Response::new(pb::RevokeIdentityResponse {}))
    }

    // Tenants, API tokens, the audit log (tenants.rs, api_tokens.rs,
    // audit.rs); admins only but ListAudit (policy.rs).

    async fn create_tenant(&self, r: Request<pb::CreateTenantRequest>) -> R<pb::Tenant> {
        let note = Note::of(&r);
        let m = r.into_inner();
        note.target(format!("tenant {}", m.name));
        note.tenant(&m.name);
        Ok(Response::new(self.0.create_tenant(m).await?))
    }

    async fn list_tenants(&self, _: Request<pb::ListTenantsRequest>) -> R<pb::ListTenantsResponse> {
        Ok(Response::new(self.0.list_tenants()?))
    }

    async fn delete_tenant(
        &self,
        r: Request<pb::DeleteTenantRequest>,
    ) -> R<pb::DeleteTenantResponse> {
        let note = Note::of(&r);
        let m = r.into_inner();
        note.target(format!("tenant {}", m.name));
        note.tenant(&m.name);
        self.0.delete_tenant(m).await?;
        Ok(Response::new(pb::DeleteTenantResponse {}))
    }

    async fn set_tenant_quota(&self, r: Request<pb::SetTenantQuotaRequest>) -> R<pb::Tenant> {
        let note = Note::of(&r);
        let m = r.into_inner();
        note.target(format!("tenant {}", m.name));
        note.tenant(&m.name);
        Ok(Response::new(self.0.set_tenant_quota(m).await?))
    }

    async fn create_api_token(
        &self,
        r: Request<pb::CreateApiTokenRequest>,
    ) -> R<pb::CreateApiTokenResponse> {
        let note = Note::of(&r);
        let t = self.0.create_api_token(r.into_inner()).await?;
        if let Some(i) = &t.info {
            note.target(format!("token {} of {} {}", i.id, i.role, i.principal));
            if i.role == Role::Tenant.name() {
                note.tenant(&i.principal);
            }
        }
        Ok(Response::new(t))
    }

    async fn list_api_tokens(
        &self,
        r: Request<pb::ListApiTokensRequest>,
    ) -> R<pb::ListApiTokensResponse> {
        Ok(Response::new(self.0.list_api_tokens(r.into_inner())?))
    }

    async fn revoke_api_token(
        &self,
        r: Request<pb::RevokeApiTokenRequest>,
    ) -> R<pb::RevokeApiTokenResponse> {
        let note = Note::of(&r);
        note.target(format!("token {}", r.get_ref().id));
        let t = self.0.revoke_api_token(r.into_inner()).await?;
        note.target(format!("token {} of {} {}", t.id, t.role, t.principal));
        if t.role == Role::Tenant.name() {
            note.tenant(&t.principal);
        }
        Ok(Response::new(pb::RevokeApiTokenResponse {}))
    }

    async fn list_audit(&self, r: Request<pb::ListAuditRequest>) -> R<pb::ListAuditResponse> {
        let (s, _, m): (Scope, _, _) = open(r)?;
        Ok(Response::new(self.0.list_audit(&s, m)?))
    }
}
