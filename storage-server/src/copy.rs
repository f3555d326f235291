//! One copy of a volume: a sparse data file plus its durable metadata.
//!
//! Layout on disk: `<data_dir>/copies/<volume_id>/{data,meta.json}`. The data
//! file is sparse and exactly `size_bytes` long; discard and write-zeroes punch
//! holes. Positioned I/O (`pread`/`pwrite`) needs no lock, so many requests run
//! at once; only the ordering of mutations forwarded to mirrors is serialised
//! per volume (see [`Copy::order`]).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::dirty::Tracker;
use crate::meta::{CopyMeta, Role};
use crate::mirror::MirrorLink;
use crate::snap::hydrate::{Hydration, Source};

pub const DATA_FILE: &str = "data";

/// Largest step a layout change may raise a copy's epoch by. The control
/// service raises it by one per layout change; a copy that was away for a
/// while may skip many, but never this many.
pub const MAX_EPOCH_JUMP: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("range {offset}+{len} is past the end of the {size}-byte volume")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("epoch {got} is older than this copy's epoch {current}: the sender was fenced")]
    StaleEpoch { got: u64, current: u64 },
    #[error("epoch {got} is newer than this copy's epoch {current}: only the control service raises epochs; retry once its layout change reached this copy")]
    EpochAhead { got: u64, current: u64 },
    #[error("attachment {got} was superseded by attachment {current}: this backend was fenced (the volume was attached elsewhere or detached)")]
    Fenced { got: u64, current: u64 },
    #[error("attachment {got} is newer than this copy's attachment {current}: retry once the control service's layout change reached this copy")]
    AttachmentAhead { got: u64, current: u64 },
    #[error("layout epoch {got} jumps more than {max} past this copy's epoch {current}: refused as absurd")]
    Jump { got: u64, current: u64, max: u64 },
    #[error("cannot shrink a copy from {size} to {requested} bytes: volumes only grow")]
    Shrink { size: u64, requested: u64 },
    #[error("disk I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The mirror links of a layout: in-sync mirrors and syncing mirrors.
#[derive(Default)]
pub struct Links {
    pub mirrors: Vec<Arc<MirrorLink>>,
    pub syncing: Vec<Arc<MirrorLink>>,
}

/// A layout change as applied: the metadata before and after.
pub struct LayoutChange {
    pub before: CopyMeta,
    pub after: CopyMeta,
}

pub struct Copy {
    pub volume_id: u64,
    dir: PathBuf,
    file: File,
    size: AtomicU64,
    epoch: AtomicU64,
    attachment: AtomicU64,
    primary: AtomicBool,
    /// Persisted metadata; locked only for layout changes and epoch bumps.
    meta: Mutex<CopyMeta>,
    /// Held while a mutation is applied locally and queued to every mirror,
    /// so that overlapping writes reach all copies in the same order. Held
    /// for microseconds (a pwrite to the page cache and a channel send).
    pub order: Mutex<()>,
    mirrors: RwLock<Arc<Vec<Arc<MirrorLink>>>>,
    /// Mirrors being filled: they get every mutation, their acks don't count.
    syncing: RwLock<Arc<Vec<Arc<MirrorLink>>>>,
    /// Full copies in progress, by mirror server id.
    pub resyncs: Mutex<std::collections::HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Syncing mirrors whose full copy completed.
    pub synced: Mutex<std::collections::HashSet<String>>,
    /// Bytes sent by full copies.
    pub resync_bytes: AtomicU64,
    /// Bytes sent by delta resyncs (dirty regions only).
    pub delta_resync_bytes: AtomicU64,
    /// Dirty-region maps of absent peers (primary only).
    pub dirty: Arc<Tracker>,
    /// Bumped after every layout change, for tasks that follow the layout.
    layout_changed: tokio::sync::watch::Sender<u64>,
    /// Change maps, and on a primary its snapshot jobs.
    pub snap: crate::snap::SnapState,
    /// Set while the copy loads the snapshot it was created from.
    hydration: RwLock<Option<Arc<Hydration>>>,
    /// The hydration that completed (in memory only): its last figures.
    finished_hydration: RwLock<Option<Arc<Hydration>>>,
    /// The server is shutting down and saved the change maps: no mutation
    /// is applied any more (it would be missing from them).
    closed: AtomicBool,
}

