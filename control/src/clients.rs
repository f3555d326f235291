//! gRPC clients of storage servers and node managers, with timeouts so an
//! unreachable peer fails an operation instead of hanging it.

use std::time::Duration;

use basalt_auth::{Credentials, Principal, Role};
use basalt_proto::node::node_agent_client::NodeAgentClient;
use basalt_proto::storage_admin::storage_admin_client::StorageAdminClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{ControlError, Result};

#[derive(Clone)]
pub struct Clients {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// This service's certificate, presented to every peer.
    pub creds: Option<Credentials>,
}

impl Clients {
    /// A TLS endpoint for `peer` at `addr`, which must prove it is `peer`.
    pub fn endpoint(&self, peer: &Principal, addr: &str) -> Result<Endpoint> {
        let creds = self.creds.as_ref().ok_or_else(|| {
            ControlError::Unavailable("the control service has no certificate".into())
        })?;
        basalt_auth::endpoint(addr, creds.client_tls(peer).timeout(self.connect_timeout))
            .map_err(|e| ControlError::Invalid(format!("bad address of {peer}: {e}")))
    }

    async fn channel(&self, peer: Principal, what: &str, addr: &str) -> Result<Channel> {
        let ep = self
            .endpoint(&peer, addr)?
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .tcp_nodelay(true);
        ep.connect()
            .await
            .map_err(|e| ControlError::Unavailable(format!("cannot reach {what} at {addr}: {e}")))
    }

    pub async fn storage(
        &self,
        server_id: &str,
        admin_addr: &str,
    ) -> Result<StorageAdminClient<Channel>> {
        Ok(StorageAdminClient::new(
            self.channel(
                principal(Role::Storage, server_id)?,
                &format!("storage server {server_id}"),
                admin_addr,
            )
            .await?,
        ))
    }

    pub async fn node(&self, node_id: &str, addr: &str) -> Result<NodeAgentClient<Channel>> {
        Ok(NodeAgentClient::new(
            self.channel(
                principal(Role::Node, node_id)?,
                &format!("node {node_id}"),
                addr,
            )
            .await?,
        ))
    }
}

fn principal(role: Role, id: &str) -> Result<Principal> {
    Principal::new(role, id).map_err(|e| ControlError::Invalid(e.to_string()))
}

/// Turns a peer's gRPC error into ours, naming the peer.
pub fn peer_error(who: &str, s: tonic::Status) -> ControlError {
    let msg = format!("{who}: {}", s.message());
    match s.code() {
        tonic::Code::InvalidArgument => ControlError::Invalid(msg),
        tonic::Code::NotFound => ControlError::NotFound(msg),
        tonic::Code::AlreadyExists => ControlError::AlreadyExists(msg),
        tonic::Code::FailedPrecondition => ControlError::Precondition(msg),
        _ => ControlError::Unavailable(msg),
    }
}
