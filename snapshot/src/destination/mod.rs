//! Snapshot destinations: a local directory, an S3 bucket, an Azure Blob
//! container or a Google Cloud Storage bucket, through the `object_store`
//! crate.
//!
//! Object key layout (`<prefix>/` is absent when the destination has no prefix):
//!
//! ```text
//! <prefix>/chunks/<first two hex chars of id>/<64 hex chars of id>   stored chunk (see crate::chunk)
//! <prefix>/manifests/<snapshot_id, 20-digit zero-padded decimal>     manifest (see crate::manifest)
//! ```

mod check;
mod credentials;
mod keys;
mod open;
mod spec;
mod sweep;

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use crate::chunk::{self, ChunkError, ChunkId};
use crate::manifest::{Manifest, ManifestError};

pub use check::{AccessError, Usage};
pub use credentials::{read_credentials, read_credentials_file, StoreKind, URL_FORMS};
pub use spec::{DestinationSpec, FLAG_SYNTAX};
pub use sweep::SweepStats;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("bad snapshot destination flag at {part:?}: {reason}; the syntax is {FLAG_SYNTAX}")]
    BadFlag { part: String, reason: String },
    #[error("bad credentials file {path}: {reason}")]
    CredentialsFile { path: String, reason: String },
    #[error("cannot open snapshot destination {name:?}: {reason}")]
    Open { name: String, reason: String },
    #[error("{op} {key} failed in destination {name:?}: {source}; check that the destination is reachable and the credentials allow it")]
    Store {
        name: String,
        op: &'static str,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error(
        "{key} in destination {name:?} is {size} bytes, more than the {max} a chunk can take; \
         the object is damaged or not a basalt chunk: delete it"
    )]
    ObjectTooLarge {
        name: String,
        key: String,
        size: u64,
        max: u64,
    },
    #[error("{key} not found in destination {name:?}")]
    NotFound { name: String, key: String },
    #[error("{key} in destination {name:?}: {source}")]
    Chunk {
        name: String,
        key: String,
        #[source]
        source: ChunkError,
    },
    #[error("{key} in destination {name:?}: {source}")]
    Manifest {
        name: String,
        key: String,
        #[source]
        source: ManifestError,
    },
    #[error(
        "{key} in destination {name:?} holds snapshot {found}; \
         the object was copied or renamed by hand: put it back under its own id"
    )]
    ManifestIdMismatch {
        name: String,
        key: String,
        found: u64,
    },
    #[error("refusing to store invalid manifest for snapshot {snapshot_id}: {source}")]
    InvalidManifest {
        snapshot_id: u64,
        #[source]
        source: ManifestError,
    },
}

/// A place where snapshots are kept.
pub struct Destination {
    name: String,
    store: Arc<dyn ObjectStore>,
    keys: keys::Keys,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.name)
            .field("store", &format_args!("{}", self.store))
            .field("prefix", &self.keys.prefix())
            .finish()
    }
}

impl Destination {
    /// Opens a destination. `file://` creates the directory if missing; `s3://`
    /// uses path-style requests (works with any endpoint, including loopback).
    pub fn open(spec: &DestinationSpec) -> Result<Destination, DestinationError> {
        let (store, prefix) = open::open_store(spec)?;
        let keys = keys::Keys::new(&prefix).map_err(|reason| DestinationError::Open {
            name: spec.name.clone(),
            reason,
        })?;
        Ok(Destination {
            name: spec.name.clone(),
            store,
            keys,
        })
    }

    /// A destination over an existing object store (tests: in-memory or
    /// throttled stores); `prefix` as in [`Destination::open`]'s key layout.
    #[doc(hidden)]
    pub fn from_store(
        name: &str,
        store: Arc<dyn ObjectStore>,
        prefix: &str,
    ) -> Result<Destination, DestinationError> {
        let keys = keys::Keys::new(prefix).map_err(|reason| DestinationError::Open {
            name: name.to_owned(),
            reason,
        })?;
        Ok(Destination {
            name: name.to_owned(),
            store,
            keys,
        })
    }

