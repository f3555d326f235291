//! Snapshot commands, and the `--wait` of snapshot uploads and of volumes
//! loading a snapshot (hydration).

use std::time::{Duration, Instant};

use basalt_proto::control as pb;
use serde_json::Value;

use crate::args::{Cli, SnapshotCmd};
use crate::commands::{print, st, vref, Printed};
use crate::output::*;
use crate::progress::{Reporter, Status};

/// How often `--wait` asks the control service.
const POLL: Duration = Duration::from_millis(200);
/// How long `--wait` rides out an unreachable control service (restarting).
const RETRY_FOR: Duration = Duration::from_secs(30);

/// A snapshot by id (all digits) or by name within the tenant.
pub fn sref(cli: &Cli, s: &str) -> pb::SnapshotRef {
    match crate::commands::ref_id(s) {
        Some(id) => pb::SnapshotRef {
            id,
            ..Default::default()
        },
        None => pb::SnapshotRef {
            id: 0,
            name: s.to_owned(),
            tenant: cli.tenant.clone(),
        },
    }
}

fn snapshot(s: &pb::Snapshot) -> Printed {
    Printed {
        table: snapshot_detail(s),
        json: snapshot_json(s),
    }
}

pub async fn run(
    cli: &Cli,
    c: &mut crate::auth::Client,
    cmd: &SnapshotCmd,
) -> anyhow::Result<Printed> {
    Ok(match cmd {
        SnapshotCmd::Create {
            volume,
            name,
            destination,
            wait,
        } => {
            let req = pb::CreateSnapshotRequest {
                volume: Some(vref(cli, volume)),
                name: name.clone(),
                destination: destination.clone().unwrap_or_default(),
            };
            let s = c.create_snapshot(req).await.map_err(st)?.into_inner();
            if !*wait {
                return Ok(snapshot(&s));
            }
            let s = wait_snapshot(c, s).await?;
            if s.state == "FAILED" {
                // The snapshot as it ended on stdout, the reason as the error.
                print(cli, &snapshot(&s));
                anyhow::bail!(
                    "snapshot {} (id {}) failed: {}",
                    s.name,
                    s.id,
                    if s.failure.is_empty() {
                        "no reason given"
                    } else {
                        &s.failure
                    }
                );
            }
            snapshot(&s)
        }
        SnapshotCmd::List { volume, page_size } => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = c
                    .list_snapshots(pb::ListSnapshotsRequest {
                        tenant: cli.tenant.clone(),
                        volume: volume.as_deref().map(|v| vref(cli, v)),
                        page_size: page_size.unwrap_or(0),
                        page_token: page_token.clone(),
                    })
                    .await
                    .map_err(st)?
                    .into_inner();
                all.extend(r.snapshots);
                if r.next_page_token.is_empty() {
                    break;
                }
                if r.next_page_token == page_token {
                    anyhow::bail!(
                        "the control service returned the same page token twice ({page_token:?})"
                    );
                }
                page_token = r.next_page_token;
            }
            Printed {
                table: table(
                    &SNAPSHOT_HEADERS,
                    &all.iter().map(snapshot_row).collect::<Vec<_>>(),
                ),
                json: Value::Array(all.iter().map(snapshot_json).collect()),
            }
        }
        SnapshotCmd::Show { snapshot: s } => snapshot(
            &c.describe_snapshot(pb::DescribeSnapshotRequest {
                snapshot: Some(sref(cli, s)),
            })
            .await
            .map_err(st)?
            .into_inner(),
        ),
        SnapshotCmd::Delete { snapshot: s } => {
            c.delete_snapshot(pb::DeleteSnapshotRequest {
                snapshot: Some(sref(cli, s)),
            })
            .await
            .map_err(st)?;
            Printed {
                table: format!("deleted snapshot {s}"),
                json: serde_json::json!({"deleted": s}),
            }
        }
        SnapshotCmd::Import {
            file,
            name,
            destination,
            parent,
        } => {
            crate::transfer::import(
                cli,
                c,
                file,
                name,
                destination.as_deref(),
                parent.as_deref(),
            )
            .await?
        }
        SnapshotCmd::Export { snapshot: s, file } => {
            crate::transfer::export(cli, c, s, file).await?
        }
        SnapshotCmd::Copy {
            snapshot: s,
            destination,
            wait,
        } => {
            let mut snap = c
                .copy_snapshot(pb::CopySnapshotRequest {
                    snapshot: Some(sref(cli, s)),
                    destination: destination.clone(),
                })
                .await
                .map_err(st)?
                .into_inner();
            let started = Instant::now();
            while *wait && snap.copying.contains(destination) {
                tokio::time::sleep(POLL).await;
                match c
                    .describe_snapshot(pb::DescribeSnapshotRequest {
                        snapshot: Some(pb::SnapshotRef {
                            id: snap.id,
                            ..Default::default()
                        }),
                    })
                    .await
                {
                    Ok(r) => snap = r.into_inner(),
                    // The control service may be restarting.
                    Err(_) if started.elapsed() < RETRY_FOR => {}
                    Err(e) => return Err(st(e)),
                }
            }
            snapshot(&snap)
        }
        SnapshotCmd::RemoveCopy {
            snapshot: s,
            destination,
        } => snapshot(
            &c.remove_snapshot_copy(pb::RemoveSnapshotCopyRequest {
                snapshot: Some(sref(cli, s)),
                destination: destination.clone(),
            })
            .await
            .map_err(st)?
            .into_inner(),
        ),
        SnapshotCmd::Diff { first, second } => crate::transfer::diff(cli, c, first, second).await?,
    })
}

