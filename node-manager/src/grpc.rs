//! `basalt.node.v1.NodeAgent`: a thin layer over [`Attachments`]. Errors
//! map to gRPC codes here and only here. Who may call it is [`policy`].

use std::sync::Arc;

use basalt_auth::{Access, Policy, Role};
use basalt_proto::node as pb;
use basalt_proto::node::node_agent_server::{NodeAgent, NodeAgentServer};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use crate::attachments::{AttachError, Attachments, Info};
use crate::params::AttachParams;
use crate::process::SpawnError;
use crate::safefs::FsError;

/// The one place domain errors become gRPC statuses.
pub fn to_status(e: AttachError) -> Status {
    let msg = e.to_string();
    match e {
        AttachError::Invalid(_) => Status::invalid_argument(msg),
        AttachError::NotFound(_) => Status::not_found(msg),
        AttachError::Conflict { .. }
        | AttachError::Precondition { .. }
        | AttachError::Superseded { .. }
        | AttachError::WrongAttachment { .. } => Status::failed_precondition(msg),
        AttachError::Exhausted { .. } => Status::resource_exhausted(msg),
        AttachError::Start { ref source, .. } => match source {
            SpawnError::Io { .. } | SpawnError::Fs(FsError::Io { .. }) => Status::internal(msg),
            // Something planted in the run directory: the node must be
            // looked at before this attach can work.
            SpawnError::Fs(FsError::Unsafe { .. }) => Status::failed_precondition(msg),
            _ => Status::unavailable(msg),
        },
        AttachError::NotRunning { .. } | AttachError::Ctl { .. } => Status::unavailable(msg),
        AttachError::Record(_) => Status::internal(msg),
    }
}

/// Per-call authorisation of the node manager's gRPC server: every
/// NodeAgent method is the control service's alone (it attaches and
/// detaches volumes on this host); any other path is refused.
pub fn policy() -> Policy {
    Arc::new(|path: &str| {
        let method = path
            .strip_prefix('/')?
            .strip_prefix(NodeAgentServer::<NodeAgentService>::NAME)?
            .strip_prefix('/')?;
        (!method.is_empty() && !method.contains('/')).then_some(Access::Roles(&[Role::Control]))
    })
}

pub struct NodeAgentService {
    pub attachments: Arc<Attachments>,
}

fn info_pb(i: &Info) -> pb::AttachmentInfo {
    pb::AttachmentInfo {
        volume_id: i.params.volume_id,
        socket_path: i.socket.display().to_string(),
        backend_pid: i.status.pid,
        state: i.status.state.as_str().to_owned(),
        restarts: i.status.restarts,
        read_only: i.params.read_only,
        size_bytes: i.params.size_bytes,
        epoch: i.params.epoch,
        attachment: i.params.attachment,
    }
}

#[tonic::async_trait]
impl NodeAgent for NodeAgentService {
    async fn attach(
        &self,
        req: Request<pb::AttachRequest>,
    ) -> Result<Response<pb::AttachResponse>, Status> {
        let r = req.into_inner();
        let p = AttachParams {
            volume_id: r.volume_id,
            size_bytes: r.size_bytes,
            primary: r.primary_address,
            epoch: r.epoch,
            read_only: r.read_only,
            queues: r.queues,
            attachment: r.attachment,
            grant: r.grant,
        };
        let i = self.attachments.attach(p).await.map_err(to_status)?;
        Ok(Response::new(pb::AttachResponse {
            socket_path: i.socket.display().to_string(),
            qemu_args: i.qemu_args,
            cloud_hypervisor_args: i.cloud_hypervisor_args,
            backend_pid: i.status.pid,
        }))
    }

    async fn detach(
        &self,
        req: Request<pb::DetachRequest>,
    ) -> Result<Response<pb::DetachResponse>, Status> {
        let id = req.into_inner().volume_id;
        self.attachments.detach(id).await.map_err(to_status)?;
        Ok(Response::new(pb::DetachResponse {}))
    }

    async fn resize(
        &self,
        req: Request<pb::ResizeRequest>,
    ) -> Result<Response<pb::ResizeResponse>, Status> {
        let r = req.into_inner();
        self.attachments
            .resize(r.volume_id, r.size_bytes)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ResizeResponse {}))
    }

    async fn update_layout(
        &self,
        req: Request<pb::UpdateLayoutRequest>,
    ) -> Result<Response<pb::UpdateLayoutResponse>, Status> {
        let r = req.into_inner();
        self.attachments
            .update_layout(
                r.volume_id,
                r.primary_address,
                r.epoch,
                r.attachment,
                r.grant,
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::UpdateLayoutResponse {}))
    }

    async fn list_attachments(
        &self,
        _req: Request<pb::ListAttachmentsRequest>,
    ) -> Result<Response<pb::ListAttachmentsResponse>, Status> {
        let attachments = self.attachments.list().iter().map(info_pb).collect();
        Ok(Response::new(pb::ListAttachmentsResponse { attachments }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamsError;
    use tonic::Code;

    #[test]
    fn only_the_control_service_may_call_the_node_agent() {
        let p = policy();
        for m in [
            "Attach",
            "Detach",
            "Resize",
            "UpdateLayout",
            "ListAttachments",
        ] {
            assert_eq!(
                p(&format!("/basalt.node.v1.NodeAgent/{m}")),
                Some(Access::Roles(&[Role::Control])),
                "{m}"
            );
        }
        for other in [
            "/basalt.node.v1.NodeAgent/",
            "/basalt.node.v1.NodeAgent",
            "/basalt.node.v1.NodeAgentX/Attach",
            "/basalt.node.v1.NodeAgent/Attach/x",
            "/basalt.control.v1.Control/RegisterNode",
            "/grpc.health.v1.Health/Check",
            "basalt.node.v1.NodeAgent/Attach",
            "",
        ] {
            assert_eq!(p(other), None, "{other}");
        }
    }

    #[test]
    fn codes() {
        assert_eq!(
            to_status(AttachError::Invalid(ParamsError::Epoch)).code(),
            Code::InvalidArgument
        );
        assert_eq!(to_status(AttachError::NotFound(1)).code(), Code::NotFound);
        assert_eq!(
            to_status(AttachError::Conflict {
                volume_id: 1,
                current: String::new()
            })
            .code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            to_status(AttachError::Start {
                volume_id: 1,
                source: SpawnError::Exited {
                    status: "exit 1".into(),
                    tail: "boom".into()
                }
            })
            .code(),
            Code::Unavailable
        );
        assert_eq!(
            to_status(AttachError::NotRunning { volume_id: 1 }).code(),
            Code::Unavailable
        );
        let superseded = to_status(AttachError::Superseded {
            volume_id: 1,
            attachment: 2,
            current: 3,
        });
        assert_eq!(superseded.code(), Code::FailedPrecondition);
        assert!(superseded.message().contains("superseded attachment"));
        assert_eq!(
            to_status(AttachError::WrongAttachment {
                volume_id: 1,
                attachment: 2,
                current: 3
            })
            .code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            to_status(AttachError::Exhausted { max: 4 }).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            to_status(AttachError::Invalid(ParamsError::EpochJump {
                epoch: 1 << 30,
                current: 1
            }))
            .code(),
            Code::InvalidArgument
        );
        assert_eq!(
            to_status(AttachError::Start {
                volume_id: 1,
                source: SpawnError::Fs(FsError::Unsafe {
                    path: "/run/x".into(),
                    what: "is a symlink".into()
                })
            })
            .code(),
            Code::FailedPrecondition
        );
    }
}
