//! Filling a syncing mirror while writes continue: a full copy, or — for a
//! peer that comes back with its old copy (`Peer.delta`) and for which this
//! primary kept a dirty-region map (see `dirty`) — only the regions written
//! since it left.
//!
//! Each piece is read from the primary and queued on the mirror's ordered
//! replica stream **under the volume's ordering lock** — the same lock under
//! which every guest mutation is applied and queued. So on the mirror, a
//! piece lands either before a concurrent write to the same range (which then
//! overwrites it) or after that write was already applied to the primary (so
//! the piece carries the new data): a copied piece can never undo a newer
//! write. The target may hold old data (a returning copy), so a range that
//! is a hole on the primary is sent as a Discard, not skipped.
//!
//! When every piece is acknowledged and flushed and the mirror missed no
//! forwarded mutation meanwhile, the mirror is reported `synced`, and the
//! control service may move it into the in-sync set. The task then stays:
//! should the mirror miss a forwarded mutation later (its link fails), it
//! is no longer reported `synced` until the missed regions were sent again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use basalt_proto::wire::{Flags, Header, Opcode, Status};
use tokio::sync::oneshot;

use crate::copy::Copy;
use crate::mirror::MirrorLink;

/// Largest data piece (one replica write frame).
const CHUNK: u64 = 1 << 20;
/// Largest hole sent as one Discard frame.
const MAX_DISCARD: u64 = 1 << 30;
/// Pieces in flight per mirror.
const WINDOW: usize = 8;

/// Starts resyncs for new syncing mirrors and stops those that left.
pub fn reconcile(copy: &Arc<Copy>, syncing: &[Arc<MirrorLink>]) {
    let meta = copy.meta();
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
        let peer = meta.syncing.iter().find(|p| p.server_id == id);
        let delta = peer.is_some_and(|p| p.delta);
        let seed = peer.map_or(0, |p| p.seed_snapshot);
        tasks.insert(
            id,
            tokio::spawn(run(copy.clone(), link.clone(), delta, seed)),
        );
    }
}