/// Consecutive failures of the polls of a `--wait`: an unreachable control
/// service is retried for [`RETRY_FOR`], any other error ends the wait.
#[derive(Default)]
struct Retry {
    since: Option<Instant>,
}

impl Retry {
    fn ok(&mut self) {
        self.since = None;
    }

    fn failed(&mut self, e: tonic::Status, r: &Reporter) -> anyhow::Result<()> {
        use tonic::Code;
        if !matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded) {
            return Err(st(e));
        }
        let since = *self.since.get_or_insert_with(|| {
            r.note(format!("{}; retrying", e.message()));
            Instant::now()
        });
        if since.elapsed() > RETRY_FOR {
            anyhow::bail!(
                "{} (still failing after {} s)",
                e.message(),
                RETRY_FOR.as_secs()
            );
        }
        Ok(())
    }
}

fn snapshot_status(s: &pb::Snapshot) -> Status {
    let p = s.progress.clone().unwrap_or_default();
    Status {
        state: s.state.clone(),
        done: p.blocks_done,
        total: p.blocks_total,
        bytes: p.bytes_uploaded,
    }
}

/// Polls a snapshot until its upload ends; returns it COMPLETE or FAILED.
pub async fn wait_snapshot(
    c: &mut crate::auth::Client,
    mut s: pb::Snapshot,
) -> anyhow::Result<pb::Snapshot> {
    let subject = if s.name.is_empty() {
        format!("snapshot {}", s.id)
    } else {
        format!("snapshot {}", s.name)
    };
    let mut r = Reporter::new(subject, "uploaded");
    let mut retry = Retry::default();
    let id = s.id;
    loop {
        let now = snapshot_status(&s);
        match s.state.as_str() {
            "COMPLETE" => {
                r.finish(&now, true);
                return Ok(s);
            }
            "FAILED" => {
                r.finish(&now, false);
                return Ok(s);
            }
            "DELETING" => {
                r.finish(&now, false);
                anyhow::bail!("snapshot {} (id {id}) is being deleted", s.name);
            }
            // CREATING, or a state this CLI does not know yet.
            _ => r.update(&now),
        }
        tokio::time::sleep(POLL).await;
        let req = pb::DescribeSnapshotRequest {
            snapshot: Some(pb::SnapshotRef {
                id,
                ..Default::default()
            }),
        };
        match c.describe_snapshot(req).await {
            Ok(x) => {
                retry.ok();
                s = x.into_inner();
            }
            Err(e) => retry.failed(e, &r)?,
        }
    }
}

fn hydration_status(h: &pb::Hydration) -> Status {
    Status {
        state: if h.complete { "COMPLETE" } else { "HYDRATING" }.into(),
        done: h.blocks_present,
        total: h.blocks_total,
        bytes: h.bytes_fetched,
    }
}

/// Polls a volume created from a snapshot until it has loaded all of it.
/// Returns at once for a volume that loads nothing.
pub async fn wait_hydration(
    c: &mut crate::auth::Client,
    mut v: pb::Volume,
) -> anyhow::Result<pb::Volume> {
    let Some(mut last) = v.hydration.clone() else {
        return Ok(v);
    };
    let mut r = Reporter::new(format!("volume {}", v.name), "fetched");
    let mut retry = Retry::default();
    loop {
        match &v.hydration {
            Some(h) => last = h.clone(),
            // The control service may drop the hydration once done.
            None => {
                last.complete = true;
                last.blocks_present = last.blocks_total;
            }
        }
        let now = hydration_status(&last);
        if last.complete {
            r.finish(&now, true);
            return Ok(v);
        }
        if v.state == "DELETING" {
            r.finish(&now, false);
            anyhow::bail!("volume {} (id {}) is being deleted", v.name, v.id);
        }
        r.update(&now);
        tokio::time::sleep(POLL).await;
        let req = pb::DescribeVolumeRequest {
            volume: Some(pb::VolumeRef {
                id: v.id,
                ..Default::default()
            }),
        };
        match c.describe_volume(req).await {
            Ok(x) => {
                retry.ok();
                v = x.into_inner();
            }
            Err(e) => retry.failed(e, &r)?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli() -> Cli {
        Cli::parse_from(["basalt", "--tenant", "t1", "snapshot", "show", "x"])
    }

    #[test]
    fn snapshot_refs() {
        let c = cli();
        assert_eq!(
            sref(&c, "42"),
            pb::SnapshotRef {
                id: 42,
                ..Default::default()
            }
        );
        for name in ["nightly", "42a", "+42", "", "99999999999999999999999"] {
            assert_eq!(
                sref(&c, name),
                pb::SnapshotRef {
                    id: 0,
                    name: name.into(),
                    tenant: "t1".into()
                },
                "{name:?}"
            );
        }
    }

    #[test]
    fn statuses() {
        let s = pb::Snapshot {
            state: "CREATING".into(),
            ..Default::default()
        };
        assert_eq!(
            snapshot_status(&s),
            Status {
                state: "CREATING".into(),
                done: 0,
                total: 0,
                bytes: 0
            }
        );
        let h = pb::Hydration {
            snapshot_id: 1,
            blocks_total: 10,
            blocks_present: 3,
            bytes_fetched: 7,
            complete: false,
            error: String::new(),
            ..Default::default()
        };
        assert_eq!(
            hydration_status(&h),
            Status {
                state: "HYDRATING".into(),
                done: 3,
                total: 10,
                bytes: 7
            }
        );
    }
}
