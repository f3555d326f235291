//! The attachments of this node: one supervised backend per volume.
//!
//! Operations on one volume are serialised by a per-volume lock; different
//! volumes proceed in parallel. Each attachment has a supervisor task
//! ([`crate::supervise`]) that owns the backend's lifecycle: it restarts a
//! backend that died, and ends once a detach asked it to and the backend
//! has exited.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::{BackendSettings, Owner};
use crate::ctl::{self, CtlError};
use crate::params::{self, check_epoch_step, check_layout, check_size, AttachParams, ParamsError};
use crate::process::{self, SpawnError};
use crate::record::{self, Record, RecordError};
use crate::supervise;

mod recover;

/// Backend state as reported to the control service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Restarting,
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "RUNNING",
            State::Restarting => "RESTARTING",
            State::Stopped => "STOPPED",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Invalid(#[from] ParamsError),
    #[error("volume {0} is not attached on this node")]
    NotFound(u64),
    #[error("volume {volume_id} is already attached here with different parameters ({current}); detach it first, or use Resize/UpdateLayout")]
    Conflict { volume_id: u64, current: String },
    #[error("volume {volume_id}: {msg}")]
    Precondition { volume_id: u64, msg: String },
    #[error("volume {volume_id}: superseded attachment {attachment}: this node holds the newer attachment {current}; the request is stale and nothing changed")]
    Superseded {
        volume_id: u64,
        attachment: u64,
        current: u64,
    },
    #[error("volume {volume_id}: the layout is for attachment {attachment}, but this node holds attachment {current}; nothing changed")]
    WrongAttachment {
        volume_id: u64,
        attachment: u64,
        current: u64,
    },
    #[error("this node already has {max} attachments (--max-attachments); detach one, or raise --max-attachments")]
    Exhausted { max: usize },
    #[error("backend for volume {volume_id} failed to start: {source}")]
    Start { volume_id: u64, source: SpawnError },
    #[error("backend for volume {volume_id} is restarting; retry shortly")]
    NotRunning { volume_id: u64 },
    #[error("volume {volume_id}: {source}")]
    Ctl { volume_id: u64, source: CtlError },
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Live status of a backend.
#[derive(Debug, Clone)]
pub struct Status {
    pub pid: u32,
    pub start_time: u64,
    pub restarts: u32,
    pub state: State,
}

/// One attached volume.
pub struct Entry {
    pub socket: PathBuf,
    /// Owner of the vhost-user socket (the node's `--socket-owner` when it
    /// was attached).
    pub owner: Option<Owner>,
    pub(crate) params: Mutex<AttachParams>,
    pub(crate) status: Mutex<Status>,
    /// Set by detach: the supervisor stops restarting and ends.
    pub(crate) stopping: AtomicBool,
    pub(crate) stop_notify: Notify,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Entry {
    pub fn params(&self) -> AttachParams {
        lock(&self.params).clone()
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    pub fn record(&self) -> Record {
        let s = self.status();
        Record {
            params: self.params(),
            socket: self.socket.clone(),
            socket_owner: Some(self.owner),
            pid: s.pid,
            start_time: s.start_time,
            restarts: s.restarts,
        }
    }

    pub fn control_path(&self) -> PathBuf {
        params::control_path(&self.socket)
    }
}

/// A snapshot of one attachment (ListAttachments, Attach replies).
#[derive(Debug, Clone)]
pub struct Info {
    pub params: AttachParams,
    pub socket: PathBuf,
    pub status: Status,
    pub qemu_args: Vec<String>,
    pub cloud_hypervisor_args: Vec<String>,
}

/// I/O counters of a backend, for heartbeats.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub reads: u64,
    pub writes: u64,
    pub errors: u64,
}

pub struct Attachments {
    pub(crate) settings: BackendSettings,
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
    /// Attaches of volumes not yet in `entries` that hold a slot (lock
    /// after `entries`).
    starting: Mutex<usize>,
    locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

/// One of the `--max-attachments` places, held by an attach until its
/// entry is installed (or it fails).
struct Slot<'a>(&'a Mutex<usize>);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *lock(self.0) -= 1;
    }
}

