//! Volume, server and node commands: one gRPC call each (`--wait` polls).

use basalt_proto::control as pb;
use serde_json::Value;

use crate::args::{Cli, Command, IdentityCmd, JoinTokenCmd, NodeCmd, Output, ServerCmd, VolumeCmd};
use crate::output::*;
use crate::size::{format_size, parse_size};
use crate::snapshot::{sref, wait_hydration};

/// The id of a volume or snapshot reference that is all digits; any other
/// reference is a name.
pub fn ref_id(r: &str) -> Option<u64> {
    if r.is_empty() || !r.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    r.parse().ok()
}

/// A volume by id (all digits) or by name within the tenant.
pub fn vref(cli: &Cli, v: &str) -> pb::VolumeRef {
    match ref_id(v) {
        Some(id) => pb::VolumeRef {
            id,
            ..Default::default()
        },
        None => pb::VolumeRef {
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

/// A gRPC error as the one-line message the control service wrote.
pub fn st(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message())
}

pub async fn run(cli: &Cli) -> anyhow::Result<Printed> {
    let mut c = crate::auth::connect(cli).await?;
    Ok(match &cli.command {
        Command::Volume(VolumeCmd::Create {
            name,
            size,
            copies,
            from_snapshot,
            wait,
        }) => {
            // Without a size, a volume from a snapshot has the snapshot's (0).
            let size_bytes = match size {
                Some(size) => parse_size(size).map_err(anyhow::Error::msg)?,
                None => 0,
            };
            let req = pb::CreateVolumeRequest {
                name: name.clone(),
                tenant: cli.tenant.clone(),
                size_bytes,
                copies: *copies,
                from_snapshot: from_snapshot.as_deref().map(|s| sref(cli, s)),
                backup_policy: None,
            };
            let v = c.create_volume(req).await.map_err(st)?.into_inner();
            if *wait {
                volume(wait_hydration(&mut c, v).await?)
            } else {
                volume(v)
            }
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
        Command::Snapshot(cmd) => crate::snapshot::run(cli, &mut c, cmd).await?,
        Command::Destination(cmd) => crate::destination::run(cli, &mut c, cmd).await?,
        Command::Volume(VolumeCmd::Upload { volume: v, file }) => {
            crate::volume_io::upload(cli, &mut c, v, file).await?
        }
        Command::Volume(VolumeCmd::Download { volume: v, file }) => {
            crate::volume_io::download(cli, &mut c, v, file).await?
        }
        Command::Schedule(cmd) => crate::schedule::run(cli, &mut c, cmd).await?,
        Command::Tenant(cmd) => crate::tenancy::tenant(&mut c, cmd).await?,
        Command::Token(cmd) => crate::tenancy::token(cli, &mut c, cmd).await?,
        Command::Audit(a) => crate::tenancy::audit(cli, &mut c, a).await?,
        Command::Volume(VolumeCmd::Backup {
            volume: v,
            layout,
            destinations,
            stripe_mib,
            archive_after,
            archive_to,
            clear,
        }) => volume(
            c.set_backup_policy(pb::SetBackupPolicyRequest {
                volume: Some(vref(cli, v)),
                policy: crate::destination::policy(
                    layout,
                    destinations,
                    *stripe_mib,
                    archive_after.as_deref(),
                    archive_to.as_deref(),
                    *clear,
                )?,
            })
            .await
            .map_err(st)?
            .into_inner(),
        ),
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
        Command::JoinToken(JoinTokenCmd::Create {
            role,
            id,
            ttl_secs,
            output_file,
        }) => {
            let t = c
                .create_join_token(pb::CreateJoinTokenRequest {
                    role: role.name().into(),
                    id: id.clone(),
                    ttl_secs: *ttl_secs,
                })
                .await
                .map_err(st)?
                .into_inner();
            let mut json = serde_json::json!({
                "role": role.name(), "id": id, "expires_at": t.expires_at,
            });
            let table = match output_file {
                Some(f) => {
                    basalt_auth::files::write(f, &format!("{}\n", t.token), 0o600)?;
                    json["token_file"] = f.display().to_string().into();
                    format!(
                        "join token for {} {id} written to {} (expires at {})",
                        role.name(),
                        f.display(),
                        t.expires_at
                    )
                }
                None => {
                    json["token"] = t.token.clone().into();
                    t.token
                }
            };
            Printed { json, table }
        }
        Command::Identity(IdentityCmd::Revoke { role, id }) => {
            c.revoke_identity(pb::RevokeIdentityRequest {
                role: role.name().into(),
                id: id.clone(),
            })
            .await
            .map_err(st)?;
            Printed {
                json: serde_json::json!({"role": role.name(), "id": id, "revoked": true}),
                table: format!("{} {id} revoked", role.name()),
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn refs() {
        assert_eq!(ref_id("0"), Some(0));
        assert_eq!(ref_id("17"), Some(17));
        assert_eq!(ref_id(""), None);
        assert_eq!(ref_id("db1"), None);
        assert_eq!(ref_id("+17"), None);
        assert_eq!(ref_id("-1"), None);
        assert_eq!(ref_id(" 17"), None);
        // Too large for an id: a name (that will not be found).
        assert_eq!(ref_id("18446744073709551616"), None);
        let cli = Cli::parse_from(["basalt", "volume", "show", "x"]);
        assert_eq!(vref(&cli, "3").id, 3);
        let r = vref(&cli, "db1");
        // No --tenant: the token's own tenant (for an admin, `default`).
        assert_eq!((r.id, &*r.name, &*r.tenant), (0, "db1", ""));
        let cli = Cli::parse_from(["basalt", "--tenant", "t1", "volume", "show", "x"]);
        assert_eq!(vref(&cli, "db1").tenant, "t1");
    }

    #[test]
    fn volume_create_grammar() {
        let parse = |a: &[&str]| {
            Cli::try_parse_from([&["basalt", "volume", "create", "v"], a].concat())
                .map(|c| c.command)
        };
        assert!(parse(&[]).is_err(), "a size or a snapshot is required");
        assert!(matches!(
            parse(&["--from-snapshot", "s1", "--wait"]),
            Ok(Command::Volume(VolumeCmd::Create { size: None, wait: true, from_snapshot: Some(s), .. })) if s == "s1"
        ));
        assert!(matches!(
            parse(&["--size", "1G"]),
            Ok(Command::Volume(VolumeCmd::Create {
                size: Some(_),
                wait: false,
                from_snapshot: None,
                ..
            }))
        ));
    }

    #[test]
    fn snapshot_grammar() {
        use crate::args::SnapshotCmd;
        let parse = |a: &[&str]| {
            Cli::try_parse_from([&["basalt", "snapshot"], a].concat()).map(|c| c.command)
        };
        assert!(matches!(
            parse(&["create", "db1", "--name", "s1", "--destination", "s3", "--wait"]),
            Ok(Command::Snapshot(SnapshotCmd::Create { volume, name, destination: Some(d), wait: true }))
                if volume == "db1" && name == "s1" && d == "s3"
        ));
        assert!(parse(&["create", "db1"]).is_err(), "--name is required");
        assert!(matches!(
            parse(&["list", "--volume", "db1", "--page-size", "2"]),
            Ok(Command::Snapshot(SnapshotCmd::List {
                volume: Some(_),
                page_size: Some(2)
            }))
        ));
        assert!(parse(&["list", "--page-size", "0"]).is_err());
        assert!(parse(&["list", "--page-size", "1001"]).is_err());
        assert!(matches!(
            parse(&["show", "7"]),
            Ok(Command::Snapshot(SnapshotCmd::Show { .. }))
        ));
        assert!(matches!(
            parse(&["delete", "s1"]),
            Ok(Command::Snapshot(SnapshotCmd::Delete { .. }))
        ));
    }
}
