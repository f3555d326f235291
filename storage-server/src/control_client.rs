//! Registration with the control service and periodic heartbeats carrying
//! capacity. Runs only when `--control` is given; the data path never waits
//! for it.

use std::time::Duration;

use basalt_proto::control as pb;
use basalt_proto::control::control_client::ControlClient;
use tonic::transport::Endpoint;

pub struct Registration {
    /// The control service address as given (for logs).
    pub control_url: String,
    /// The control service, over mutual TLS as this server (see
    /// [`basalt_auth::endpoint`]).
    pub endpoint: Endpoint,
    pub server_id: String,
    pub zone: String,
    pub data_address: String,
    pub admin_address: String,
    pub data_dir: std::path::PathBuf,
}

/// Registers, then heartbeats forever; re-registers after any failure.
pub async fn run(reg: Registration) {
    let mut failures = 0u32;
    loop {
        match session(&reg).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(control = %reg.control_url, attempts = failures, "control service unreachable: {e:#}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn session(reg: &Registration) -> anyhow::Result<()> {
    let mut client = ControlClient::new(reg.endpoint.connect().await?);
    let (capacity_bytes, free_bytes) = crate::admin::disk_space(&reg.data_dir);
    let server = pb::StorageServer {
        server_id: reg.server_id.clone(),
        data_address: reg.data_address.clone(),
        admin_address: reg.admin_address.clone(),
        zone: reg.zone.clone(),
        capacity_bytes,
        free_bytes,
        ..Default::default()
    };
    let r = client
        .register_storage_server(pb::RegisterStorageServerRequest {
            server: Some(server),
        })
        .await?;
    let interval = Duration::from_millis(r.into_inner().heartbeat_interval_ms.clamp(50, 60_000));
    tracing::info!(control = %reg.control_url, "registered with the control service");
    loop {
        tokio::time::sleep(interval).await;
        let (capacity_bytes, free_bytes) = crate::admin::disk_space(&reg.data_dir);
        client
            .storage_server_heartbeat(pb::StorageServerHeartbeatRequest {
                server_id: reg.server_id.clone(),
                capacity_bytes,
                free_bytes,
            })
            .await?;
    }
}
