//! Starting a backend process, waiting until it serves, watching it exit
//! (our child, or a backend adopted after a restart of the node manager),
//! and signalling it.

use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};

use crate::config::{BackendSettings, Owner};
use crate::params::{backend_args, control_path, log_path, AttachParams};
use crate::procfs;

/// How often readiness (the sockets appearing) is checked while waiting.
const READY_POLL: Duration = Duration::from_millis(5);
/// Lines of the backend log returned with a start failure.
const LOG_TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot prepare {path}: {source}; check that the directory is writable")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot start backend {bin}: {source}; check --backend-bin")]
    Exec { bin: PathBuf, source: io::Error },
    #[error("backend exited while starting ({status}); log tail:\n{tail}")]
    Exited { status: String, tail: String },
    #[error("backend did not create its sockets within {timeout:?} (stopped); log tail:\n{tail}")]
    Timeout { timeout: Duration, tail: String },
}

/// How an exit is awaited.
pub enum Waiter {
    /// A process we started (reaped by us).
    Child(Child),
    /// A backend adopted after a restart of the node manager: not our
    /// child, watched through a pidfd, or /proc polling without one.
    Adopted {
        pid: u32,
        start_time: u64,
        pidfd: Option<AsyncFd<OwnedFd>>,
        interval: Duration,
    },
}

/// A backend that is serving.
pub struct Started {
    pub pid: u32,
    pub start_time: u64,
    pub waiter: Waiter,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpawnError + '_ {
    move |source| SpawnError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` with mode 0700 (owned by `owner` when given).
pub fn prepare_dir(dir: &Path, owner: Option<Owner>) -> Result<(), SpawnError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    if let Some(o) = owner {
        chown(dir, Some(o.uid), Some(o.gid)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// Mode 0600 on a socket (owned by `owner` when given).
pub fn secure_socket(path: &Path, owner: Option<Owner>) -> Result<(), SpawnError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    if let Some(o) = owner {
        chown(path, Some(o.uid), Some(o.gid)).map_err(io_err(path))?;
    }
    Ok(())
}

/// The last lines of a backend's log.
pub fn log_tail(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
        let _ = f.read_to_end(&mut buf);
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Starts a backend for `p` on `socket` in its own process group (so a
/// signal to the node manager's group does not reach it and it outlives
/// the node manager), and waits until it serves: its control socket (made
/// after the vhost-user socket) exists. A backend that does not get there
/// within the start timeout is killed.
pub async fn start(
    p: &AttachParams,
    socket: &Path,
    s: &BackendSettings,
) -> Result<Started, SpawnError> {
    let log = log_path(&s.state_dir, p.volume_id);
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let ctl = control_path(socket);
    // A stale control socket would look like readiness.
    match std::fs::remove_file(&ctl) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&ctl)(e)),
        _ => {}
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io_err(&log))?;
    let f2 = f.try_clone().map_err(io_err(&log))?;
    let mut cmd = Command::new(&s.bin);
    cmd.args(backend_args(p, socket, s))
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
        bin: s.bin.clone(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    let deadline = Instant::now() + s.start_timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(SpawnError::Exited {
                status: status.to_string(),
                tail: log_tail(&log),
            });
        }
        if ctl.exists() && socket.exists() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(SpawnError::Timeout {
                timeout: s.start_timeout,
                tail: log_tail(&log),
            });
        }
        tokio::time::sleep(READY_POLL).await;
    }
    let start_time = procfs::start_time(pid).unwrap_or(0);
    Ok(Started {
        pid,
        start_time,
        waiter: Waiter::Child(child),
    })
}

/// A waiter for a backend that is not our child.
pub fn adopt(pid: u32, start_time: u64, interval: Duration) -> Waiter {
    Waiter::Adopted {
        pid,
        start_time,
        pidfd: pidfd_open(pid).and_then(|fd| {
            // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it
            // until dropped; nothing else closes or replaces it.
            unsafe { AsyncFd::register(fd) }.ok()
        }),
        interval,
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a returned fd is owned by us alone.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Waiter {
    /// Waits until the process has exited; returns a description.
    pub async fn wait(&mut self) -> String {
        match self {
            Waiter::Child(c) => match c.wait().await {
                Ok(st) => st.to_string(),
                Err(e) => format!("wait failed: {e}"),
            },
            Waiter::Adopted {
                pid,
                start_time,
                pidfd,
                interval,
            } => {
                if let Some(fd) = pidfd {
                    // A pidfd becomes readable when the process exits.
                    let _ = fd.readable().await;
                    // The start-time check below also covers a pid reused
                    // before we opened the pidfd.
                }
                while procfs::same_process(*pid, *start_time) {
                    tokio::time::sleep(*interval).await;
                }
                "exited (adopted process; status unknown)".to_owned()
            }
        }
    }
}

/// Sends `sig` to `pid` if it is still the process started at `start_time`.
pub fn signal(pid: u32, start_time: u64, sig: i32) -> bool {
    if !procfs::same_process(pid, start_time) {
        return false;
    }
    // SAFETY: kill(2) on a pid we just checked is our backend.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}
