//! `basalt snapshot import | export | diff`: raw images in and out of
//! snapshots through the direct block API.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use basalt_proto::control as pb;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use crate::args::Cli;
use crate::commands::{st, Printed};
use crate::progress::{Reporter, Status};
use crate::size::format_size;
use crate::snapshot::sref;

/// Blocks sent or fetched at once.
const PARALLEL: usize = 4;
const BLOCK: u64 = 512 << 10;

/// A block sent: its index, SHA-256 and length.
type Sent = (u64, [u8; 32], usize);

fn block_len(size: u64, index: u64) -> usize {
    (size - index * BLOCK).min(BLOCK) as usize
}

/// Every block of a complete snapshot (index, SHA-256), all pages.
async fn all_blocks(
    c: &mut crate::auth::Client,
    snap: &pb::SnapshotRef,
) -> anyhow::Result<(u64, Vec<(u64, Vec<u8>)>)> {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let r = c
            .list_snapshot_blocks(pb::ListSnapshotBlocksRequest {
                snapshot: Some(snap.clone()),
                start_index: start,
                max_results: 0,
            })
            .await
            .map_err(st)?
            .into_inner();
        out.extend(r.blocks.into_iter().map(|b| (b.index, b.sha256)));
        if r.next_index == 0 {
            return Ok((r.size_bytes, out));
        }
        if r.next_index <= start {
            anyhow::bail!("the control service returned a page that does not advance");
        }
        start = r.next_index;
    }
}

fn read_block(f: &File, size: u64, index: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; block_len(size, index)];
    f.read_exact_at(&mut buf, index * BLOCK)?;
    Ok(buf)
}