impl Attachments {
    pub fn new(settings: BackendSettings) -> Arc<Attachments> {
        Arc::new(Attachments {
            settings,
            entries: Mutex::new(HashMap::new()),
            starting: Mutex::new(0),
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// A place for `volume_id`: refused when the node is full, unless the
    /// volume is attached already (a replacement takes no extra place).
    fn reserve(&self, volume_id: u64) -> Result<Slot<'_>, AttachError> {
        let entries = lock(&self.entries);
        let mut starting = lock(&self.starting);
        let max = self.settings.max_attachments;
        if !entries.contains_key(&volume_id) && entries.len() + *starting >= max {
            return Err(AttachError::Exhausted { max });
        }
        *starting += 1;
        Ok(Slot(&self.starting))
    }

    fn volume_lock(&self, id: u64) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(id).or_default().clone()
    }

    fn entry(&self, id: u64) -> Result<Arc<Entry>, AttachError> {
        lock(&self.entries)
            .get(&id)
            .cloned()
            .ok_or(AttachError::NotFound(id))
    }

    fn info(e: &Entry) -> Info {
        let p = e.params();
        Info {
            qemu_args: params::qemu_args(p.volume_id, &e.socket, p.queues),
            cloud_hypervisor_args: params::cloud_hypervisor_args(&e.socket, p.queues),
            params: p,
            socket: e.socket.clone(),
            status: e.status(),
        }
    }

    /// All attachments, by volume id.
    pub fn list(&self) -> Vec<Info> {
        let mut v: Vec<Info> = lock(&self.entries)
            .values()
            .map(|e| Self::info(e))
            .collect();
        v.sort_by_key(|i| i.params.volume_id);
        v
    }

    pub fn save(&self, e: &Entry) -> Result<(), RecordError> {
        record::save(&self.settings.state_dir, &e.record())
    }

    /// Attaches a volume. The same parameters and attachment again return
    /// the existing attachment; a higher attachment replaces it (the old
    /// backend is stopped, a new one started); a lower one is refused.
    pub async fn attach(self: &Arc<Self>, p: AttachParams) -> Result<Info, AttachError> {
        let p = p.validated()?;
        let id = p.volume_id;
        let vl = self.volume_lock(id);
        let _g = vl.lock().await;
        let old = self.entry(id).ok();
        if let Some(e) = &old {
            let cur = e.params();
            if p.attachment < cur.attachment {
                return Err(AttachError::Superseded {
                    volume_id: id,
                    attachment: p.attachment,
                    current: cur.attachment,
                });
            }
            if p.attachment == cur.attachment {
                if cur.same_attachment(&p) {
                    if !p.grant.is_empty() && p.grant != cur.grant {
                        self.renew_grant(e, &p.grant)?;
                    }
                    return Ok(Self::info(e));
                }
                return Err(AttachError::Conflict {
                    volume_id: id,
                    current: format!(
                        "size {} primary {} epoch {} read_only {} queues {} attachment {}",
                        cur.size_bytes,
                        cur.primary,
                        cur.epoch,
                        cur.read_only,
                        cur.queues,
                        cur.attachment
                    ),
                });
            }
            if p.epoch < cur.epoch {
                return Err(AttachError::Precondition {
                    volume_id: id,
                    msg: format!(
                        "attachment {} comes with epoch {}, older than the current {}; layouts only move forward",
                        p.attachment, p.epoch, cur.epoch
                    ),
                });
            }
        }
        let slot = self.reserve(id)?;
        let s = &self.settings;
        let entry = Arc::new(Entry {
            socket: params::socket_path(&s.run_dir, id),
            owner: s.socket_owner,
            params: Mutex::new(p.clone()),
            status: Mutex::new(Status {
                pid: 0,
                start_time: 0,
                restarts: 0,
                state: State::Restarting,
            }),
            stopping: AtomicBool::new(false),
            stop_notify: Notify::new(),
            supervisor: Mutex::new(None),
        });
        if let Some(old) = old {
            // Recorded first: after a crash from here on, recovery starts
            // the new attachment, never the superseded one (whose backend,
            // if still running then, no record names and is stopped).
            self.save(&entry)?;
            tracing::info!(
                volume = id,
                old = old.params().attachment,
                new = p.attachment,
                "newer attachment: replacing the backend"
            );
            self.stop(&old).await;
            if old.socket != entry.socket {
                // A socket of the older layout, directly in the run directory.
                process::remove_sockets(id, &old.socket, s);
            }
            lock(&self.entries).remove(&id);
        }
        let started = match process::start(&p, &entry.socket, entry.owner, s).await {
            Ok(st) => st,
            Err(source) => {
                self.cleanup_files(&entry, id);
                return Err(AttachError::Start {
                    volume_id: id,
                    source,
                });
            }
        };
        {
            let mut st = lock(&entry.status);
            st.pid = started.pid;
            st.start_time = started.start_time;
            st.state = State::Running;
        }
        if let Err(e) = self.save(&entry) {
            process::signal(started.pid, started.start_time, libc::SIGKILL);
            let mut w = started.waiter;
            w.wait().await;
            self.cleanup_files(&entry, id);
            return Err(e.into());
        }
        tracing::info!(volume = id, attachment = p.attachment, pid = started.pid, socket = %entry.socket.display(), "attached");
        self.install(entry.clone(), started.waiter);
        drop(slot);
        Ok(Self::info(&entry))
    }

    fn install(self: &Arc<Self>, entry: Arc<Entry>, waiter: process::Waiter) {
        let id = entry.params().volume_id;
        lock(&self.entries).insert(id, entry.clone());
        let h = tokio::spawn(supervise::run(self.clone(), entry.clone(), waiter));
        *lock(&entry.supervisor) = Some(h);
    }

    fn cleanup_files(&self, e: &Entry, volume_id: u64) {
        process::remove_sockets(volume_id, &e.socket, &self.settings);
        if let Err(err) = record::remove(&self.settings.state_dir, volume_id) {
            tracing::error!("{err}");
        }
    }

    /// Stops an entry's backend and its supervisor: SIGTERM (the backend
    /// completes what is in flight), SIGKILL after the stop timeout.
    async fn stop(&self, e: &Entry) {
        let volume_id = e.params().volume_id;
        let target = {
            let st = lock(&e.status);
            e.stopping.store(true, Ordering::SeqCst);
            (st.state == State::Running).then_some((st.pid, st.start_time))
        };
        e.stop_notify.notify_one();
        if let Some((pid, start)) = target {
            process::signal(pid, start, libc::SIGTERM);
        }
        let handle = lock(&e.supervisor).take();
        if let Some(mut h) = handle {
            if tokio::time::timeout(self.settings.stop_timeout, &mut h)
                .await
                .is_err()
            {
                let st = e.status();
                tracing::warn!(
                    volume = volume_id,
                    pid = st.pid,
                    "backend did not stop in time; SIGKILL"
                );
                process::signal(st.pid, st.start_time, libc::SIGKILL);
                if tokio::time::timeout(self.settings.stop_timeout, &mut h)
                    .await
                    .is_err()
                {
                    h.abort();
                }
            }
        }
    }

    /// Stops the backend after its in-flight requests complete (SIGTERM;
    /// SIGKILL after the stop timeout) and forgets the attachment.
    /// Detaching a volume that is not attached succeeds.
    pub async fn detach(&self, volume_id: u64) -> Result<(), AttachError> {
        let vl = self.volume_lock(volume_id);
        let _g = vl.lock().await;
        let Ok(e) = self.entry(volume_id) else {
            return Ok(());
        };
        self.stop(&e).await;
        self.cleanup_files(&e, volume_id);
        lock(&self.entries).remove(&volume_id);
        tracing::info!(volume = volume_id, "detached");
        Ok(())
    }

    /// Grows the volume online: recorded first (a restarted backend uses
    /// the new size), then the running backend is told.
    pub async fn resize(&self, volume_id: u64, size_bytes: u64) -> Result<(), AttachError> {
        check_size(size_bytes)?;
        let vl = self.volume_lock(volume_id);
        let _g = vl.lock().await;
        let e = self.entry(volume_id)?;
        let cur = e.params().size_bytes;
        if size_bytes < cur {
            return Err(AttachError::Precondition {
                volume_id,
                msg: format!("cannot shrink from {cur} to {size_bytes} bytes; volumes only grow"),
            });
        }
        lock(&e.params).size_bytes = size_bytes;
        self.save(&e)?;
        let pid = e.status().pid;
        self.tell(
            &e,
            volume_id,
            ctl::resize(&e.control_path(), pid, size_bytes),
        )
        .await
    }

    /// Installs a new primary/epoch for `attachment`, which must be the
    /// one held here. Epochs never move back, nor jump implausibly far.
    /// Stores a renewed grant for the backend (which reads it at its next
    /// connection) and in the attachment's record.
    fn renew_grant(&self, e: &Arc<Entry>, grant: &[u8]) -> Result<(), AttachError> {
        let volume_id = e.params().volume_id;
        params::store_grant(&self.settings.state_dir, volume_id, grant).map_err(|err| {
            AttachError::Precondition {
                volume_id,
                msg: format!("cannot store the attachment grant: {err}"),
            }
        })?;
        lock(&e.params).grant = grant.to_vec();
        self.save(e)?;
        Ok(())
    }

    pub async fn update_layout(
        &self,
        volume_id: u64,
        primary: String,
        epoch: u64,
        attachment: u64,
        grant: Vec<u8>,
    ) -> Result<(), AttachError> {
        if grant.len() > basalt_auth::grant::MAX_GRANT_LEN {
            return Err(ParamsError::Grant(grant.len()).into());
        }
        check_layout(&primary, epoch)?;
        let vl = self.volume_lock(volume_id);
        let _g = vl.lock().await;
        let e = self.entry(volume_id)?;
        let params = e.params();
        if attachment != params.attachment {
            return Err(AttachError::WrongAttachment {
                volume_id,
                attachment,
                current: params.attachment,
            });
        }
        let cur = params.epoch;
        if !check_epoch_step(cur, epoch)? {
            return Err(AttachError::Precondition {
                volume_id,
                msg: format!(
                    "epoch {epoch} is older than the current {cur}; layouts only move forward"
                ),
            });
        }
        if !grant.is_empty() {
            self.renew_grant(&e, &grant)?;
        }
        {
            let mut p = lock(&e.params);
            p.primary = primary.clone();
            p.epoch = epoch;
        }
        self.save(&e)?;
        let pid = e.status().pid;
        self.tell(
            &e,
            volume_id,
            ctl::layout(&e.control_path(), pid, &primary, epoch),
        )
        .await
    }

    async fn tell(
        &self,
        e: &Entry,
        volume_id: u64,
        call: impl std::future::Future<Output = Result<serde_json::Value, CtlError>>,
    ) -> Result<(), AttachError> {
        if e.status().state != State::Running {
            // Recorded; the restarted backend starts with it.
            return Err(AttachError::NotRunning { volume_id });
        }
        call.await
            .map(|_| ())
            .map_err(|source| AttachError::Ctl { volume_id, source })
    }

    /// I/O counters of a running backend (`None` if it cannot be asked).
    pub async fn counters(&self, volume_id: u64) -> Option<Counters> {
        let e = self.entry(volume_id).ok()?;
        let v = ctl::stats(&e.control_path(), e.status().pid).await.ok()?;
        Some(Counters {
            reads: v["reads"].as_u64().unwrap_or(0),
            writes: v["writes"].as_u64().unwrap_or(0),
            errors: v["errors"].as_u64().unwrap_or(0),
        })
    }
}
