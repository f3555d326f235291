//! The set of copies a server holds, loaded from the data directory at start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::copy::{Copy, CopyError, Links};
use crate::meta::{CopyMeta, PeerMeta, Role};
use crate::mirror::{LinkSettings, MirrorLink};
use crate::report::Reporter;
use crate::snap::hydrate::Source;

/// Largest volume a server accepts: 64 TiB.
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("volume {0} has no copy on this server")]
    NotFound(u64),
    #[error("volume {0} already has a copy on this server; delete it first")]
    AlreadyExists(u64),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error("data directory error: {0}")]
    Io(#[from] std::io::Error),
}

/// Role, epoch and peers of a copy, as set by the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub role: Role,
    pub epoch: u64,
    pub mirrors: Vec<PeerMeta>,
    pub primary_server_id: String,
    /// Primary only: mirrors being filled by a full copy.
    pub syncing: Vec<PeerMeta>,
    /// Current attachment generation of the volume.
    pub attachment: u64,
}

impl Layout {
    fn validate(&self, local_id: &str) -> Result<(), StoreError> {
        let bad = |m: &str| Err(StoreError::Invalid(m.to_owned()));
        if self.epoch == 0 {
            return bad("epoch must be at least 1");
        }
        match self.role {
            Role::Primary => {
                let mut ids: Vec<&str> = self
                    .mirrors
                    .iter()
                    .chain(&self.syncing)
                    .map(|m| m.server_id.as_str())
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                if ids.len() != self.mirrors.len() + self.syncing.len() {
                    return bad("mirrors must be on distinct servers");
                }
                if ids.contains(&local_id) {
                    return bad("a primary cannot mirror to its own server");
                }
                if self
                    .mirrors
                    .iter()
                    .chain(&self.syncing)
                    .any(|m| m.address.parse::<std::net::SocketAddr>().is_err())
                {
                    return bad("mirror addresses must be IP:PORT");
                }
            }
            Role::Mirror => {
                if self.primary_server_id.is_empty()
                    || !self.mirrors.is_empty()
                    || !self.syncing.is_empty()
                {
                    return bad("a mirror needs primary_server_id and no mirrors of its own");
                }
                if self.primary_server_id == local_id {
                    return bad("a mirror's primary must be on another server");
                }
            }
        }
        Ok(())
    }
}

pub struct Store {
    root: PathBuf,
    settings: LinkSettings,
    /// Reports unreachable in-sync mirrors (with `--control`).
    reporter: Option<Arc<Reporter>>,
    copies: RwLock<HashMap<u64, Arc<Copy>>>,
}

