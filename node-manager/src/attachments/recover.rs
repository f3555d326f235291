//! Recovery after a restart of the node manager.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::{lock, AttachError, Attachments, Entry, State, Status};
use crate::params;
use crate::process;
use crate::procfs;
use crate::record::{self, Record};
use crate::supervise;

impl Attachments {
    /// After a restart of the node manager: re-adopts every recorded
    /// backend still running (same pid, start time and command line) and
    /// restarts the others. Backends in the run directory that no record
    /// names (left by a crash between start and record) are stopped.
    pub async fn recover(self: &Arc<Self>) -> Result<(), AttachError> {
        let s = self.settings.clone();
        let records: Vec<(Record, bool)> = record::load_all(&s.state_dir)?
            .into_iter()
            .map(|r| {
                let alive = procfs::same_process(r.pid, r.start_time)
                    && procfs::cmdline(r.pid)
                        .is_some_and(|c| procfs::is_backend_for(&c, &s.bin, &r.socket));
                (r, alive)
            })
            .collect();
        // Before anything is restarted, so only strays are found.
        for (pid, socket) in procfs::backends_in(&s.bin, &s.run_dir) {
            if !records.iter().any(|(r, alive)| *alive && r.pid == pid) {
                tracing::warn!(pid, socket, "stopping a backend no attachment record names");
                if let Some(st) = procfs::start_time(pid) {
                    process::signal(pid, st, libc::SIGTERM);
                }
            }
        }
        self.remove_orphan_dirs(&records);
        if records.len() > s.max_attachments {
            tracing::warn!(
                records = records.len(),
                max = s.max_attachments,
                "more attachments recorded than --max-attachments; all are kept, new ones are refused until enough are detached"
            );
        }
        for (r, alive) in records {
            let id = r.params.volume_id;
            if !process::per_attachment(id, &r.socket, &s) {
                tracing::warn!(
                    volume = id,
                    socket = %r.socket.display(),
                    "this attachment keeps the socket path of an older layout (its backend runs as the node manager's user); detach and attach it again to move it to its own directory"
                );
            }
            let entry = Arc::new(Entry {
                socket: r.socket.clone(),
                owner: r.socket_owner.unwrap_or(s.socket_owner),
                params: Mutex::new(r.params.clone()),
                status: Mutex::new(Status {
                    pid: r.pid,
                    start_time: r.start_time,
                    restarts: r.restarts,
                    state: State::Running,
                }),
                stopping: AtomicBool::new(false),
                stop_notify: Notify::new(),
                supervisor: Mutex::new(None),
            });
            if alive {
                tracing::info!(volume = id, pid = r.pid, "re-adopted running backend");
                let w = process::adopt(r.pid, r.start_time, s.supervision_interval);
                self.install(entry, w);
            } else {
                tracing::warn!(
                    volume = id,
                    pid = r.pid,
                    "recorded backend is gone; restarting it"
                );
                lock(&entry.status).state = State::Restarting;
                lock(&self.entries).insert(id, entry.clone());
                let h = tokio::spawn(supervise::restart_loop(self.clone(), entry.clone()));
                *lock(&entry.supervisor) = Some(h);
            }
        }
        Ok(())
    }

    /// Removes the per-attachment directories no record names (left by a
    /// crash between starting a backend and recording it, or between
    /// removing a record and its directory).
    fn remove_orphan_dirs(&self, records: &[(Record, bool)]) {
        let s = &self.settings;
        let Ok(dir) = std::fs::read_dir(&s.run_dir) else {
            return;
        };
        for e in dir.flatten() {
            let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vol-"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let socket = params::socket_path(&s.run_dir, id);
            if e.file_type().is_ok_and(|t| t.is_dir())
                && !records.iter().any(|(r, _)| r.socket == socket)
            {
                tracing::warn!(path = %e.path().display(), "removing a socket directory no attachment record names");
                process::remove_sockets(id, &socket, s);
            }
        }
    }
}