    /// The destination's name (from its spec).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn store_err(
        &self,
        op: &'static str,
        key: &Path,
        source: object_store::Error,
    ) -> DestinationError {
        match source {
            object_store::Error::NotFound { .. } => DestinationError::NotFound {
                name: self.name.clone(),
                key: key.to_string(),
            },
            source => DestinationError::Store {
                name: self.name.clone(),
                op,
                key: key.to_string(),
                source: Box::new(source),
            },
        }
    }

    async fn get_bytes(&self, key: &Path, max_len: Option<u64>) -> Result<Bytes, DestinationError> {
        let res = self
            .store
            .get(key)
            .await
            .map_err(|e| self.store_err("get", key, e))?;
        if let Some(max) = max_len.filter(|&m| res.meta.size > m) {
            return Err(DestinationError::ObjectTooLarge {
                name: self.name.clone(),
                key: key.to_string(),
                size: res.meta.size,
                max,
            });
        }
        res.bytes().await.map_err(|e| self.store_err("get", key, e))
    }

    async fn put_bytes(&self, key: &Path, data: PutPayload) -> Result<(), DestinationError> {
        self.store
            .put(key, data)
            .await
            .map(drop)
            .map_err(|e| self.store_err("put", key, e))
    }

    async fn delete_key(&self, key: &Path) -> Result<(), DestinationError> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err("delete", key, e)),
        }
    }

    async fn list_keys(&self, dir: &Path) -> Result<Vec<Path>, DestinationError> {
        self.store
            .list(Some(dir))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.store_err("list", dir, e))
    }

    /// Whether chunk `id` is stored.
    pub async fn has_chunk(&self, id: &ChunkId) -> Result<bool, DestinationError> {
        let key = self.keys.chunk(id);
        match self.store.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.store_err("head", &key, e)),
        }
    }

    /// Stores a chunk (`stored` from [`chunk::encode`]). A plain put: the caller
    /// checks [`Destination::has_chunk`] first to skip existing chunks.
    pub async fn put_chunk(&self, id: &ChunkId, stored: Vec<u8>) -> Result<(), DestinationError> {
        self.put_bytes(&self.keys.chunk(id), PutPayload::from(stored))
            .await
    }

    /// [`Destination::put_chunk`] with shared bytes: storing one chunk in
    /// several destinations copies it once, not once per destination.
    pub async fn put_chunk_bytes(
        &self,
        id: &ChunkId,
        stored: Bytes,
    ) -> Result<(), DestinationError> {
        self.put_bytes(&self.keys.chunk(id), PutPayload::from(stored))
            .await
    }

    /// Reads a chunk and verifies it (see [`chunk::decode`]); `max_len` bounds
    /// its uncompressed size.
    pub async fn get_chunk(
        &self,
        id: &ChunkId,
        max_len: usize,
    ) -> Result<Vec<u8>, DestinationError> {
        let key = self.keys.chunk(id);
        // Bound the download too: header + payload, with room for zstd's
        // worst-case expansion of incompressible data.
        let max_stored = (max_len as u64).saturating_add(max_len as u64 / 64 + 4096);
        let stored = self.get_bytes(&key, Some(max_stored)).await?;
        chunk::decode(id, &stored, max_len).map_err(|source| DestinationError::Chunk {
            name: self.name.clone(),
            key: key.to_string(),
            source,
        })
    }

    /// Deletes a chunk; a missing chunk is not an error.
    pub async fn delete_chunk(&self, id: &ChunkId) -> Result<(), DestinationError> {
        self.delete_key(&self.keys.chunk(id)).await
    }

    /// Every chunk stored; keys that are not chunks are ignored.
    pub async fn list_chunks(&self) -> Result<Vec<ChunkId>, DestinationError> {
        let keys = self.list_keys(&self.keys.chunks_dir()).await?;
        Ok(keys
            .iter()
            .filter_map(|k| self.keys.parse_chunk(k))
            .collect())
    }

    /// Stores a manifest (after checking it is valid), replacing any with the same id.
    pub async fn put_manifest(&self, m: &Manifest) -> Result<(), DestinationError> {
        m.validate()
            .map_err(|source| DestinationError::InvalidManifest {
                snapshot_id: m.snapshot_id,
                source,
            })?;
        let key = self.keys.manifest(m.snapshot_id);
        self.put_bytes(&key, PutPayload::from(m.encode())).await
    }

    /// Reads a manifest; a missing one is [`DestinationError::NotFound`].
    pub async fn get_manifest(&self, snapshot_id: u64) -> Result<Manifest, DestinationError> {
        let key = self.keys.manifest(snapshot_id);
        let bytes = self.get_bytes(&key, None).await?;
        let m = Manifest::decode(&bytes).map_err(|source| DestinationError::Manifest {
            name: self.name.clone(),
            key: key.to_string(),
            source,
        })?;
        if m.snapshot_id != snapshot_id {
            return Err(DestinationError::ManifestIdMismatch {
                name: self.name.clone(),
                key: key.to_string(),
                found: m.snapshot_id,
            });
        }
        Ok(m)
    }

    /// Deletes a manifest; a missing one is not an error.
    pub async fn delete_manifest(&self, snapshot_id: u64) -> Result<(), DestinationError> {
        self.delete_key(&self.keys.manifest(snapshot_id)).await
    }

    /// Ids of every stored manifest, ascending; keys that are not manifests are ignored.
    pub async fn list_manifests(&self) -> Result<Vec<u64>, DestinationError> {
        let keys = self.list_keys(&self.keys.manifests_dir()).await?;
        let mut ids: Vec<u64> = keys
            .iter()
            .filter_map(|k| self.keys.parse_manifest(k))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
