//! Test support: a control service that only takes failure reports
//! (`ReportUnreachable`); every other call is answered Unimplemented. Used
//! by the storage server's and the backend's tests to check what the data
//! path reports and how it uses the answer, without a whole control plane.
//! It serves over TLS with the control service's credentials (e.g.
//! `TestPki::control()` of the PKI the clients' certificates come from).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use basalt_proto::control as pb;
use basalt_proto::control::control_server::{Control, ControlServer};
use tonic::{Request, Response, Status};

type R<T> = Result<Response<T>, Status>;

/// What a fake control does with a report.
pub type ReportFuture = Pin<Box<dyn Future<Output = R<pb::ReportUnreachableResponse>> + Send>>;
pub type ReportHandler = Arc<dyn Fn(pb::ReportUnreachableRequest) -> ReportFuture + Send + Sync>;

pub struct ReportsOnly {
    handler: ReportHandler,
}

impl ReportsOnly {
    pub fn new(handler: ReportHandler) -> ControlServer<ReportsOnly> {
        ControlServer::new(ReportsOnly { handler })
    }
}

macro_rules! reports_only {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl Control for ReportsOnly {
            $(async fn $name(&self, _: Request<$req>) -> R<$resp> {
                Err(Status::unimplemented("fake control: reports only"))
            })*

            async fn report_unreachable(
                &self,
                r: Request<pb::ReportUnreachableRequest>,
            ) -> R<pb::ReportUnreachableResponse> {
                (self.handler)(r.into_inner()).await
            }
        }
    };
}

reports_only! {
    create_volume(pb::CreateVolumeRequest) -> pb::Volume;
    delete_volume(pb::DeleteVolumeRequest) -> pb::DeleteVolumeResponse;
    describe_volume(pb::DescribeVolumeRequest) -> pb::Volume;
    list_volumes(pb::ListVolumesRequest) -> pb::ListVolumesResponse;
    resize_volume(pb::ResizeVolumeRequest) -> pb::Volume;
    attach_volume(pb::AttachVolumeRequest) -> pb::Volume;
    detach_volume(pb::DetachVolumeRequest) -> pb::Volume;
    register_storage_server(pb::RegisterStorageServerRequest) -> pb::RegisterStorageServerResponse;
    storage_server_heartbeat(pb::StorageServerHeartbeatRequest) -> pb::StorageServerHeartbeatResponse;
    list_storage_servers(pb::ListStorageServersRequest) -> pb::ListStorageServersResponse;
    drain_storage_server(pb::DrainStorageServerRequest) -> pb::StorageServer;
    register_node(pb::RegisterNodeRequest) -> pb::RegisterNodeResponse;
    node_heartbeat(pb::NodeHeartbeatRequest) -> pb::NodeHeartbeatResponse;
    list_nodes(pb::ListNodesRequest) -> pb::ListNodesResponse;
    create_snapshot(pb::CreateSnapshotRequest) -> pb::Snapshot;
    describe_snapshot(pb::DescribeSnapshotRequest) -> pb::Snapshot;
    list_snapshots(pb::ListSnapshotsRequest) -> pb::ListSnapshotsResponse;
    delete_snapshot(pb::DeleteSnapshotRequest) -> pb::DeleteSnapshotResponse;
    add_destination(pb::AddDestinationRequest) -> pb::Destination;
    list_destinations(pb::ListDestinationsRequest) -> pb::ListDestinationsResponse;
    describe_destination(pb::DestinationRef) -> pb::Destination;
    remove_destination(pb::DestinationRef) -> pb::RemoveDestinationResponse;
    set_backup_policy(pb::SetBackupPolicyRequest) -> pb::Volume;
    set_schedule(pb::SetScheduleRequest) -> pb::Volume;
    copy_snapshot(pb::CopySnapshotRequest) -> pb::Snapshot;
    remove_snapshot_copy(pb::RemoveSnapshotCopyRequest) -> pb::Snapshot;
    start_snapshot(pb::StartSnapshotRequest) -> pb::Snapshot;
    put_snapshot_block(pb::PutSnapshotBlockRequest) -> pb::PutSnapshotBlockResponse;
    complete_snapshot(pb::CompleteSnapshotRequest) -> pb::Snapshot;
    list_snapshot_blocks(pb::ListSnapshotBlocksRequest) -> pb::ListSnapshotBlocksResponse;
    list_changed_blocks(pb::ListChangedBlocksRequest) -> pb::ListChangedBlocksResponse;
    get_snapshot_block(pb::GetSnapshotBlockRequest) -> pb::GetSnapshotBlockResponse;
    write_volume_block(pb::WriteVolumeBlockRequest) -> pb::WriteVolumeBlockResponse;
    read_volume_block(pb::ReadVolumeBlockRequest) -> pb::ReadVolumeBlockResponse;
    create_join_token(pb::CreateJoinTokenRequest) -> pb::CreateJoinTokenResponse;
    join(pb::JoinRequest) -> pb::JoinResponse;
    revoke_identity(pb::RevokeIdentityRequest) -> pb::RevokeIdentityResponse;
    create_tenant(pb::CreateTenantRequest) -> pb::Tenant;
    list_tenants(pb::ListTenantsRequest) -> pb::ListTenantsResponse;
    delete_tenant(pb::DeleteTenantRequest) -> pb::DeleteTenantResponse;
    set_tenant_quota(pb::SetTenantQuotaRequest) -> pb::Tenant;
    create_api_token(pb::CreateApiTokenRequest) -> pb::CreateApiTokenResponse;
    list_api_tokens(pb::ListApiTokensRequest) -> pb::ListApiTokensResponse;
    revoke_api_token(pb::RevokeApiTokenRequest) -> pb::RevokeApiTokenResponse;
    list_audit(pb::ListAuditRequest) -> pb::ListAuditResponse;
}

/// Serves `handler` on `listener` over TLS as `creds` (the control
/// service's credentials: clients check its name, `control.basalt`, against
/// the CA) until the runtime stops. Client certificates are verified
/// against the same CA when presented. The future borrows nothing, so it
/// can be spawned.
pub fn serve(
    listener: tokio::net::TcpListener,
    creds: &basalt_auth::Credentials,
    handler: ReportHandler,
) -> impl Future<Output = ()> + Send + 'static {
    let tls = creds.server_tls();
    async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let mut server = match tonic::transport::Server::builder().tls_config(tls) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("fake control: bad TLS credentials: {e}");
                return;
            }
        };
        let _ = server
            .add_service(ReportsOnly::new(handler))
            .serve_with_incoming(incoming)
            .await;
    }
}