impl Store {
    /// Opens every copy under `<data_dir>/copies`. Must run inside a tokio
    /// runtime (primaries start their mirror links).
    pub fn open(
        data_dir: &Path,
        settings: LinkSettings,
        reporter: Option<Arc<Reporter>>,
    ) -> Result<Store, StoreError> {
        let root = data_dir.join("copies");
        std::fs::create_dir_all(&root)?;
        let store = Store {
            root,
            settings,
            reporter,
            copies: RwLock::default(),
        };
        for entry in std::fs::read_dir(&store.root)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stripped) = name.strip_suffix(".deleting") {
                tracing::info!(volume = stripped, "finishing interrupted delete");
                std::fs::remove_dir_all(entry.path())?;
                continue;
            }
            let Ok(id) = name.parse::<u64>() else {
                continue;
            };
            if !entry.path().join(crate::meta::META_FILE).exists() {
                // Creation crashed before it was acknowledged: nothing to keep.
                tracing::warn!(volume = id, "removing half-created copy");
                std::fs::remove_dir_all(entry.path())?;
                continue;
            }
            let copy = Arc::new(Copy::open(&entry.path())?);
            store.start_links(&copy);
            store.write().insert(id, copy);
        }
        Ok(store)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Arc<Copy>>> {
        self.copies.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, volume_id: u64) -> Option<Arc<Copy>> {
        self.copies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&volume_id)
            .cloned()
    }

    pub fn list(&self) -> Vec<Arc<Copy>> {
        let mut v: Vec<_> = self
            .copies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|c| c.volume_id);
        v
    }

    pub fn local_id(&self) -> &str {
        &self.settings.local_server_id
    }

    /// The mirror links for `m`, reusing the copy's links to unchanged
    /// peers (same server id and address) so a layout change (say, a syncing
    /// mirror joining the in-sync set) does not drop a connection.
    fn links_for(&self, copy: &Arc<Copy>, m: &CopyMeta) -> Links {
        if m.role != Role::Primary {
            return Links::default();
        }
        let existing: Vec<Arc<MirrorLink>> = copy
            .mirrors()
            .iter()
            .chain(copy.syncing().iter())
            .cloned()
            .collect();
        let link = |p: &PeerMeta| {
            existing
                .iter()
                .find(|l| l.peer.same_peer(p))
                .cloned()
                .unwrap_or_else(|| {
                    let l = MirrorLink::start(
                        p.clone(),
                        self.settings.clone(),
                        Some(copy.dirty.clone()),
                    );
                    if let Some(r) = &self.reporter {
                        r.watch(copy, &l);
                    }
                    l
                })
        };
        Links {
            mirrors: m.mirrors.iter().map(link).collect(),
            syncing: m.syncing.iter().map(link).collect(),
        }
    }

    /// Builds and installs the links of a copy just created or opened.
    fn start_links(&self, copy: &Arc<Copy>) {
        copy.install_links(self.links_for(copy, &copy.meta()));
        crate::resync::reconcile(copy, &copy.syncing());
        crate::snap::hydrate::start_background(copy);
    }

    pub fn create(
        &self,
        volume_id: u64,
        size_bytes: u64,
        layout: Layout,
    ) -> Result<Arc<Copy>, StoreError> {
        self.create_from(volume_id, size_bytes, layout, None)
    }

    /// Creates a copy, loading `source` (a snapshot no larger than the
    /// copy) on demand and in the background.
    pub fn create_from(
        &self,
        volume_id: u64,
        size_bytes: u64,
        layout: Layout,
        source: Option<Source>,
    ) -> Result<Arc<Copy>, StoreError> {
        if let Some(s) = &source {
            if s.snapshot_size == 0 || s.snapshot_size > size_bytes {
                return Err(StoreError::Invalid(format!(
                    "the source snapshot's size {} must be non-zero and at most the copy's size {size_bytes}",
                    s.snapshot_size
                )));
            }
            s.set
                .open()
                .map_err(|e| StoreError::Invalid(format!("source destinations: {e}")))?;
        }
        if size_bytes == 0 || !size_bytes.is_multiple_of(4096) || size_bytes > MAX_VOLUME_BYTES {
            return Err(StoreError::Invalid(format!(
                "size_bytes must be a non-zero multiple of 4096 up to {MAX_VOLUME_BYTES}, got {size_bytes}"
            )));
        }
        layout.validate(self.local_id())?;
        let mut copies = self.write();
        if copies.contains_key(&volume_id) {
            return Err(StoreError::AlreadyExists(volume_id));
        }
        let meta = CopyMeta {
            volume_id,
            size_bytes,
            role: layout.role,
            epoch: layout.epoch,
            mirrors: layout.mirrors,
            primary_server_id: layout.primary_server_id,
            syncing: layout.syncing,
            attachment: layout.attachment,
        };
        let copy = Arc::new(Copy::create_from(
            &self.root.join(volume_id.to_string()),
            meta,
            source,
        )?);
        self.start_links(&copy);
        copies.insert(volume_id, copy.clone());
        Ok(copy)
    }

    /// At a clean shutdown: saves every copy's change maps (and stops
    /// applying mutations).
    pub fn save_changes(&self) {
        for c in self.list() {
            if let Err(e) = c.save_changes() {
                tracing::warn!(
                    volume = c.volume_id,
                    "could not save change maps (the next snapshot compares hashes): {e}"
                );
            }
        }
    }

    pub fn delete(&self, volume_id: u64) -> Result<(), StoreError> {
        let copy = self
            .write()
            .remove(&volume_id)
            .ok_or(StoreError::NotFound(volume_id))?;
        copy.install_links(Links::default());
        crate::resync::reconcile(&copy, &[]);
        let doomed = self.root.join(format!("{volume_id}.deleting"));
        std::fs::rename(copy.dir(), &doomed)?;
        std::fs::remove_dir_all(&doomed)?;
        Ok(())
    }

    pub fn resize(&self, volume_id: u64, new_size: u64) -> Result<Arc<Copy>, StoreError> {
        if new_size == 0 || !new_size.is_multiple_of(4096) || new_size > MAX_VOLUME_BYTES {
            return Err(StoreError::Invalid(format!(
                "new_size_bytes must be a non-zero multiple of 4096 up to {MAX_VOLUME_BYTES}, got {new_size}"
            )));
        }
        let copy = self.get(volume_id).ok_or(StoreError::NotFound(volume_id))?;
        copy.grow(new_size)?;
        Ok(copy)
    }

    pub fn set_layout(&self, volume_id: u64, layout: Layout) -> Result<Arc<Copy>, StoreError> {
        layout.validate(self.local_id())?;
        let copy = self.get(volume_id).ok_or(StoreError::NotFound(volume_id))?;
        let mut next = copy.meta();
        next.role = layout.role;
        next.epoch = layout.epoch;
        next.mirrors = layout.mirrors;
        next.primary_server_id = layout.primary_server_id;
        next.syncing = layout.syncing;
        next.attachment = layout.attachment;
        let links = self.links_for(&copy, &next);
        copy.set_layout(
            |m| {
                m.role = next.role;
                m.epoch = next.epoch;
                m.mirrors = next.mirrors;
                m.primary_server_id = next.primary_server_id;
                m.syncing = next.syncing;
                m.attachment = next.attachment;
            },
            links,
        )?;
        crate::resync::reconcile(&copy, &copy.syncing());
        crate::snap::hydrate::start_background(&copy);
        Ok(copy)
    }
}
