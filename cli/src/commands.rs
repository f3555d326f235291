//! Volume, server and node commands: one gRPC call each.

use basalt_proto::control as pb;
use basalt_proto::control::control_client::ControlClient;
use serde_json::Value;
use tonic::transport::Channel;

use crate::args::{Cli, Command, NodeCmd, Output, ServerCmd, VolumeCmd};
use crate::output::*;
use crate::size::{format_size, parse_size};

pub async fn connect(endpoint: &str) -> anyhow::Result<ControlClient<Channel>> {
    let ep = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|_| {
            anyhow::anyhow!(
                "invalid control endpoint {endpoint:?}: expected e.g. http://127.0.0.1:7400"
            )
        })?
        .connect_timeout(std::time::Duration::from_secs(3));
    ep.connect()
        .await
        .map(ControlClient::new)
        .map_err(|_| anyhow::anyhow!("cannot reach the control service at {endpoint}: is it running? (set --control or BASALT_CONTROL)"))
}

fn vref(cli: &Cli, v: &str) -> pb::VolumeRef {
    match v.parse::<u64>() {
        Ok(id) => pb::VolumeRef {
            id,
            ..Default::default()
        },
        Err(_) => pb::VolumeRef {
            name: v.to_owned(),
            tenant: cli.tenant.clone(),
            id: 0,
        },
    }
}

/// What a command prints: a table for people, JSON for scripts.
pub struct Printed {
    pub json: Value,
    pub table: String,
}

fn volume(v: pb::Volume) -> Printed {
    Printed {
        table: volume_detail(&v),
        json: volume_json(&v),
    }
}

pub async fn run(cli: &Cli) -> anyhow::Result<Printed> {
    let mut c = connect(&cli.control).await?;
    let st = |e: tonic::Status| anyhow::anyhow!("{}", e.message());
    Ok(match &cli.command {
        Command::Volume(VolumeCmd::Create { name, size, copies }) => {
            let size_bytes = parse_size(size).map_err(anyhow::Error::msg)?;
            let req = pb::CreateVolumeRequest {
                name: name.clone(),
                tenant: cli.tenant.clone(),
                size_bytes,
                copies: *copies,
            };
            volume(c.create_volume(req).await.map_err(st)?.into_inner())
        }
        Command::Volume(VolumeCmd::List) => {
            let vs = c
                .list_volumes(pb::ListVolumesRequest {
                    tenant: cli.tenant.clone(),
                })
                .await
                .map_err(st)?
                .into_inner()
                .volumes;
            Printed {
                table: table(
                    &VOLUME_HEADERS,
                    &vs.iter().map(volume_row).collect::<Vec<_>>(),
                ),
                json: Value::Array(vs.iter().map(volume_json).collect()),
            }
        }
        Command::Volume(VolumeCmd::Show { volume: v }) => volume(
            c.describe_volume(pb::DescribeVolumeRequest {
                volume: Some(vref(cli, v)),
            })
            .await
            .map_err(st)?
            .into_inner(),
        ),
        Command::Volume(VolumeCmd::Resize { volume: v, size }) => {
            let new_size_bytes = parse_size(size).map_err(anyhow::Error::msg)?;
            let req = pb::ResizeVolumeRequest {
                volume: Some(vref(cli, v)),
                new_size_bytes,
            };
            volume(c.resize_volume(req).await.map_err(st)?.into_inner())
        }
        Command::Volume(VolumeCmd::Attach {
            volume: v,
            node,
            read_only,
            force,
        }) => {
            let req = pb::AttachVolumeRequest {
                volume: Some(vref(cli, v)),
                node_id: node.clone(),
                read_only: *read_only,
                force: *force,
            };
            volume(c.attach_volume(req).await.map_err(st)?.into_inner())
        }
        Command::Volume(VolumeCmd::Detach { volume: v }) => volume(
            c.detach_volume(pb::DetachVolumeRequest {
                volume: Some(vref(cli, v)),
            })
            .await
            .map_err(st)?
            .into_inner(),
        ),
        Command::Volume(VolumeCmd::Delete { volume: v }) => {
            c.delete_volume(pb::DeleteVolumeRequest {
                volume: Some(vref(cli, v)),
            })
            .await
            .map_err(st)?;
            Printed {
                table: format!("deleted volume {v}"),
                json: serde_json::json!({"deleted": v}),
            }
        }
        Command::Server(ServerCmd::List) => {
            let ss = c
                .list_storage_servers(pb::ListStorageServersRequest {})
                .await
                .map_err(st)?
                .into_inner()
                .servers;
            let rows = ss
                .iter()
                .map(|s| {
                    vec![
                        s.server_id.clone(),
                        s.state.clone(),
                        s.zone.clone(),
                        s.data_address.clone(),
                        s.copies.to_string(),
                        format_size(s.allocated_bytes),
                        format_size(s.free_bytes),
                    ]
                })
                .collect::<Vec<_>>();
            Printed {
                table: table(
                    &[
                        "ID",
                        "STATE",
                        "ZONE",
                        "DATA ADDRESS",
                        "COPIES",
                        "ALLOCATED",
                        "FREE",
                    ],
                    &rows,
                ),
                json: Value::Array(ss.iter().map(server_json).collect()),
            }
        }
        Command::Server(ServerCmd::Drain { server_id }) => {
            let s = c
                .drain_storage_server(pb::DrainStorageServerRequest {
                    server_id: server_id.clone(),
                })
                .await
                .map_err(st)?
                .into_inner();
            Printed {
                table: format!(
                    "server {} is {} ({} copies still on it)",
                    s.server_id, s.state, s.copies
                ),
                json: server_json(&s),
            }
        }
        Command::Node(NodeCmd::List) => {
            let ns = c
                .list_nodes(pb::ListNodesRequest {})
                .await
                .map_err(st)?
                .into_inner()
                .nodes;
            let rows = ns
                .iter()
                .map(|n| {
                    vec![
                        n.node_id.clone(),
                        n.state.clone(),
                        n.address.clone(),
                        n.attachments.len().to_string(),
                    ]
                })
                .collect::<Vec<_>>();
            Printed {
                table: table(&["ID", "STATE", "ADDRESS", "ATTACHMENTS"], &rows),
                json: Value::Array(ns.iter().map(node_json).collect()),
            }
        }
        Command::Up(_) => anyhow::bail!("`up` is not a control-service call"),
    })
}

pub fn print(cli: &Cli, p: &Printed) {
    match cli.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&p.json).unwrap_or_default()
        ),
        Output::Table => println!("{}", p.table),
    }
}
