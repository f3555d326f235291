//! gRPC clients of storage servers and node managers, with timeouts so an
//! unreachable peer fails an operation instead of hanging it.

use std::time::Duration;

use basalt_proto::node::node_agent_client::NodeAgentClient;
use basalt_proto::storage_admin::storage_admin_client::StorageAdminClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{ControlError, Result};

#[derive(Clone)]
pub struct Clients {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Clients {
    async fn channel(&self, what: &str, addr: &str) -> Result<Channel> {
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ControlError::Invalid(format!("bad address {addr:?} for {what}: {e}")))?
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
            self.channel(&format!("storage server {server_id}"), admin_addr)
                .await?,
        ))
    }

    pub async fn node(&self, node_id: &str, addr: &str) -> Result<NodeAgentClient<Channel>> {
        Ok(NodeAgentClient::new(
            self.channel(&format!("node {node_id}"), addr).await?,
        ))
    }
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
