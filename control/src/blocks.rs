//! Direct block access to snapshots, like the EBS direct APIs: a snapshot
//! made from blocks a client sends (StartSnapshot, PutSnapshotBlock,
//! CompleteSnapshot). The control service writes the chunks in the
//! snapshot's destinations itself. Reading blocks back is in
//! `block_reads.rs`.
//!
//! A block put into an OPEN snapshot is stored as a chunk at once, and its
//! SHA-256 is persisted under `<snapshot>/<block>` in the `SnapshotBlocks`
//! table; CompleteSnapshot checks the caller's count and checksum against
//! that table, then writes the manifest. A put that is refused (bad index,
//! size or hash) changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use basalt_proto::control as pb;
use basalt_snapshot::{chunk, ChunkId, Manifest, BLOCK_SIZE};
use sha2::{Digest, Sha256};

use crate::error::{ControlError, Result};
use crate::model::*;
use crate::store::{get_json, put_json, Op, Table};
use crate::volumes::{valid_name, DEFAULT_TENANT};
use crate::Control;

fn block_key(snapshot: u64, block: u64) -> String {
    format!("{snapshot:020}/{block:020}")
}

/// Length of block `index` of an image of `size` bytes.
pub(crate) fn block_len(size: u64, index: u64) -> usize {
    (size - index * BLOCK_SIZE).min(BLOCK_SIZE) as usize
}

/// The length of block `index` of snapshot `s`, if it has one.
pub(crate) fn block_in(s: &SnapshotRecord, index: u64) -> Result<usize> {
    let blocks = s.size_bytes.div_ceil(BLOCK_SIZE);
    if index >= blocks {
        return Err(ControlError::Invalid(format!(
            "block index {index} is out of range: snapshot {} has blocks 0..{blocks}",
            s.id
        )));
    }
    Ok(block_len(s.size_bytes, index))
}

pub(crate) fn zero_sha(len: usize) -> [u8; 32] {
    Sha256::digest(vec![0u8; len]).into()
}

pub(crate) fn sha32(b: &[u8], what: &str) -> Result<[u8; 32]> {
    b.try_into().map_err(|_| {
        ControlError::Invalid(format!(
            "{what} must be 32 bytes (SHA-256), got {}",
            b.len()
        ))
    })
}

impl Control {
    fn open_snapshot(&self, id: u64) -> Result<SnapshotRecord> {
        let s: SnapshotRecord = get_json(&*self.store, Table::Snapshots, &snapshot_key(id))?
            .ok_or_else(|| ControlError::NotFound(format!("snapshot {id} does not exist")))?;
        if s.state != SnapshotState::Open {
            return Err(ControlError::Precondition(format!(
                "snapshot {id} is {:?}, not OPEN: blocks can only be put into a snapshot made by StartSnapshot, before it is completed",
                s.state
            )));
        }
        Ok(s)
    }

