//! Registration with the control service and heartbeats carrying the
//! status of every attachment. Any failure leads back to registering again
//! after one interval. The node calls the control service over mutual TLS,
//! as itself (its certificate), and checks that the server is the control
//! service.

use std::sync::Arc;
use std::time::Duration;

use basalt_proto::control as pb;
use basalt_proto::control::control_client::ControlClient;
use tonic::transport::{Channel, Endpoint};

use crate::attachments::{Attachments, State};

pub struct Registration {
    pub control_url: String,
    /// TLS endpoint of `control_url` presenting the node's certificate
    /// (see [`basalt_auth::endpoint`]).
    pub endpoint: Endpoint,
    pub node_id: String,
    pub address: String,
    pub default_interval: Duration,
}

/// Status of every attachment, with I/O counters from running backends.
pub async fn statuses(att: &Attachments) -> Vec<pb::AttachmentStatus> {
    let mut out = Vec::new();
    for i in att.list() {
        let c = if i.status.state == State::Running {
            att.counters(i.params.volume_id).await.unwrap_or_default()
        } else {
            Default::default()
        };
        out.push(pb::AttachmentStatus {
            volume_id: i.params.volume_id,
            state: i.status.state.as_str().to_owned(),
            backend_pid: i.status.pid,
            restarts: i.status.restarts,
            reads: c.reads,
            writes: c.writes,
            errors: c.errors,
        });
    }
    out
}

async fn register(
    reg: &Registration,
    att: &Attachments,
) -> Result<(ControlClient<Channel>, Duration), String> {
    let channel = reg
        .endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {}", error_chain(&e)))?;
    let mut client = ControlClient::new(channel);
    let node = pb::Node {
        node_id: reg.node_id.clone(),
        address: reg.address.clone(),
        state: "UP".into(),
        last_heartbeat: 0,
        attachments: statuses(att).await,
    };
    let r = client
        .register_node(pb::RegisterNodeRequest { node: Some(node) })
        .await
        .map_err(|e| format!("RegisterNode failed: {}", e.message()))?;
    let ms = r.into_inner().heartbeat_interval_ms;
    let interval = if ms == 0 {
        reg.default_interval
    } else {
        Duration::from_millis(ms)
    };
    Ok((client, interval))
}

/// An error with its causes (a TLS failure is only in the sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Runs for the life of the process.
pub async fn run(reg: Registration, att: Arc<Attachments>) {
    let mut logged_down = false;
    loop {
        let (mut client, interval) = match register(&reg, &att).await {
            Ok(v) => v,
            Err(e) => {
                if !logged_down {
                    tracing::warn!(control = %reg.control_url, "cannot register with the control service: {e}; retrying");
                    logged_down = true;
                }
                tokio::time::sleep(reg.default_interval).await;
                continue;
            }
        };
        logged_down = false;
        tracing::info!(control = %reg.control_url, ?interval, "registered with the control service");
        loop {
            tokio::time::sleep(interval).await;
            let req = pb::NodeHeartbeatRequest {
                node_id: reg.node_id.clone(),
                attachments: statuses(&att).await,
            };
            if let Err(e) = client.node_heartbeat(req).await {
                tracing::warn!("heartbeat failed: {}; registering again", e.message());
                break;
            }
        }
    }
}
