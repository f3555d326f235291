//! Copies created from a snapshot: usable at once, loaded on demand and in
//! the background.
//!
//! Every copy of such a volume keeps a presence map ([`Presence`]). The
//! primary serves a read or a partial write of a block that is not present
//! by fetching the block's chunk first (verified against its hash), then
//! installing it under the ordering lock: written locally and forwarded to
//! every mirror as one full-block replica write (write-zeroes for a zero
//! block), in order with the guest's writes; only then is the request
//! served. A full-block write or write-zeroes makes a block present on any
//! copy, so mirrors track presence exactly from the primary's stream and a
//! promoted mirror goes on hydrating where the old primary stopped. A
//! background task on the primary installs the remaining blocks at the
//! source's rate. When every block is present and synced, the source is
//! dropped.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt_proto::wire::{Flags, Header, Opcode};
use basalt_snapshot::set::DestinationSet;
use basalt_snapshot::Manifest;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, OnceCell};

use super::bits::{covered, touched, BLOCK};
use super::dests::SetSpec;
use super::presence::{Presence, PRESENCE_FILE};
use crate::copy::Copy;

pub const SOURCE_FILE: &str = "source.json";

/// Where a copy's snapshot comes from (persisted, owner-only: it holds the
/// destination's credentials).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Source {
    pub snapshot_id: u64,
    pub snapshot_size: u64,
    pub rate_bytes_per_sec: u64,
    /// The destinations holding the snapshot.
    #[serde(default)]
    pub set: SetSpec,
    /// A source written before sources had several destinations: its one
    /// destination (read, never written).
    #[serde(default, skip_serializing)]
    name: String,
    #[serde(default, skip_serializing)]
    url: String,
    #[serde(default, skip_serializing)]
    endpoint: String,
    #[serde(default, skip_serializing)]
    region: String,
    #[serde(default, skip_serializing)]
    allow_http: bool,
    #[serde(default, skip_serializing)]
    access_key_id: String,
    #[serde(default, skip_serializing)]
    secret_access_key: String,
    /// Seeding a new mirror before it joins a layout: loaded by itself,
    /// though not a primary (see `HydrationSource.seed`).
    #[serde(default)]
    pub seed: bool,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("snapshot_id", &self.snapshot_id)
            .field("destinations", &self.set)
            .finish_non_exhaustive()
    }
}

impl Source {
    pub fn new(
        snapshot_id: u64,
        snapshot_size: u64,
        rate_bytes_per_sec: u64,
        set: SetSpec,
        seed: bool,
    ) -> Source {
        Source {
            snapshot_id,
            snapshot_size,
            rate_bytes_per_sec,
            set,
            name: String::new(),
            url: String::new(),
            endpoint: String::new(),
            region: String::new(),
            allow_http: false,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            seed,
        }
    }

    /// The snapshot's destinations (a source of the older, one-destination
    /// form is upgraded when read).
    fn upgrade(mut self) -> Source {
        if self.set.members.is_empty() && !self.url.is_empty() {
            self.set = SetSpec {
                members: vec![basalt_snapshot::DestinationSpec {
                    name: std::mem::take(&mut self.name),
                    url: std::mem::take(&mut self.url),
                    endpoint: std::mem::take(&mut self.endpoint),
                    region: std::mem::take(&mut self.region),
                    allow_http: self.allow_http,
                    access_key_id: std::mem::take(&mut self.access_key_id),
                    secret_access_key: std::mem::take(&mut self.secret_access_key),
                }],
                layout: "single".into(),
                stripe_blocks: 0,
                copies: Vec::new(),
            };
        }
        self
    }