    pub async fn start_direct_snapshot(
        &self,
        r: pb::StartSnapshotRequest,
    ) -> Result<SnapshotRecord> {
        let tenant = if r.tenant.is_empty() {
            DEFAULT_TENANT.to_owned()
        } else {
            r.tenant.clone()
        };
        if !valid_name(&r.name) {
            return Err(ControlError::Invalid(
                "snapshot name must be 1-63 of [A-Za-z0-9._-]".into(),
            ));
        }
        if r.size_bytes == 0
            || !r.size_bytes.is_multiple_of(4096)
            || r.size_bytes > crate::MAX_VOLUME
        {
            return Err(ControlError::Invalid(format!(
                "size_bytes must be a non-zero multiple of 4096 up to {}, got {}",
                crate::MAX_VOLUME,
                r.size_bytes
            )));
        }
        let parent = match r.parent.as_ref() {
            Some(p) if p.id != 0 || !p.name.is_empty() => {
                let mut p = p.clone();
                if p.tenant.is_empty() {
                    p.tenant = tenant.clone();
                }
                let parent = self.complete_snapshot_named(&p)?;
                if parent.tenant != tenant {
                    return Err(ControlError::NotFound(format!(
                        "snapshot {} does not exist in tenant {tenant:?}",
                        parent.id
                    )));
                }
                if !r.destination.is_empty() {
                    return Err(ControlError::Invalid(
                        "a snapshot with a parent goes to the parent's destinations: leave destination empty".into(),
                    ));
                }
                Some(parent)
            }
            _ => None,
        };
        let (dests, layout, stripe) = match &parent {
            Some(p) => (p.dests(), p.layout().to_owned(), p.stripe_blocks),
            None => (
                vec![self.destination_for(&tenant, &r.destination)?.name],
                "single".to_owned(),
                0,
            ),
        };
        let _op = self.ops.lock().await;
        if self
            .snapshots()?
            .iter()
            .any(|s| s.name == r.name && s.tenant == tenant)
        {
            return Err(ControlError::AlreadyExists(format!(
                "snapshot {:?} already exists in tenant {tenant:?}",
                r.name
            )));
        }
        self.check_quota(
            &tenant,
            crate::tenants::Usage {
                snapshots: 1,
                snapshot_bytes: r.size_bytes,
                ..Default::default()
            },
        )?;
        // A sweep running now finishes before the record exists; later
        // sweeps of these destinations wait while it is OPEN.
        let mut sorted = dests.clone();
        sorted.sort();
        let mut _gc = Vec::new();
        for d in &sorted {
            _gc.push(self.gc_lock(d).lock_owned().await);
        }
        let s = SnapshotRecord {
            id: self.store.next_id("snapshot")?,
            name: r.name,
            tenant,
            volume_id: 0,
            volume_name: String::new(),
            destination: dests[0].clone(),
            destinations: dests,
            layout,
            stripe_blocks: stripe,
            parent_id: parent.as_ref().map_or(0, |p| p.id),
            state: SnapshotState::Open,
            failure: String::new(),
            size_bytes: r.size_bytes,
            created_at: now_unix(),
            completed_at: 0,
            primary: String::new(),
            epoch: 0,
            point_taken: true,
            progress: SnapshotProgressRecord {
                change_source: "DIRECT".into(),
                ..Default::default()
            },
            scheduled: false,
            copies: Vec::new(),
            copying: Vec::new(),
            copy_error: String::new(),
        };
        self.save_snapshot(&s)?;
        tracing::info!(snapshot = s.id, name = %s.name, size = s.size_bytes, parent = s.parent_id, "direct snapshot started");
        Ok(s)
    }

    pub async fn put_snapshot_block(
        &self,
        r: pb::PutSnapshotBlockRequest,
    ) -> Result<pb::PutSnapshotBlockResponse> {
        let s = self.open_snapshot(r.snapshot_id)?;
        let len = block_in(&s, r.block_index)?;
        if r.data.len() != len {
            return Err(ControlError::Invalid(format!(
                "block {} must hold exactly {len} bytes, got {}",
                r.block_index,
                r.data.len()
            )));
        }
        let want = sha32(&r.sha256, "sha256")?;
        let data = r.data;
        let (id, stored) = tokio::task::spawn_blocking(move || {
            if chunk::is_zero(&data) {
                (ChunkId::of(&data), None)
            } else {
                let (id, stored) = chunk::encode(&data);
                (id, Some(stored))
            }
        })
        .await
        .map_err(|e| ControlError::Unavailable(format!("hashing the block: {e}")))?;
        if id.0 != want {
            return Err(ControlError::Invalid(format!(
                "block {}: the SHA-256 of the data is {}, the request says {}; nothing was stored",
                r.block_index,
                id.hex(),
                hex(&want)
            )));
        }
        let lock = self.direct_lock(s.id);
        let _put = lock.read().await;
        // Completed or deleted meanwhile?
        self.open_snapshot(s.id)?;
        let mut new = false;
        let mut new_bytes = 0u64;
        if let Some(stored) = stored {
            let set = self.open_set(&s)?;
            let out = set
                .put_chunk(r.block_index, &id, &stored)
                .await
                .map_err(|e| {
                    ControlError::Unavailable(format!("storing block {}: {e}", r.block_index))
                })?;
            new = !out.reused;
            new_bytes = out.new_bytes;
        }
        // The block's SHA-256, then the bytes it newly stored.
        let mut entry = id.0.to_vec();
        entry.extend_from_slice(&new_bytes.to_le_bytes());
        self.store.apply(vec![Op::Put(
            Table::SnapshotBlocks,
            block_key(s.id, r.block_index),
            entry,
        )])?;
        Ok(pb::PutSnapshotBlockResponse {
            sha256: id.0.to_vec(),
            stored: new,
        })
    }

