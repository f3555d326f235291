//! `basalt volume upload | download`: a raw image into or out of a volume
//! that is not attached read-write, through the control service's volume
//! block API (512 KiB blocks, each checked by its SHA-256).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use basalt_proto::control as pb;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::args::Cli;
use crate::commands::{st, vref, Printed};
use crate::progress::{Reporter, Status};
use crate::size::format_size;

const BLOCK: u64 = 512 << 10;

async fn size_of(cli: &Cli, c: &mut crate::auth::Client, volume: &str) -> anyhow::Result<u64> {
    Ok(c.describe_volume(pb::DescribeVolumeRequest {
        volume: Some(vref(cli, volume)),
    })
    .await
    .map_err(st)?
    .into_inner()
    .size_bytes)
}

async fn read_block(
    cli: &Cli,
    c: &mut crate::auth::Client,
    volume: &str,
    index: u64,
) -> anyhow::Result<Vec<u8>> {
    let r = c
        .read_volume_block(pb::ReadVolumeBlockRequest {
            volume: Some(vref(cli, volume)),
            block_index: index,
        })
        .await
        .map_err(|e| anyhow::anyhow!("block {index}: {}", e.message()))?
        .into_inner();
    if Sha256::digest(&r.data).as_slice() != r.sha256 {
        anyhow::bail!("block {index}: the data received does not match its SHA-256");
    }
    Ok(r.data)
}

pub async fn upload(
    cli: &Cli,
    c: &mut crate::auth::Client,
    volume: &str,
    file: &Path,
) -> anyhow::Result<Printed> {
    let f = File::open(file).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?;
    let len = f.metadata()?.len();
    let size = size_of(cli, c, volume).await?;
    if len > size {
        anyhow::bail!(
            "{} ({}) is larger than volume {volume} ({}); grow the volume first",
            file.display(),
            format_size(len),
            format_size(size)
        );
    }
    let blocks = len.div_ceil(BLOCK);
    let mut bar = Reporter::new(format!("upload to {volume}"), "sent");
    let mut status = Status {
        state: "UPLOADING".into(),
        done: 0,
        total: blocks,
        bytes: 0,
    };
    for index in 0..blocks {
        let off = index * BLOCK;
        let block_len = (size - off).min(BLOCK) as usize;
        let in_file = (len - off).min(BLOCK) as usize;
        // The file's last block may end inside a volume block: the rest of
        // that block keeps the volume's data.
        let mut data = if in_file < block_len {
            read_block(cli, c, volume, index).await?
        } else {
            vec![0u8; block_len]
        };
        f.read_exact_at(&mut data[..in_file], off)?;
        let sha = Sha256::digest(&data).to_vec();
        let r = c
            .write_volume_block(pb::WriteVolumeBlockRequest {
                volume: Some(vref(cli, volume)),
                block_index: index,
                data,
                sha256: sha,
            })
            .await;
        if let Err(e) = r {
            bar.finish(&status, false);
            anyhow::bail!(
                "block {index}: {}; blocks before it were written, run the upload again to finish",
                e.message()
            );
        }
        status.done += 1;
        status.bytes += in_file as u64;
        bar.update(&status);
    }
    status.state = "COMPLETE".into();
    bar.finish(&status, true);
    Ok(Printed {
        table: format!(
            "uploaded {} ({}) to volume {volume}",
            file.display(),
            format_size(len)
        ),
        json: json!({"volume": volume, "bytes": len, "blocks": blocks}),
    })
}

pub async fn download(
    cli: &Cli,
    c: &mut crate::auth::Client,
    volume: &str,
    file: &Path,
) -> anyhow::Result<Printed> {
    let size = size_of(cli, c, volume).await?;
    let out =
        File::create(file).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", file.display()))?;
    out.set_len(size)?;
    let blocks = size.div_ceil(BLOCK);
    let mut bar = Reporter::new(format!("download of {volume}"), "received");
    let mut status = Status {
        state: "DOWNLOADING".into(),
        done: 0,
        total: blocks,
        bytes: 0,
    };
    for index in 0..blocks {
        let data = match read_block(cli, c, volume, index).await {
            Ok(d) => d,
            Err(e) => {
                bar.finish(&status, false);
                return Err(e);
            }
        };
        if data.iter().any(|&b| b != 0) {
            out.write_all_at(&data, index * BLOCK)?;
        }
        status.done += 1;
        status.bytes += data.len() as u64;
        bar.update(&status);
    }
    out.sync_all()?;
    status.state = "COMPLETE".into();
    bar.finish(&status, true);
    Ok(Printed {
        table: format!(
            "downloaded volume {volume} ({}) to {}",
            format_size(size),
            file.display()
        ),
        json: json!({"volume": volume, "bytes": size, "file": file.display().to_string()}),
    })
}