/// Change maps saved at a clean shutdown (see [`Copy::save_changes`]).
pub const CHANGES_FILE: &str = "changes.bin";

impl Copy {
    /// Creates the directory, a sparse data file and the metadata.
    pub fn create(dir: &Path, meta: CopyMeta) -> Result<Copy, CopyError> {
        Self::create_from(dir, meta, None)
    }

    /// [`Copy::create`], loading `source` (a snapshot) on demand. The
    /// metadata is written last: a copy without it is removed at start.
    pub fn create_from(
        dir: &Path,
        meta: CopyMeta,
        source: Option<Source>,
    ) -> Result<Copy, CopyError> {
        std::fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(DATA_FILE))?;
        file.set_len(meta.size_bytes)?;
        file.sync_all()?;
        let hydration = source
            .map(|s| Hydration::create(dir, s))
            .transpose()?
            .map(Arc::new);
        meta.store(dir)?;
        let copy = Self::from_parts(dir, file, meta);
        *copy.hydration.write().unwrap_or_else(|e| e.into_inner()) = hydration;
        Ok(copy)
    }

    /// Opens an existing copy after a restart.
    pub fn open(dir: &Path) -> Result<Copy, CopyError> {
        let meta = CopyMeta::load(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(DATA_FILE))?;
        let len = file.metadata()?.len();
        if len != meta.size_bytes {
            // A resize persists metadata after growing the file, so a longer
            // file is a crash in between: finish it.
            file.set_len(meta.size_bytes)?;
        }
        let hydration = Hydration::open(dir)?.map(Arc::new);
        let copy = Self::from_parts(dir, file, meta);
        *copy.hydration.write().unwrap_or_else(|e| e.into_inner()) = hydration;
        copy.load_changes()?;
        Ok(copy)
    }

    fn from_parts(dir: &Path, file: File, meta: CopyMeta) -> Copy {
        let dirty = Arc::new(Tracker::new(&meta));
        Copy {
            volume_id: meta.volume_id,
            dir: dir.to_path_buf(),
            file,
            size: AtomicU64::new(meta.size_bytes),
            epoch: AtomicU64::new(meta.epoch),
            attachment: AtomicU64::new(meta.attachment),
            primary: AtomicBool::new(meta.role == Role::Primary),
            meta: Mutex::new(meta),
            order: Mutex::new(()),
            mirrors: RwLock::new(Arc::new(Vec::new())),
            syncing: RwLock::new(Arc::new(Vec::new())),
            resyncs: Mutex::default(),
            synced: Mutex::default(),
            resync_bytes: AtomicU64::new(0),
            delta_resync_bytes: AtomicU64::new(0),
            dirty,
            layout_changed: tokio::sync::watch::channel(0).0,
            snap: Default::default(),
            hydration: RwLock::new(None),
            finished_hydration: RwLock::new(None),
            closed: AtomicBool::new(false),
        }
    }

    /// At a clean shutdown: stops applying mutations, syncs the data, and
    /// saves the change maps, so the next snapshot after a restart is
    /// still incremental. Under the ordering lock, so the maps hold every
    /// mutation applied.
    pub fn save_changes(&self) -> Result<(), CopyError> {
        let _order = lock(&self.order);
        self.closed.store(true, Ordering::Release);
        self.sync()?;
        let bytes = lock(&self.snap.changes).encode();
        let tmp = self.dir.join("changes.bin.tmp");
        std::fs::write(&tmp, bytes)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(CHANGES_FILE))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Loads change maps saved by a clean shutdown, and removes them: after
    /// a crash from here on they would miss writes, so they are never read
    /// twice. A missing or damaged file leaves no maps (the next snapshot
    /// compares hashes instead).
    fn load_changes(&self) -> Result<(), CopyError> {
        let path = self.dir.join(CHANGES_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        std::fs::remove_file(&path)?;
        File::open(&self.dir)?.sync_all()?;
        match crate::snap::changes::ChangeMaps::decode(&bytes) {
            Some(m) => {
                tracing::info!(volume = self.volume_id, maps = ?m.bases(), "change maps of the last clean shutdown loaded");
                *lock(&self.snap.changes) = m;
            }
            None => tracing::warn!(
                volume = self.volume_id,
                "saved change maps are damaged: the next snapshot compares hashes"
            ),
        }
        Ok(())
    }

    /// The hydration of a copy created from a snapshot, until it completes.
    pub fn hydration(&self) -> Option<Arc<Hydration>> {
        self.hydration
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The hydration that completed since this server started, if any.
    pub fn finished_hydration(&self) -> Option<Arc<Hydration>> {
        self.finished_hydration
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The data file, for positioned reads outside the copy (snapshots).
    pub fn data_file(&self) -> &File {
        &self.file
    }

    /// Applies a mutation (on a primary or a mirror), keeping snapshot state
    /// in step: change maps and copy-on-write first, presence after. Called
    /// under the ordering lock. `len` is the range's length (for a write,
    /// `data.len()`).
    pub fn apply_mutation(
        &self,
        op: basalt_proto::wire::Opcode,
        offset: u64,
        len: u64,
        data: &[u8],
    ) -> Result<(), CopyError> {
        use basalt_proto::wire::Opcode;
        if self.closed.load(Ordering::Acquire) {
            return Err(CopyError::Io(std::io::Error::other(
                "the server is shutting down",
            )));
        }
        self.check_range(offset, len)?;
        self.snap.before_mutation(&self.file, offset, len)?;
        match op {
            Opcode::Write => self.write_at(offset, data)?,
            _ => self.punch(offset, len)?,
        }
        if let Some(h) = self.hydration() {
            h.after_mutation(op, offset, len, self.size());
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn meta(&self) -> CopyMeta {
        lock(&self.meta).clone()
    }

    pub fn is_primary(&self) -> bool {
        self.primary.load(Ordering::Acquire)
    }

    /// For a mirror: the server whose replica frames it accepts.
    pub fn primary_server_id(&self) -> String {
        lock(&self.meta).primary_server_id.clone()
    }

    /// Bytes allocated on disk (sparse files use less than their size).
    pub fn allocated_bytes(&self) -> u64 {
        self.file
            .metadata()
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0)
    }

    pub fn attachment(&self) -> u64 {
        self.attachment.load(Ordering::Acquire)
    }

    /// Admits a data request carrying `epoch` (invariant 3): an older epoch
    /// is refused (the sender was fenced); a newer one is refused too,
    /// without being adopted: only the control service raises a copy's epoch
    /// ([`Copy::set_layout`]), so a data request can neither brick a copy
    /// with a huge epoch nor cost an fsync. `attachment` is the backend's
    /// attachment generation (None for replica frames): an older one than
    /// the copy's is fenced for good (invariant 5a).
    pub fn admit(&self, epoch: u64, attachment: Option<u64>) -> Result<(), CopyError> {
        let current = self.epoch();
        if epoch < current {
            return Err(CopyError::StaleEpoch {
                got: epoch,
                current,
            });
        }
        if let Some(got) = attachment {
            let current = self.attachment();
            if got < current {
                return Err(CopyError::Fenced { got, current });
            }
            if got > current {
                return Err(CopyError::AttachmentAhead { got, current });
            }
        }
        if epoch > current {
            return Err(CopyError::EpochAhead {
                got: epoch,
                current,
            });
        }
        Ok(())
    }

    /// Runs a mutation under the ordering lock after admitting it there.
    /// [`Copy::set_layout`] takes the same lock, so a layout change and a
    /// mutation are totally ordered: once a layout with epoch E+1 (or a new
    /// attachment) was set, no mutation admitted under the old one is
    /// applied any more.
    pub fn ordered<R>(
        &self,
        epoch: u64,
        attachment: Option<u64>,
        apply: impl FnOnce() -> Result<R, CopyError>,
    ) -> Result<R, CopyError> {
        let _order = lock(&self.order);
        self.admit(epoch, attachment)?;
        apply()
    }

    /// Replaces role, epoch and peers, persisted before it takes effect, and
    /// installs `links` (the mirror links of the new layout) at the same
    /// moment. Holds the ordering lock, so no mutation is applied or queued
    /// while the layout changes: a mutation either precedes the change
    /// (checked against the old epoch, sent over the old links) or follows
    /// it entirely. Lock order: `order`, then `meta`; never the reverse.
    pub fn set_layout(
        &self,
        update: impl FnOnce(&mut CopyMeta),
        links: Links,
    ) -> Result<LayoutChange, CopyError> {
        let _order = lock(&self.order);
        let mut m = lock(&self.meta);
        let mut next = m.clone();
        update(&mut next);
        if next.epoch < m.epoch {
            return Err(CopyError::StaleEpoch {
                got: next.epoch,
                current: m.epoch,
            });
        }
        if next.epoch - m.epoch > MAX_EPOCH_JUMP {
            return Err(CopyError::Jump {
                got: next.epoch,
                current: m.epoch,
                max: MAX_EPOCH_JUMP,
            });
        }
        if next.attachment < m.attachment {
            return Err(CopyError::Fenced {
                got: next.attachment,
                current: m.attachment,
            });
        }
        next.store(&self.dir)?;
        let before = std::mem::replace(&mut *m, next.clone());
        self.dirty.on_layout(&before, &next);
        self.epoch.store(next.epoch, Ordering::Release);
        self.attachment.store(next.attachment, Ordering::Release);
        self.primary
            .store(next.role == Role::Primary, Ordering::Release);
        self.set_mirrors(links.mirrors);
        self.set_syncing(links.syncing);
        self.layout_changed.send_modify(|n| *n += 1);
        Ok(LayoutChange {
            before,
            after: next,
        })
    }

    /// Grows the copy: the file first, then the persisted size, so a crash
    /// in between is repaired by [`Copy::open`]. Shrinking is refused.
    pub fn grow(&self, new_size: u64) -> Result<(), CopyError> {
        let mut m = lock(&self.meta);
        if new_size < m.size_bytes {
            return Err(CopyError::Shrink {
                size: m.size_bytes,
                requested: new_size,
            });
        }
        if new_size == m.size_bytes {
            return Ok(());
        }
        self.file.set_len(new_size)?;
        self.file.sync_all()?;
        let mut next = m.clone();
        next.size_bytes = new_size;
        next.store(&self.dir)?;
        *m = next;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }

    /// Installs the links of a copy just created or opened.
    pub fn install_links(&self, links: Links) {
        let _order = lock(&self.order);
        self.set_mirrors(links.mirrors);
        self.set_syncing(links.syncing);
    }

    /// Changes (to an unspecified value) after every layout change.
    pub fn layout_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.layout_changed.subscribe()
    }

    pub fn mirrors(&self) -> Arc<Vec<Arc<MirrorLink>>> {
        self.mirrors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn syncing(&self) -> Arc<Vec<Arc<MirrorLink>>> {
        self.syncing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_syncing(&self, links: Vec<Arc<MirrorLink>>) {
        *self.syncing.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(links);
    }

    /// The next allocated range at or after `offset` (`SEEK_DATA`/`SEEK_HOLE`),
    /// so a full copy skips holes; `None` past the last one.
    pub fn next_data(&self, offset: u64) -> Result<Option<(u64, u64)>, CopyError> {
        let fd = self.file.as_raw_fd();
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let start = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
        if start < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                // No SEEK_DATA support: treat the rest as data.
                Some(libc::EINVAL) => Ok((offset < self.size()).then(|| (offset, self.size()))),
                _ => Err(e.into()),
            };
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        let end = if end < 0 { self.size() as i64 } else { end };
        Ok(Some((start as u64, (end as u64).min(self.size()))))
    }

    fn set_mirrors(&self, links: Vec<Arc<MirrorLink>>) {
        *self.mirrors.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(links);
    }

    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), CopyError> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(CopyError::OutOfRange { offset, len, size }),
        }
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), CopyError> {
        self.check_range(offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)?;
        Ok(())
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), CopyError> {
        self.check_range(offset, data.len() as u64)?;
        self.file.write_all_at(data, offset)?;
        Ok(())
    }

    /// Deallocates a range; reads of it return zeroes afterwards. Used for
    /// both discard and write-zeroes.
    pub fn punch(&self, offset: u64, len: u64) -> Result<(), CopyError> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: plain syscall on a file descriptor we own; no memory passed.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(err.into());
        }
        // Filesystem without hole punching: write zeroes.
        let zeroes = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// fdatasync: every write completed before this call is durable after
    /// it. A hydrating copy then persists the presence bits set before the
    /// sync started, and drops its source once every block is present.
    pub fn sync(&self) -> Result<(), CopyError> {
        let Some(h) = self.hydration() else {
            self.file.sync_data()?;
            return Ok(());
        };
        let words = h.presence.take_unsynced();
        self.file.sync_data()?;
        h.presence.persist(words)?;
        if h.presence.complete() && h.presence.all_synced() {
            let mut slot = self.hydration.write().unwrap_or_else(|e| e.into_inner());
            if slot.is_some() {
                Hydration::remove_files(&self.dir)?;
                *self
                    .finished_hydration
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = slot.take();
                tracing::info!(
                    volume = self.volume_id,
                    "every block of the source snapshot is local: hydration done"
                );
            }
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(epoch: u64) -> CopyMeta {
        CopyMeta {
            volume_id: 1,
            size_bytes: 1 << 20,
            role: Role::Primary,
            epoch,
            mirrors: vec![],
            primary_server_id: String::new(),
            syncing: vec![],
            attachment: 0,
        }
    }

    #[test]
    fn io_bounds_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        let c = Copy::create(d.path(), meta(1)).unwrap();
        c.write_at(4096, &[9; 512]).unwrap();
        assert!(matches!(
            c.write_at((1 << 20) - 511, &[0; 512]),
            Err(CopyError::OutOfRange { .. })
        ));
        assert!(matches!(
            c.read_at(u64::MAX - 10, &mut [0; 512]),
            Err(CopyError::OutOfRange { .. })
        ));
        let mut b = [0u8; 512];
        c.read_at(4096, &mut b).unwrap();
        assert_eq!(b, [9; 512]);
        c.punch(4096, 512).unwrap();
        c.read_at(4096, &mut b).unwrap();
        assert_eq!(b, [0; 512]);
        c.write_at(0, &[1; 512]).unwrap();
        c.sync().unwrap();
        drop(c);
        let c = Copy::open(d.path()).unwrap();
        c.read_at(0, &mut b).unwrap();
        assert_eq!(b, [1; 512]);
    }

    #[test]
    fn epochs_are_persisted_and_enforced() {
        let d = tempfile::tempdir().unwrap();
        let c = Copy::create(d.path(), meta(3)).unwrap();
        assert!(c.admit(3, None).is_ok());
        assert!(matches!(
            c.admit(2, None),
            Err(CopyError::StaleEpoch { got: 2, current: 3 })
        ));
        // A data request never raises the epoch, however high it claims.
        for e in [4, 7, u64::MAX] {
            assert!(matches!(
                c.admit(e, None),
                Err(CopyError::EpochAhead { current: 3, .. })
            ));
        }
        assert_eq!(c.epoch(), 3);
        assert_eq!(CopyMeta::load(d.path()).unwrap().epoch, 3);
        c.set_layout(|m| m.epoch = 7, Links::default()).unwrap();
        drop(c);
        let c = Copy::open(d.path()).unwrap();
        assert_eq!(c.epoch(), 7);
        assert!(c.admit(6, None).is_err());
        assert!(c.set_layout(|m| m.epoch = 5, Links::default()).is_err());
        let change = c.set_layout(|m| m.epoch = 8, Links::default()).unwrap();
        assert_eq!((change.before.epoch, change.after.epoch), (7, 8));
        // Absurd jumps are refused, even from the admin API.
        assert!(matches!(
            c.set_layout(|m| m.epoch = u64::MAX, Links::default()),
            Err(CopyError::Jump { .. })
        ));
        assert_eq!(c.epoch(), 8);
    }

    #[test]
    fn superseded_attachments_are_fenced_for_good() {
        let d = tempfile::tempdir().unwrap();
        let c = Copy::create(d.path(), meta(1)).unwrap();
        c.set_layout(|m| m.attachment = 2, Links::default())
            .unwrap();
        assert!(c.admit(1, Some(2)).is_ok());
        assert!(matches!(
            c.admit(1, Some(1)),
            Err(CopyError::Fenced { got: 1, current: 2 })
        ));
        assert!(matches!(
            c.admit(1, Some(3)),
            Err(CopyError::AttachmentAhead { got: 3, current: 2 })
        ));
        // Replica frames carry no attachment.
        assert!(c.admit(1, None).is_ok());
        // The attachment is never lowered, and survives a restart.
        assert!(matches!(
            c.set_layout(|m| m.attachment = 1, Links::default()),
            Err(CopyError::Fenced { .. })
        ));
        drop(c);
        let c = Copy::open(d.path()).unwrap();
        assert_eq!(c.attachment(), 2);
        assert!(c.admit(1, Some(1)).is_err());
    }

    /// A mutation whose epoch was checked before a layout change must be
    /// applied before that change returns: after `set_layout(E+1)` returned,
    /// nothing carrying epoch E lands any more.
    #[test]
    fn a_layout_change_waits_for_a_mutation_checked_under_the_old_epoch() {
        use std::sync::mpsc::channel;
        let d = tempfile::tempdir().unwrap();
        let c = Arc::new(Copy::create(d.path(), meta(1)).unwrap());
        let (checked_tx, checked) = channel();
        let (go_tx, go) = channel::<()>();
        let writer = {
            let c = c.clone();
            std::thread::spawn(move || {
                c.ordered(1, None, || {
                    checked_tx.send(()).unwrap();
                    go.recv().unwrap();
                    c.write_at(0, &[7; 512])
                })
            })
        };
        checked.recv().unwrap();
        let (seen_tx, seen) = channel();
        {
            let c = c.clone();
            std::thread::spawn(move || {
                c.set_layout(|m| m.epoch = 2, Links::default()).unwrap();
                // What the copy holds the moment the new layout is in force.
                let mut b = [0u8; 512];
                c.read_at(0, &mut b).unwrap();
                seen_tx.send(b).unwrap();
            });
        }
        // The layout change must not finish while the checked write is
        // paused; give it ample time to (wrongly) do so, then release it.
        let early = seen.recv_timeout(std::time::Duration::from_millis(300));
        go_tx.send(()).unwrap();
        writer.join().unwrap().unwrap();
        let seen = early.or_else(|_| seen.recv()).unwrap();
        assert_eq!(
            seen, [7; 512],
            "the layout change returned before a write checked under the old epoch was applied"
        );
        assert!(matches!(
            c.ordered(1, None, || Ok(())),
            Err(CopyError::StaleEpoch { got: 1, current: 2 })
        ));
    }
}
