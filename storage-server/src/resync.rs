//! Full copy of a primary to a syncing mirror while writes continue.
//!
//! Each chunk is read from the primary and queued on the mirror's ordered
//! replica stream **under the volume's ordering lock** — the same lock under
//! which every guest mutation is applied and queued. So on the mirror, a
//! chunk lands either before a concurrent write to the same range (which then
//! overwrites it) or after that write was already applied to the primary (so
//! the chunk carries the new data): a copied chunk can never undo a newer
//! write. Holes are skipped (`SEEK_DATA`); the new copy starts all zeroes.
//! When every chunk is acknowledged and flushed, the mirror is reported
//! `synced`, and the control service may move it into the in-sync set.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use basalt_proto::wire::{Flags, Header, Opcode, Status};
use tokio::sync::oneshot;

use crate::copy::Copy;
use crate::mirror::MirrorLink;

const CHUNK: u64 = 1 << 20;
const WINDOW: usize = 8;

/// Starts full copies for new syncing mirrors and stops those that left.
pub fn reconcile(copy: &Arc<Copy>, syncing: &[Arc<MirrorLink>]) {
    let mut tasks = copy.resyncs.lock().unwrap_or_else(|e| e.into_inner());
    let wanted: Vec<&str> = syncing.iter().map(|l| l.peer.server_id.as_str()).collect();
    tasks.retain(|id, t| {
        let keep = wanted.contains(&id.as_str());
        if !keep {
            t.abort();
        }
        keep
    });
    copy.synced
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|id| wanted.contains(&id.as_str()));
    for link in syncing {
        let id = link.peer.server_id.clone();
        if tasks.get(&id).is_some_and(|t| !t.is_finished()) {
            continue;
        }
        if copy
            .synced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
        {
            continue;
        }
        tasks.insert(id, tokio::spawn(run(copy.clone(), link.clone())));
    }
}

async fn run(copy: Arc<Copy>, link: Arc<MirrorLink>) {
    let id = link.peer.server_id.clone();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        link.wait_connected().await;
        tracing::info!(volume = copy.volume_id, mirror = %id, attempt, "full copy to syncing mirror started");
        match copy_all(&copy, &link).await {
            Ok(bytes) => {
                copy.synced
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone());
                tracing::info!(volume = copy.volume_id, mirror = %id, bytes, "full copy done: mirror is in sync");
                return;
            }
            Err(s) => {
                tracing::warn!(volume = copy.volume_id, mirror = %id, ?s, "full copy interrupted; starting over");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn ack(rx: oneshot::Receiver<Status>) -> Result<(), Status> {
    match tokio::time::timeout(Duration::from_secs(10), rx).await {
        Ok(Ok(Status::Ok)) => Ok(()),
        Ok(Ok(s)) => Err(s),
        _ => Err(Status::MirrorUnavailable),
    }
}

async fn copy_all(copy: &Arc<Copy>, link: &MirrorLink) -> Result<u64, Status> {
    let mut pending: VecDeque<oneshot::Receiver<Status>> = VecDeque::new();
    let mut sent = 0u64;
    let mut offset = 0u64;
    let mut buf = vec![0u8; CHUNK as usize];
    while let Some((start, end)) = copy.next_data(offset).map_err(|_| Status::IoError)? {
        let mut pos = start;
        while pos < end {
            let len = (end - pos).min(CHUNK) as usize;
            let rx = {
                let _order = copy.order.lock().unwrap_or_else(|e| e.into_inner());
                copy.read_at(pos, &mut buf[..len])
                    .map_err(|_| Status::IoError)?;
                let h = Header {
                    offset: pos,
                    length: len as u32,
                    flags: Flags(Flags::REPLICA),
                    ..Header::request(Opcode::Write, 0, copy.volume_id, copy.epoch())
                }
                .with_payload(&buf[..len]);
                link.send(h, &buf[..len])
            };
            pending.push_back(rx);
            if pending.len() >= WINDOW {
                if let Some(rx) = pending.pop_front() {
                    ack(rx).await?;
                }
            }
            pos += len as u64;
            sent += len as u64;
            copy.resync_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        offset = end;
        if offset >= copy.size() {
            break;
        }
    }
    while let Some(rx) = pending.pop_front() {
        ack(rx).await?;
    }
    let mut flush = Header::request(Opcode::Flush, 0, copy.volume_id, copy.epoch());
    flush.flags = Flags(Flags::REPLICA);
    ack(link.send(flush, &[])).await?;
    Ok(sent)
}