    fn store(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = dir.join("source.json.tmp");
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(SOURCE_FILE))?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// Who waits for a block being fetched.
type Waiters = Vec<oneshot::Sender<Result<(), String>>>;

pub struct Hydration {
    pub source: Source,
    pub presence: Presence,
    set: OnceCell<Arc<DestinationSet>>,
    manifest: OnceCell<Arc<Manifest>>,
    /// Blocks being fetched, and who waits for each.
    inflight: Mutex<HashMap<u64, Waiters>>,
    pub bytes_fetched: AtomicU64,
    pub error: Mutex<String>,
    running: Mutex<bool>,
}

impl Hydration {
    /// Persists `source` and an empty presence map in a new copy's directory.
    pub fn create(dir: &Path, source: Source) -> std::io::Result<Hydration> {
        let presence = Presence::open(dir, source.snapshot_size.div_ceil(BLOCK))?;
        source.store(dir)?;
        Ok(Hydration::new(source, presence))
    }

    /// The hydration state of an existing copy, if it still loads one.
    pub fn open(dir: &Path) -> std::io::Result<Option<Hydration>> {
        let bytes = match std::fs::read(dir.join(SOURCE_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let source: Source = serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", dir.join(SOURCE_FILE).display()),
            )
        })?;
        let source = source.upgrade();
        let presence = Presence::open(dir, source.snapshot_size.div_ceil(BLOCK))?;
        Ok(Some(Hydration::new(source, presence)))
    }

    fn new(source: Source, presence: Presence) -> Hydration {
        Hydration {
            source,
            presence,
            set: OnceCell::new(),
            manifest: OnceCell::new(),
            inflight: Mutex::default(),
            bytes_fetched: AtomicU64::new(0),
            error: Mutex::default(),
            running: Mutex::new(false),
        }
    }

    /// Removes the hydration files once every block is present and synced.
    pub fn remove_files(dir: &Path) -> std::io::Result<()> {
        std::fs::remove_file(dir.join(SOURCE_FILE))?;
        std::fs::remove_file(dir.join(PRESENCE_FILE))?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Blocks a request must wait for on a primary: every block it touches
    /// that is not present, except blocks a write or write-zeroes covers
    /// entirely (they become present by the request itself).
    pub fn needs(&self, op: Opcode, offset: u64, len: u64, size: u64) -> Vec<u64> {
        let full = if matches!(op, Opcode::Write | Opcode::WriteZeroes) {
            covered(offset, len, size)
        } else {
            0..0
        };
        self.presence
            .missing(touched(offset, len))
            .into_iter()
            .filter(|b| !full.contains(b))
            .collect()
    }

    /// A mutation was applied (any copy): blocks a write or write-zeroes
    /// covered entirely are present.
    pub fn after_mutation(&self, op: Opcode, offset: u64, len: u64, size: u64) {
        if matches!(op, Opcode::Write | Opcode::WriteZeroes) {
            self.presence.mark(covered(offset, len, size));
        }
    }

    async fn destinations(&self) -> Result<Arc<DestinationSet>, String> {
        self.set
            .get_or_try_init(|| async {
                self.source
                    .set
                    .open()
                    .map(Arc::new)
                    .map_err(|e| format!("opening destinations {:?}: {e}", self.source.set))
            })
            .await
            .cloned()
    }

    /// How each destination served so far (none before the first read).
    pub fn stats(&self) -> Option<basalt_snapshot::set::SetStats> {
        self.set.get().map(|s| s.stats())
    }

    async fn manifest(&self) -> Result<Arc<Manifest>, String> {
        let set = self.destinations().await?;
        self.manifest
            .get_or_try_init(|| async {
                set.get_manifest(self.source.snapshot_id)
                    .await
                    .map(Arc::new)
                    .map_err(|e| {
                        format!(
                            "reading manifest of snapshot {}: {e}",
                            self.source.snapshot_id
                        )
                    })
            })
            .await
            .cloned()
    }

    fn set_error(&self, e: &str) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_owned();
    }
}

