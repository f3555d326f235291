//! Reading the blocks of complete snapshots (ListSnapshotBlocks,
//! ListChangedBlocks, GetSnapshotBlock): from their manifests (cached;
//! manifests never change) and chunks, read through the snapshot's
//! destination set with fallback.

use std::collections::BTreeMap;
use std::sync::Arc;

use basalt_proto::control as pb;
use basalt_snapshot::{ChunkId, Manifest, BLOCK_SIZE};

use crate::blocks::{block_in, zero_sha};
use crate::error::{ControlError, Result};
use crate::model::*;
use crate::Control;

/// Largest page of a block listing.
const MAX_LIST: u32 = 10_000;
const DEFAULT_LIST: u32 = 1000;

fn page(start: u64, max: u32) -> (u64, usize) {
    let n = match max {
        0 => DEFAULT_LIST,
        n => n.min(MAX_LIST),
    };
    (start, n as usize)
}

impl Control {
    pub(crate) fn complete_snapshot_named(&self, r: &pb::SnapshotRef) -> Result<SnapshotRecord> {
        let s = self.find_snapshot(r)?;
        if s.state != SnapshotState::Complete {
            return Err(ControlError::Precondition(format!(
                "snapshot {} is {:?}: only a COMPLETE snapshot's blocks can be read",
                s.id, s.state
            )));
        }
        Ok(s)
    }

    /// The manifest of a complete snapshot (cached: manifests never change).
    pub(crate) async fn manifest_of(&self, s: &SnapshotRecord) -> Result<Arc<Manifest>> {
        if let Some(m) = self
            .manifest_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&s.id)
        {
            return Ok(m.clone());
        }
        let set = self.open_set(s)?;
        let m = Arc::new(set.get_manifest(s.id).await.map_err(|e| {
            ControlError::Unavailable(format!("reading the manifest of snapshot {}: {e}", s.id))
        })?);
        let mut cache = self
            .manifest_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cache.len() >= 16 {
            cache.clear();
        }
        cache.insert(s.id, m.clone());
        Ok(m)
    }

    pub async fn list_snapshot_blocks(
        &self,
        r: pb::ListSnapshotBlocksRequest,
    ) -> Result<pb::ListSnapshotBlocksResponse> {
        let s = self.complete_snapshot_named(&r.snapshot.unwrap_or_default())?;
        let m = self.manifest_of(&s).await?;
        let (start, n) = page(r.start_index, r.max_results);
        let mut it = m.blocks.range(start..);
        let blocks: Vec<pb::SnapshotBlock> = it
            .by_ref()
            .take(n)
            .map(|(&index, id)| pb::SnapshotBlock {
                index,
                sha256: id.0.to_vec(),
            })
            .collect();
        Ok(pb::ListSnapshotBlocksResponse {
            next_index: it.next().map_or(0, |(&b, _)| b),
            blocks,
            block_size: BLOCK_SIZE,
            size_bytes: s.size_bytes,
        })
    }

    pub async fn list_changed_blocks(
        &self,
        r: pb::ListChangedBlocksRequest,
    ) -> Result<pb::ListChangedBlocksResponse> {
        let second = self.complete_snapshot_named(&r.second.unwrap_or_default())?;
        let b = self.manifest_of(&second).await?;
        let a = match r.first {
            Some(f) if f.id != 0 || !f.name.is_empty() => {
                let first = self.complete_snapshot_named(&f)?;
                if first.tenant != second.tenant {
                    return Err(ControlError::Invalid(
                        "the two snapshots belong to different tenants".into(),
                    ));
                }
                Some(self.manifest_of(&first).await?)
            }
            _ => None,
        };
        let empty = BTreeMap::new();
        let a_blocks = a.as_ref().map_or(&empty, |m| &m.blocks);
        let (start, n) = page(r.start_index, r.max_results);
        let mut indexes: Vec<u64> = a_blocks
            .range(start..)
            .map(|(&i, _)| i)
            .chain(b.blocks.range(start..).map(|(&i, _)| i))
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut changed = indexes
            .into_iter()
            .filter(|i| a_blocks.get(i) != b.blocks.get(i));
        let sha =
            |m: &BTreeMap<u64, ChunkId>, i: u64| m.get(&i).map_or(Vec::new(), |c| c.0.to_vec());
        let blocks: Vec<pb::ChangedBlock> = changed
            .by_ref()
            .take(n)
            .map(|index| pb::ChangedBlock {
                index,
                first_sha256: sha(a_blocks, index),
                second_sha256: sha(&b.blocks, index),
            })
            .collect();
        Ok(pb::ListChangedBlocksResponse {
            next_index: changed.next().unwrap_or(0),
            blocks,
            block_size: BLOCK_SIZE,
        })
    }

    pub async fn get_snapshot_block(
        &self,
        r: pb::GetSnapshotBlockRequest,
    ) -> Result<pb::GetSnapshotBlockResponse> {
        let s = self.complete_snapshot_named(&r.snapshot.unwrap_or_default())?;
        let len = block_in(&s, r.block_index)?;
        let m = self.manifest_of(&s).await?;
        let Some(id) = m.blocks.get(&r.block_index) else {
            return Ok(pb::GetSnapshotBlockResponse {
                data: vec![0u8; len],
                sha256: zero_sha(len).to_vec(),
            });
        };
        let set = self.open_set(&s)?;
        let data = set.get_chunk(r.block_index, id, len).await.map_err(|e| {
            ControlError::Unavailable(format!("reading block {}: {e}", r.block_index))
        })?;
        Ok(pb::GetSnapshotBlockResponse {
            data,
            sha256: id.0.to_vec(),
        })
    }
}