async fn run(copy: Arc<Copy>, link: Arc<MirrorLink>, delta: bool, seed: u64) {
    let id = link.peer.server_id.clone();
    let mut misses = copy.dirty.misses();
    // A copy loading a snapshot is always filled block by block (see
    // `hydrating_piece`): a delta would not carry which blocks are present.
    let mut full = !(delta && copy.dirty.has(&id)) || copy.hydration().is_some();
    if delta && full {
        tracing::info!(volume = copy.volume_id, mirror = %id, "no dirty-region map for the returning mirror (this primary restarted or never saw it leave): full copy");
    }
    // A mirror seeded from snapshot `seed` holds that snapshot's content:
    // it needs only the blocks written since the snapshot's point (a
    // superset, from this copy's change map), as long as no attempt failed.
    let mut seeded = (seed != 0 && copy.hydration().is_none())
        .then(|| {
            copy.snap
                .changes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .since(seed)
        })
        .flatten();
    if seed != 0 && seeded.is_none() {
        tracing::info!(volume = copy.volume_id, mirror = %id, snapshot = seed, "no change map for the seed snapshot on this primary: full copy");
    }
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        link.wait_connected().await;
        // Everything the mirror missed so far; later misses go to a fresh
        // map. Kept by the tracker until this pass succeeds.
        let snapshot = copy.dirty.take(&id);
        let (kind, ranges, counter) = if let Some(bits) = seeded.take().filter(|_| full) {
            use crate::snap::bits::BLOCK;
            let size = copy.size();
            let mut ranges: Vec<(u64, u64)> = Vec::new();
            for b in bits.ones(size.div_ceil(BLOCK)) {
                let (s, e) = (b * BLOCK, ((b + 1) * BLOCK).min(size));
                match ranges.last_mut() {
                    Some(last) if last.1 == s => last.1 = e,
                    _ => ranges.push((s, e)),
                }
            }
            ("seeded resync", ranges, &copy.resync_bytes)
        } else if full {
            ("full copy", vec![(0, copy.size())], &copy.resync_bytes)
        } else {
            let mut ranges = snapshot.map(|m| m.ranges(copy.size())).unwrap_or_default();
            if copy.hydration().is_some() {
                // A loading copy's mirror learns presence only from whole
                // blocks: resend the whole blocks the missed regions touch.
                ranges = whole_blocks(&ranges, copy.size());
            }
            ("delta resync", ranges, &copy.delta_resync_bytes)
        };
        let dirty: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        tracing::info!(volume = copy.volume_id, mirror = %id, attempt, dirty_bytes = dirty, "{kind} to syncing mirror started");
        match send_ranges(&copy, &link, &ranges, counter).await {
            Ok(bytes) => {
                copy.dirty.finish(&id);
                full = false;
                if copy.dirty.pending(&id) {
                    tracing::info!(volume = copy.volume_id, mirror = %id, "mirror missed mutations during the {kind}: sending those regions");
                    continue;
                }
                copy.synced
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone());
                tracing::info!(volume = copy.volume_id, mirror = %id, bytes, "{kind} done: mirror is in sync");
                // Stay in sync: a forwarded mutation the mirror misses from
                // now on takes it out of `synced` until it is resent.
                loop {
                    if misses.changed().await.is_err() {
                        return;
                    }
                    if copy.dirty.pending(&id) {
                        copy.synced
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id);
                        tracing::warn!(volume = copy.volume_id, mirror = %id, "syncing mirror missed a mutation after its resync: no longer synced until the missed regions are resent");
                        break;
                    }
                }
            }
            Err(s) => {
                tracing::warn!(volume = copy.volume_id, mirror = %id, ?s, "{kind} interrupted; retrying");
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

/// Sends `ranges` of the primary to the mirror (data as writes, holes as
/// discards), then a flush. Returns the data bytes sent (also added to
/// `counter` as they go).
async fn send_ranges(
    copy: &Arc<Copy>,
    link: &MirrorLink,
    ranges: &[(u64, u64)],
    counter: &AtomicU64,
) -> Result<u64, Status> {
    let mut pending: VecDeque<oneshot::Receiver<Status>> = VecDeque::new();
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK as usize];
    for &(start, end) in ranges {
        let mut pos = start;
        while pos < end {
            let (rx, len, data) = {
                let _order = copy.order.lock().unwrap_or_else(|e| e.into_inner());
                // Re-read under the lock: the volume may have grown.
                let end = end.min(copy.size());
                if pos >= end {
                    break;
                }
                match copy.hydration() {
                    Some(h) => hydrating_piece(copy, &h, link, pos, end, &mut buf)?,
                    None => piece(copy, link, pos, end, &mut buf)?,
                }
            };
            pending.push_back(rx);
            if pending.len() >= WINDOW {
                if let Some(rx) = pending.pop_front() {
                    ack(rx).await?;
                }
            }
            pos += len;
            if data {
                sent += len;
                counter.fetch_add(len, Ordering::Relaxed);
            }
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

/// `ranges` widened to whole snapshot blocks (merged, clipped to `size`).
fn whole_blocks(ranges: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    use crate::snap::bits::BLOCK;
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(s, e) in ranges {
        let (s, e) = (
            s / BLOCK * BLOCK,
            e.div_ceil(BLOCK).saturating_mul(BLOCK).min(size),
        );
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// [`piece`] for a copy loading a snapshot: whole blocks only, so that the
/// mirror learns which are present (a full-block write makes a block
/// present on any copy). A present block is sent as one write, holes
/// included; a block not present is skipped (it is zeroes on every copy
/// and will be installed through the replica stream). `buf` must hold a
/// block.
fn hydrating_piece(
    copy: &Copy,
    h: &crate::snap::hydrate::Hydration,
    link: &MirrorLink,
    pos: u64,
    end: u64,
    buf: &mut [u8],
) -> Result<(oneshot::Receiver<Status>, u64, bool), Status> {
    use crate::snap::bits::BLOCK;
    let b = pos / BLOCK;
    let block_end = ((b + 1) * BLOCK).min(copy.size());
    let len = block_end - pos;
    if !pos.is_multiple_of(BLOCK) || end < block_end || !h.presence.is_present(b) {
        // Nothing to send for this block: an empty write keeps the window
        // logic uniform.
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Status::Ok);
        return Ok((rx, len.min(end - pos).max(1), false));
    }
    let buf = &mut buf[..len as usize];
    copy.read_at(pos, buf).map_err(|_| Status::IoError)?;
    let hdr = Header {
        offset: pos,
        length: len as u32,
        flags: Flags(Flags::REPLICA),
        ..Header::request(Opcode::Write, 0, copy.volume_id, copy.epoch())
    }
    .with_payload(buf);
    Ok((link.send(hdr, buf), len, true))
}

/// Queues the piece of `pos..end` that starts at `pos`: data up to one
/// chunk, or a hole up to the next data. Called under the ordering lock.
/// Returns the acknowledgement, the piece's length and whether it was data.
fn piece(
    copy: &Copy,
    link: &MirrorLink,
    pos: u64,
    end: u64,
    buf: &mut [u8],
) -> Result<(oneshot::Receiver<Status>, u64, bool), Status> {
    let next = copy.next_data(pos).map_err(|_| Status::IoError)?;
    let request = |op| Header {
        flags: Flags(Flags::REPLICA),
        ..Header::request(op, 0, copy.volume_id, copy.epoch())
    };
    match next {
        Some((data_start, data_end)) if data_start <= pos => {
            let len = data_end.min(end).min(pos + CHUNK) - pos;
            let buf = &mut buf[..len as usize];
            copy.read_at(pos, buf).map_err(|_| Status::IoError)?;
            let h = Header {
                offset: pos,
                length: len as u32,
                ..request(Opcode::Write)
            }
            .with_payload(buf);
            Ok((link.send(h, buf), len, true))
        }
        next => {
            let hole_end = next.map_or(end, |(s, _)| s.min(end));
            let len = (hole_end - pos).min(MAX_DISCARD);
            let h = Header {
                offset: pos,
                length: len as u32,
                ..request(Opcode::Discard)
            };
            Ok((link.send(h, &[]), len, false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::whole_blocks;
    use crate::snap::bits::BLOCK;

    #[test]
    fn missed_regions_widen_to_whole_blocks() {
        let size = 3 * BLOCK + 4096;
        assert_eq!(
            whole_blocks(&[(4096, 8192), (BLOCK + 1, BLOCK + 2)], size),
            vec![(0, 2 * BLOCK)]
        );
        assert_eq!(
            whole_blocks(&[(3 * BLOCK + 512, 3 * BLOCK + 1024)], size),
            vec![(3 * BLOCK, size)]
        );
        assert_eq!(whole_blocks(&[], size), vec![]);
    }
}
