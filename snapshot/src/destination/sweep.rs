//! Garbage collection of chunks no manifest references.

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};

use super::{Destination, DestinationError};
use crate::chunk::ChunkId;

/// Manifests read at once during a sweep.
const MANIFEST_READ_CONCURRENCY: usize = 8;

/// What a [`Destination::sweep`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Chunks present when the sweep started.
    pub chunks_listed: u64,
    /// Manifests read.
    pub manifests: u64,
    /// Chunks deleted.
    pub chunks_deleted: u64,
}

impl Destination {
    /// Garbage collection: deletes every chunk referenced by no manifest
    /// present in the destination and not in `keep` (e.g. chunks of uploads
    /// in progress).
    ///
    /// Order: list chunks first, then list and read every manifest, then delete
    /// the unreferenced listed chunks. A chunk stored after the listing is never
    /// deleted, so an upload that writes its chunks and then its manifest is
    /// safe. An upload that *reuses* an existing chunk (found by `has_chunk`)
    /// before its manifest is stored must have that chunk in `keep`.
    ///
    /// A manifest that cannot be read or decoded aborts the sweep before any
    /// deletion (never delete on partial knowledge); a manifest that vanished
    /// between listing and reading was deleted, which only frees chunks, and is
    /// skipped.
    ///
    /// Failpoints: `gc.after_list`, `gc.after_read_manifests`, `gc.mid_delete`
    /// (after the first deletion).
    pub async fn sweep(&self, keep: &HashSet<ChunkId>) -> Result<SweepStats, DestinationError> {
        let chunks = self.list_chunks().await?;
        basalt_failpoint::hit_async("gc.after_list").await;

        let ids = self.list_manifests().await?;
        let manifests: Vec<_> = futures::stream::iter(ids)
            .map(|id| async move {
                match self.get_manifest(id).await {
                    Ok(m) => Ok(Some(m)),
                    Err(DestinationError::NotFound { .. }) => {
                        tracing::debug!(destination = %self.name, snapshot = id, "manifest deleted during sweep");
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(MANIFEST_READ_CONCURRENCY)
            .try_filter_map(|m| async move { Ok(m) })
            .try_collect()
            .await?;
        let referenced: HashSet<ChunkId> = manifests
            .iter()
            .flat_map(|m| m.blocks.values().copied())
            .collect();
        basalt_failpoint::hit_async("gc.after_read_manifests").await;

        let mut stats = SweepStats {
            chunks_listed: chunks.len() as u64,
            manifests: manifests.len() as u64,
            chunks_deleted: 0,
        };
        for id in chunks {
            if referenced.contains(&id) || keep.contains(&id) {
                continue;
            }
            self.delete_chunk(&id).await?;
            stats.chunks_deleted += 1;
            if stats.chunks_deleted == 1 {
                basalt_failpoint::hit_async("gc.mid_delete").await;
            }
        }
        tracing::info!(destination = %self.name, ?stats, "snapshot chunk sweep done");
        Ok(stats)
    }
}
