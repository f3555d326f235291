//! Uploads a frozen snapshot: reads its blocks (through the freeze), stores
//! each non-zero one as a content-addressed chunk unless the destination
//! holds it already, then writes the manifest. The snapshot is complete
//! only once its manifest is stored, and a manifest is written only after
//! every chunk it names was stored or found.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use basalt_snapshot::set::DestinationSet;
use basalt_snapshot::{ChunkId, Manifest};
use tokio::task::JoinSet;

use super::freeze::Freeze;
use super::job::{JobState, SnapJob};
use crate::copy::Copy;

/// Blocks read, hashed and uploaded at once.
const PARALLEL: usize = 4;
/// Attempts of one destination operation before the snapshot fails.
const ATTEMPTS: u32 = 4;

pub struct Upload {
    pub copy: Arc<Copy>,
    pub job: Arc<SnapJob>,
    pub freeze: Arc<Freeze>,
    pub set: Arc<DestinationSet>,
    pub parent_id: u64,
    pub candidates: Vec<u64>,
    /// Volume bytes read per second (0 = unlimited).
    pub rate: u64,
}

async fn retry<T, E, F, Fut>(what: &str, mut f: F) -> Result<T, String>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=ATTEMPTS {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt == ATTEMPTS => return Err(format!("{what}: {e}")),
            Err(e) => {
                tracing::warn!(attempt, "{what} failed, retrying: {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    Err(format!("{what}: no attempt made"))
}

impl Upload {
    pub async fn run(self) {
        let volume = self.copy.volume_id;
        let id = self.job.snapshot_id;
        let result = self.upload().await;
        super::unfreeze(&self.copy);
        self.job.cow_blocks.store(
            self.freeze.cow_blocks.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        match result {
            Ok(()) => {
                tracing::info!(volume, snapshot = id, "snapshot uploaded");
                self.job.finish(JobState::Complete);
            }
            Err(e) => {
                tracing::warn!(volume, snapshot = id, "snapshot failed: {e}");
                self.job.finish(JobState::Failed(e));
            }
        }
    }

    async fn upload(&self) -> Result<(), String> {
        let dest = self.set.clone();
        let parent = if self.parent_id == 0 {
            None
        } else {
            let p = self.parent_id;
            Some(retry("reading the parent manifest", || dest.get_manifest(p)).await?)
        };
        let parent_blocks = parent
            .as_ref()
            .map(|m| m.blocks.clone())
            .unwrap_or_default();
        let mut results: BTreeMap<u64, Option<ChunkId>> = BTreeMap::new();
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let started = std::time::Instant::now();
        for (n, &b) in self.candidates.iter().enumerate() {
            if self.rate > 0 {
                let due = Duration::from_secs_f64(
                    n as f64 * basalt_snapshot::BLOCK_SIZE as f64 / self.rate as f64,
                );
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            while tasks.len() >= PARALLEL {
                let (b, id) = joined(tasks.join_next().await)?;
                results.insert(b, id);
            }
            let (copy, freeze, job, dest) = (
                self.copy.clone(),
                self.freeze.clone(),
                self.job.clone(),
                dest.clone(),
            );
            let known = parent_blocks.get(&b).copied();
            tasks.spawn(async move { block(copy, freeze, job, dest, b, known).await });
        }
        while let Some(r) = tasks.join_next().await {
            let (b, id) = joined(Some(r))?;
            results.insert(b, id);
        }
        basalt_failpoint::hit_async("snapshot.before_manifest").await;
        let size = self.job.size;
        let nblocks = size.div_ceil(basalt_snapshot::BLOCK_SIZE);
        // A change map lists every block written since the parent: the rest
        // is the parent's. Otherwise every allocated block was read and the
        // rest are holes.
        let mut blocks = if self.job.change_source == super::job::ChangeSource::ChangeMap {
            parent_blocks
        } else {
            BTreeMap::new()
        };
        blocks.retain(|b, _| *b < nblocks);
        for (b, id) in results {
            match id {
                Some(id) => blocks.insert(b, id),
                None => blocks.remove(&b),
            };
        }
        let manifest = Manifest {
            snapshot_id: self.job.snapshot_id,
            volume_id: self.copy.volume_id,
            size_bytes: size,
            block_size: basalt_snapshot::BLOCK_SIZE as u32,
            parent_id: self.parent_id,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            blocks,
        };
        self.job
            .data_bytes
            .store(manifest.data_bytes(), Ordering::Relaxed);
        retry("storing the manifest", || dest.put_manifest(&manifest)).await
    }
}

/// A block's result: its index and chunk (`None` for a zero block).
type Done = Result<(u64, Option<ChunkId>), String>;

fn joined(r: Option<Result<Done, tokio::task::JoinError>>) -> Done {
    match r {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(format!("upload task failed: {e}")),
        None => Err("upload task missing".into()),
    }
}

/// Reads block `b` as of the point and stores it; `None` for a zero block.
async fn block(
    copy: Arc<Copy>,
    freeze: Arc<Freeze>,
    job: Arc<SnapJob>,
    dest: Arc<DestinationSet>,
    b: u64,
    known: Option<ChunkId>,
) -> Result<(u64, Option<ChunkId>), String> {
    let read = tokio::task::spawn_blocking(move || {
        let data = freeze.read_block(copy.data_file(), b)?;
        let n = data.len() as u64;
        if basalt_snapshot::chunk::is_zero(&data) {
            return Ok::<_, std::io::Error>((n, None));
        }
        let id = ChunkId::of(&data);
        // Compress only what the destination may need.
        let stored = (Some(id) != known).then(|| basalt_snapshot::chunk::encode(&data).1);
        Ok((n, Some((id, stored))))
    })
    .await
    .map_err(|e| format!("reading block {b}: {e}"))?
    .map_err(|e| format!("reading block {b}: {e}"))?;
    let (n, chunk) = read;
    job.bytes_read.fetch_add(n, Ordering::Relaxed);
    let result = match chunk {
        None => None,
        Some((id, None)) => {
            job.chunks_reused.fetch_add(1, Ordering::Relaxed);
            Some(id)
        }
        Some((id, Some(stored))) => {
            let put = retry("storing a chunk", || dest.put_chunk(b, &id, &stored)).await?;
            if put.reused {
                job.chunks_reused.fetch_add(1, Ordering::Relaxed);
            } else {
                job.chunks_new.fetch_add(1, Ordering::Relaxed);
                job.bytes_uploaded
                    .fetch_add(put.new_bytes, Ordering::Relaxed);
            }
            Some(id)
        }
    };
    job.blocks_done.fetch_add(1, Ordering::Relaxed);
    Ok((b, result))
}
