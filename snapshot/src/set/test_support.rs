//! Helpers shared by the set tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use object_store::ObjectStore;

use crate::chunk::{self, ChunkId};
use crate::destination::{Destination, DestinationSpec};
use crate::manifest::Manifest;
use crate::BLOCK_SIZE;

pub const MAX: usize = BLOCK_SIZE as usize;

/// A `file://` destination in `root/<name>`.
pub fn file_member(root: &Path, name: &str) -> Arc<Destination> {
    let spec = DestinationSpec {
        name: name.into(),
        url: format!("file://{}", root.join(name).display()),
        ..DestinationSpec::default()
    };
    Arc::new(Destination::open(&spec).expect("open file destination"))
}

/// A `file://` destination whose every chunk and manifest read fails with a
/// store error (not "not found"): `chunks` and `manifests` are plain files,
/// so opening anything below them fails with "not a directory".
pub fn broken_member(root: &Path, name: &str) -> Arc<Destination> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("chunks"), b"not a directory").expect("write");
    std::fs::write(dir.join("manifests"), b"not a directory").expect("write");
    let store = LocalFileSystem::new_with_prefix(&dir).expect("local store");
    Arc::new(Destination::from_store(name, Arc::new(store), "").expect("from_store"))
}

/// An in-memory store and a destination over it.
pub fn mem_member(name: &str) -> (Arc<Destination>, Arc<dyn ObjectStore>) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let dest = Destination::from_store(name, Arc::clone(&store), "").expect("from_store");
    (Arc::new(dest), store)
}

/// A destination over `store` whose every GET waits `wait` first.
pub fn slow_member(name: &str, store: Arc<dyn ObjectStore>, wait: Duration) -> Arc<Destination> {
    let config = ThrottleConfig {
        wait_get_per_call: wait,
        ..ThrottleConfig::default()
    };
    let slow = ThrottledStore::new(store, config);
    Arc::new(Destination::from_store(name, Arc::new(slow), "").expect("from_store"))
}

/// A block of `len` bytes that differs per `seed` and compresses.
pub fn block(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(31))
        .collect()
}

/// Stores `data`'s chunk directly in `dest`.
pub async fn put_raw(dest: &Destination, data: &[u8]) -> ChunkId {
    let (id, stored) = chunk::encode(data);
    dest.put_chunk(&id, stored).await.expect("put chunk");
    id
}

/// The file of chunk `id` in the `file://` destination `root/<name>`.
pub fn chunk_file(root: &Path, name: &str, id: &ChunkId) -> PathBuf {
    let hex = id.hex();
    root.join(name).join(format!("chunks/{}/{hex}", &hex[..2]))
}

pub fn manifest(id: u64, chunks: &[ChunkId]) -> Manifest {
    Manifest {
        snapshot_id: id,
        volume_id: 1,
        size_bytes: 16 * BLOCK_SIZE,
        block_size: BLOCK_SIZE as u32,
        parent_id: 0,
        created_unix_ms: 1_700_000_000_000,
        blocks: chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64, *c))
            .collect(),
    }
}