/// Makes `blocks` present on the primary `copy` (fetching each once however
/// many requests wait for it).
pub async fn ensure(copy: &Arc<Copy>, h: &Arc<Hydration>, blocks: Vec<u64>) -> Result<(), String> {
    let mut waits = Vec::new();
    for b in blocks {
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut inflight = h.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get_mut(&b) {
                Some(w) => {
                    w.push(tx);
                    false
                }
                None => {
                    inflight.insert(b, vec![tx]);
                    true
                }
            }
        };
        if first {
            let (copy, h) = (copy.clone(), h.clone());
            tokio::spawn(async move {
                let r = fetch_and_install(&copy, &h, b).await;
                if let Err(e) = &r {
                    h.set_error(e);
                }
                let waiters = h
                    .inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&b)
                    .unwrap_or_default();
                for w in waiters {
                    let _ = w.send(r.clone());
                }
            });
        }
        waits.push(rx);
    }
    for w in waits {
        w.await.map_err(|_| "hydration task ended".to_owned())??;
    }
    Ok(())
}

async fn fetch_and_install(copy: &Arc<Copy>, h: &Arc<Hydration>, b: u64) -> Result<(), String> {
    if h.presence.is_present(b) {
        return Ok(());
    }
    let manifest = h.manifest().await?;
    let len = manifest.block_len(b);
    let data = match manifest.blocks.get(&b) {
        None => None,
        Some(id) => {
            let set = h.destinations().await?;
            let mut attempt = 0;
            loop {
                attempt += 1;
                match set.get_chunk(b, id, len).await {
                    Ok(d) => break Some(d),
                    Err(e) if attempt >= 3 => {
                        return Err(format!("fetching block {b} (chunk {id}): {e}"))
                    }
                    Err(e) => {
                        tracing::warn!(
                            volume = copy.volume_id,
                            block = b,
                            "fetching a chunk failed, retrying: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    }
                }
            }
        }
    };
    if let Some(d) = &data {
        if d.len() != len {
            return Err(format!(
                "chunk of block {b} holds {} bytes, expected {len}",
                d.len()
            ));
        }
        h.bytes_fetched.fetch_add(d.len() as u64, Ordering::Relaxed);
    }
    mirrors_ready(copy).await?;
    let copy = copy.clone();
    tokio::task::spawn_blocking(move || install(&copy, b, len, data.as_deref()))
        .await
        .map_err(|e| format!("installing block {b}: {e}"))?
}

/// Waits until every in-sync mirror link is connected (or the layout
/// changes), as a guest write waits for its mirrors: an install sent on a
/// link that is not up would be missed silently, no guest waiting for its
/// acknowledgement. A link that goes down later is reported by the link's
/// watcher, and the mirror leaves the in-sync set and is filled again.
pub(crate) async fn mirrors_ready(copy: &Copy) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut changes = copy.layout_changes();
    loop {
        let mirrors = copy.mirrors();
        let Some(m) = mirrors.iter().find(|m| !m.is_connected()) else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "mirror {} is not reachable: blocks are installed once it is, or once the control service removed it",
                m.peer.server_id
            ));
        }
        tokio::select! {
            _ = m.wait_connected() => {}
            _ = changes.changed() => {}
            _ = tokio::time::sleep(left) => {}
        }
    }
}

/// Writes block `b` locally and to every mirror, in order with the guest's
/// writes, unless a guest write made it present meanwhile.
fn install(copy: &Copy, b: u64, len: usize, data: Option<&[u8]>) -> Result<(), String> {
    let _order = copy.order.lock().unwrap_or_else(|e| e.into_inner());
    let Some(h) = copy.hydration() else {
        return Ok(());
    };
    if h.presence.is_present(b) {
        return Ok(());
    }
    if !copy.is_primary() && !h.source.seed {
        return Err("this copy is no longer the primary".into());
    }
    let offset = b * BLOCK;
    let op = if data.is_some() {
        Opcode::Write
    } else {
        Opcode::WriteZeroes
    };
    let payload = data.unwrap_or(&[]);
    copy.apply_mutation(op, offset, len as u64, payload)
        .map_err(|e| format!("writing block {b}: {e}"))?;
    copy.dirty.on_mutation(offset, len as u64);
    let mut fwd = Header {
        offset,
        length: len as u32,
        flags: Flags(Flags::REPLICA),
        ..Header::request(op, 0, copy.volume_id, copy.epoch())
    };
    if data.is_some() {
        fwd = fwd.with_payload(payload);
    }
    for m in copy.mirrors().iter().chain(copy.syncing().iter()) {
        drop(m.send(fwd, payload));
    }
    Ok(())
}