pub async fn import(
    cli: &Cli,
    c: &mut crate::auth::Client,
    file: &Path,
    name: &str,
    destination: Option<&str>,
    parent: Option<&str>,
) -> anyhow::Result<Printed> {
    let f = Arc::new(
        File::open(file).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?,
    );
    let size = f.metadata()?.len();
    if size == 0 || size % 4096 != 0 {
        anyhow::bail!(
            "{} is {size} bytes: a raw image must be a non-zero multiple of 4096 bytes (pad it, or convert it with qemu-img convert -O raw)",
            file.display()
        );
    }
    // Blocks the parent holds, by index: those equal in the file are not sent.
    let known: std::collections::HashMap<u64, Vec<u8>> = match parent {
        Some(p) => all_blocks(c, &sref(cli, p)).await?.1.into_iter().collect(),
        None => Default::default(),
    };
    let s = c
        .start_snapshot(pb::StartSnapshotRequest {
            name: name.to_owned(),
            tenant: cli.tenant.clone(),
            size_bytes: size,
            parent: parent.map(|p| sref(cli, p)),
            destination: destination.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(st)?
        .into_inner();
    let blocks = size.div_ceil(BLOCK);
    let mut bar = Reporter::new(format!("import {name}"), "sent");
    let mut status = Status {
        state: "IMPORTING".into(),
        done: 0,
        total: blocks,
        bytes: 0,
    };
    let mut put: std::collections::BTreeMap<u64, [u8; 32]> = Default::default();
    let mut tasks: JoinSet<anyhow::Result<Option<Sent>>> = JoinSet::new();
    let mut next = 0u64;
    loop {
        while next < blocks && tasks.len() < PARALLEL {
            let (f, mut cl, id, known) = (f.clone(), c.clone(), s.id, known.get(&next).cloned());
            let index = next;
            tasks.spawn(async move {
                let data =
                    tokio::task::spawn_blocking(move || read_block(&f, size, index)).await??;
                let sha: [u8; 32] = Sha256::digest(&data).into();
                let zero = data.iter().all(|&b| b == 0);
                // Unchanged from the parent (or zero, with no block in the
                // parent): nothing to send.
                let same = match &known {
                    Some(k) => k.as_slice() == sha,
                    None => zero,
                };
                if same {
                    return Ok(None);
                }
                let len = data.len();
                cl.put_snapshot_block(pb::PutSnapshotBlockRequest {
                    snapshot_id: id,
                    block_index: index,
                    data,
                    sha256: sha.to_vec(),
                })
                .await
                .map_err(|e| anyhow::anyhow!("block {index}: {}", e.message()))?;
                Ok(Some((index, sha, len)))
            });
            next += 1;
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        match done? {
            Ok(Some((index, sha, len))) => {
                put.insert(index, sha);
                status.bytes += len as u64;
            }
            Ok(None) => {}
            Err(e) => {
                bar.finish(&status, false);
                anyhow::bail!(
                    "{e}; snapshot {name} (id {}) stays OPEN: run the import again with the same name after deleting it (basalt snapshot delete {name})",
                    s.id
                );
            }
        }
        status.done += 1;
        bar.update(&status);
    }
    let mut h = Sha256::new();
    for sha in put.values() {
        h.update(sha);
    }
    let s = c
        .complete_snapshot(pb::CompleteSnapshotRequest {
            snapshot_id: s.id,
            changed_blocks: put.len() as u64,
            checksum: h.finalize().to_vec(),
        })
        .await
        .map_err(st)?
        .into_inner();
    status.state = s.state.clone();
    bar.finish(&status, true);
    Ok(Printed {
        table: format!(
            "snapshot {} (id {}) imported from {}: {} of {blocks} blocks sent ({})",
            s.name,
            s.id,
            file.display(),
            put.len(),
            format_size(status.bytes)
        ),
        json: json!({"id": s.id, "name": s.name, "state": s.state, "size_bytes": size,
                     "blocks_sent": put.len(), "bytes_sent": status.bytes}),
    })
}

pub async fn export(
    cli: &Cli,
    c: &mut crate::auth::Client,
    snapshot: &str,
    file: &Path,
) -> anyhow::Result<Printed> {
    let snap = sref(cli, snapshot);
    let (size, blocks) = all_blocks(c, &snap).await?;
    let out =
        File::create(file).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", file.display()))?;
    // Zero blocks are holes.
    out.set_len(size)?;
    let out = Arc::new(out);
    let mut bar = Reporter::new(format!("export {snapshot}"), "received");
    let mut status = Status {
        state: "EXPORTING".into(),
        done: 0,
        total: blocks.len() as u64,
        bytes: 0,
    };
    let mut tasks: JoinSet<anyhow::Result<usize>> = JoinSet::new();
    let mut it = blocks.into_iter();
    loop {
        while tasks.len() < PARALLEL {
            let Some((index, sha)) = it.next() else { break };
            let (mut cl, out, snap) = (c.clone(), out.clone(), snap.clone());
            tasks.spawn(async move {
                let r = cl
                    .get_snapshot_block(pb::GetSnapshotBlockRequest {
                        snapshot: Some(snap),
                        block_index: index,
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("block {index}: {}", e.message()))?
                    .into_inner();
                let got: [u8; 32] = Sha256::digest(&r.data).into();
                if got.as_slice() != sha || r.data.len() != block_len(size, index) {
                    anyhow::bail!("block {index}: the data received does not match its SHA-256");
                }
                let n = r.data.len();
                tokio::task::spawn_blocking(move || out.write_all_at(&r.data, index * BLOCK))
                    .await??;
                Ok(n)
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        match done? {
            Ok(n) => status.bytes += n as u64,
            Err(e) => {
                bar.finish(&status, false);
                return Err(e);
            }
        }
        status.done += 1;
        bar.update(&status);
    }
    out.sync_all()?;
    status.state = "COMPLETE".into();
    bar.finish(&status, true);
    Ok(Printed {
        table: format!(
            "snapshot {snapshot} exported to {} ({}, {} blocks of data)",
            file.display(),
            format_size(size),
            status.total
        ),
        json: json!({"file": file.display().to_string(), "size_bytes": size,
                     "blocks": status.total, "bytes": status.bytes}),
    })
}

fn short(sha: &[u8]) -> String {
    if sha.is_empty() {
        "zero".into()
    } else {
        sha[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

pub async fn diff(
    cli: &Cli,
    c: &mut crate::auth::Client,
    first: &str,
    second: &str,
) -> anyhow::Result<Printed> {
    let mut all = Vec::new();
    let mut start = 0;
    loop {
        let r = c
            .list_changed_blocks(pb::ListChangedBlocksRequest {
                first: Some(sref(cli, first)),
                second: Some(sref(cli, second)),
                start_index: start,
                max_results: 0,
            })
            .await
            .map_err(st)?
            .into_inner();
        all.extend(r.blocks);
        if r.next_index == 0 {
            break;
        }
        if r.next_index <= start {
            anyhow::bail!("the control service returned a page that does not advance");
        }
        start = r.next_index;
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|b| {
            vec![
                b.index.to_string(),
                (b.index * BLOCK).to_string(),
                short(&b.first_sha256),
                short(&b.second_sha256),
            ]
        })
        .collect();
    let mut table = crate::output::table(&["BLOCK", "OFFSET", first, second], &rows);
    table.push_str(&format!(
        "\n{} blocks of 512 KiB differ ({})",
        all.len(),
        format_size(all.len() as u64 * BLOCK)
    ));
    let hex = |s: &[u8]| s.iter().map(|b| format!("{b:02x}")).collect::<String>();
    Ok(Printed {
        table,
        json: Value::Array(
            all.iter()
                .map(|b| {
                    json!({"index": b.index, "offset": b.index * BLOCK,
                           "first_sha256": hex(&b.first_sha256),
                           "second_sha256": hex(&b.second_sha256)})
                })
                .collect(),
        ),
    })
}