    /// The blocks put into open snapshot `id`: index to SHA-256.
    /// The blocks put into open snapshot `id` (index to SHA-256), and the
    /// bytes they newly stored.
    fn put_blocks(&self, id: u64) -> Result<(BTreeMap<u64, [u8; 32]>, u64)> {
        let prefix = format!("{id:020}/");
        let mut out = BTreeMap::new();
        let mut stored = 0;
        for (k, v) in self.store.list(Table::SnapshotBlocks)? {
            let Some(b) = k.strip_prefix(&prefix) else {
                continue;
            };
            let damaged = || {
                ControlError::Unavailable(format!(
                    "the control store holds a damaged block entry {k:?}"
                ))
            };
            let b = b.parse::<u64>().map_err(|_| damaged())?;
            let sha = v.get(..32).and_then(|s| <[u8; 32]>::try_from(s).ok());
            let new = v.get(32..40).and_then(|s| <[u8; 8]>::try_from(s).ok());
            let (Some(sha), Some(new)) = (sha, new) else {
                return Err(damaged());
            };
            out.insert(b, sha);
            stored += u64::from_le_bytes(new);
        }
        Ok((out, stored))
    }

    pub async fn complete_direct_snapshot(
        &self,
        r: pb::CompleteSnapshotRequest,
    ) -> Result<SnapshotRecord> {
        let lock = self.direct_lock(r.snapshot_id);
        let _all = lock.write().await;
        let mut s = self.open_snapshot(r.snapshot_id)?;
        let (put, stored) = self.put_blocks(s.id)?;
        if put.len() as u64 != r.changed_blocks {
            return Err(ControlError::Invalid(format!(
                "snapshot {} received {} distinct blocks, the request says {}; it stays OPEN",
                s.id,
                put.len(),
                r.changed_blocks
            )));
        }
        let want = sha32(&r.checksum, "checksum")?;
        let mut h = Sha256::new();
        for sha in put.values() {
            h.update(sha);
        }
        let got: [u8; 32] = h.finalize().into();
        if got != want {
            return Err(ControlError::Invalid(format!(
                "snapshot {}: the checksum over the blocks received is {}, the request says {}; it stays OPEN",
                s.id,
                hex(&got),
                hex(&want)
            )));
        }
        let nblocks = s.size_bytes.div_ceil(BLOCK_SIZE);
        let mut blocks = if s.parent_id != 0 {
            let parent: SnapshotRecord =
                get_json(&*self.store, Table::Snapshots, &snapshot_key(s.parent_id))?.ok_or_else(
                    || {
                        ControlError::Precondition(format!(
                            "parent snapshot {} was deleted; start again without it",
                            s.parent_id
                        ))
                    },
                )?;
            self.manifest_of(&parent).await?.blocks.clone()
        } else {
            BTreeMap::new()
        };
        blocks.retain(|b, _| *b < nblocks);
        for (&b, sha) in &put {
            if *sha == zero_sha(block_len(s.size_bytes, b)) {
                blocks.remove(&b);
            } else {
                blocks.insert(b, ChunkId(*sha));
            }
        }
        let m = Manifest {
            snapshot_id: s.id,
            volume_id: 0,
            size_bytes: s.size_bytes,
            block_size: BLOCK_SIZE as u32,
            parent_id: s.parent_id,
            created_unix_ms: now_unix_ms(),
            blocks,
        };
        let set = self.open_set(&s)?;
        set.put_manifest(&m)
            .await
            .map_err(|e| ControlError::Unavailable(format!("storing the manifest: {e}")))?;
        s.state = SnapshotState::Complete;
        s.completed_at = now_unix();
        s.progress.blocks_total = put.len() as u64;
        s.progress.blocks_done = put.len() as u64;
        s.progress.bytes_read = put.keys().map(|&b| block_len(s.size_bytes, b) as u64).sum();
        s.progress.bytes_uploaded = stored;
        s.progress.data_bytes = m.data_bytes();
        let mut ops = vec![put_json(Table::Snapshots, s.key(), &s)];
        ops.extend(
            put.keys()
                .map(|b| Op::Delete(Table::SnapshotBlocks, block_key(s.id, *b))),
        );
        self.store.apply(ops)?;
        tracing::info!(
            snapshot = s.id,
            blocks = put.len(),
            "direct snapshot complete"
        );
        Ok(s)
    }

    /// Drops the block entries of a deleted open snapshot.
    pub(crate) fn forget_put_blocks(&self, id: u64) -> Result<()> {
        let ops: Vec<Op> = self
            .put_blocks(id)?
            .0
            .keys()
            .map(|b| Op::Delete(Table::SnapshotBlocks, block_key(id, *b)))
            .collect();
        if !ops.is_empty() {
            self.store.apply(ops)?;
        }
        Ok(())
    }

    fn direct_lock(&self, id: u64) -> Arc<tokio::sync::RwLock<()>> {
        self.direct_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .clone()
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