/// Background fetches in flight per copy.
const WINDOW: usize = 8;

/// Starts the background hydration of a primary copy (once).
pub fn start_background(copy: &Arc<Copy>) {
    let Some(h) = copy.hydration() else {
        return;
    };
    if !copy.is_primary() && !h.source.seed {
        return;
    }
    {
        let mut running = h.running.lock().unwrap_or_else(|e| e.into_inner());
        if *running {
            return;
        }
        *running = true;
    }
    let copy = copy.clone();
    tokio::spawn(async move {
        background(&copy, &h).await;
        *h.running.lock().unwrap_or_else(|e| e.into_inner()) = false;
    });
}

/// Installs every missing block at the source's rate, syncing (and so
/// persisting presence) every second and at the end.
async fn background(copy: &Arc<Copy>, h: &Arc<Hydration>) {
    let rate = h.source.rate_bytes_per_sec;
    let started = Instant::now();
    let fetched_before = h.bytes_fetched.load(Ordering::Relaxed);
    let mut last_sync = Instant::now();
    tracing::info!(
        volume = copy.volume_id,
        snapshot = h.source.snapshot_id,
        missing = h.presence.total() - h.presence.present(),
        "hydration started"
    );
    loop {
        let missing = h.presence.missing_all();
        if missing.is_empty() {
            break;
        }
        // A window of fetches in flight: one slow GET does not hold the
        // others back.
        let mut inflight = tokio::task::JoinSet::new();
        let mut failed = false;
        for &b in &missing {
            if !(copy.is_primary() || h.source.seed) || copy.hydration().is_none() {
                return;
            }
            while inflight.len() >= WINDOW {
                if let Some(Ok(Err(e))) = inflight.join_next().await {
                    tracing::warn!(volume = copy.volume_id, "hydration: {e}; retrying in 1 s");
                    failed = true;
                }
            }
            if failed {
                break;
            }
            let (c, hh) = (copy.clone(), h.clone());
            inflight.spawn(async move { ensure(&c, &hh, vec![b]).await });
            // The rate counts bytes fetched (zero blocks cost nothing).
            let done = h.bytes_fetched.load(Ordering::Relaxed) - fetched_before;
            if rate > 0 {
                let due = Duration::from_secs_f64(done as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            if last_sync.elapsed() >= Duration::from_secs(1) {
                sync(copy).await;
                last_sync = Instant::now();
            }
        }
        while let Some(r) = inflight.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!(volume = copy.volume_id, "hydration: {e}; retrying in 1 s");
                failed = true;
            }
        }
        if failed {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // Every block is present; the source is dropped by a sync that finds
    // every presence bit persisted. A guest write racing a sync can leave
    // one unpersisted: sync again until it is dropped. Each round also
    // asks the mirrors to sync, after every block installed on them.
    loop {
        sync(copy).await;
        if copy.hydration().is_none() || !(copy.is_primary() || h.source.seed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sync(copy).await;
    tracing::info!(
        volume = copy.volume_id,
        snapshot = h.source.snapshot_id,
        secs = started.elapsed().as_secs_f64(),
        "hydration complete"
    );
}

/// Syncs the primary (persisting its presence map) and asks every mirror to
/// sync (persisting theirs).
async fn sync(copy: &Arc<Copy>) {
    let flush = Header {
        flags: Flags(Flags::REPLICA),
        ..Header::request(Opcode::Flush, 0, copy.volume_id, copy.epoch())
    };
    for m in copy.mirrors().iter().chain(copy.syncing().iter()) {
        drop(m.send(flush, &[]));
    }
    let c = copy.clone();
    match tokio::task::spawn_blocking(move || c.sync()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(volume = copy.volume_id, "hydration sync failed: {e}"),
        Err(e) => tracing::warn!(volume = copy.volume_id, "hydration sync task failed: {e}"),
    }
}
