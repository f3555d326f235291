//! Starting a backend process, waiting until it serves, watching it exit
//! (our child, or a backend adopted after a restart of the node manager),
//! and signalling it.

use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};

use crate::config::{BackendSettings, Owner};
use crate::params::{attachment_dir_name, backend_args, log_path, socket_path, AttachParams};
use crate::procfs;
use crate::safefs::{self, FsError};

/// How often readiness (the sockets appearing) is checked while waiting.
const READY_POLL: Duration = Duration::from_millis(5);
/// Lines of the backend log returned with a start failure.
const LOG_TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot prepare {path}: {source}; check that the directory is writable")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("cannot start backend {bin}: {source}; check --backend-bin (and that --backend-user may execute it)")]
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

/// Mode of the run directory: owned by the node manager, never by the VMM
/// or backend user; others may only pass through to their attachment's
/// directory.
pub const RUN_DIR_MODE: u32 = 0o711;

/// Creates the run directory (and parents): owned by this process's user,
/// mode [`RUN_DIR_MODE`]. Fails on a symlink.
pub fn prepare_run_dir(dir: &Path) -> Result<OwnedFd, FsError> {
    safefs::ensure_own_dir(dir, RUN_DIR_MODE)
}

/// The directory holding one attachment's sockets, opened without
/// following symlinks.
struct SocketDir {
    fd: OwnedFd,
    path: PathBuf,
    /// File name of the vhost-user socket in it.
    name: String,
    /// Who the backend runs as (`None`: the node manager's user).
    user: Option<Owner>,
}

impl SocketDir {
    fn ctl_name(&self) -> String {
        format!("{}.ctl", self.name)
    }

    /// uid that creates the sockets.
    fn creator(&self) -> u32 {
        self.user.unwrap_or_else(safefs::me).uid
    }
}

fn socket_name(socket: &Path) -> Result<String, SpawnError> {
    socket
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            io_err(socket)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "socket path has no UTF-8 file name",
            ))
        })
}

/// Whether `socket` is in its own per-attachment directory
/// (`<run-dir>/vol-<id>/sock`); records written before that layout name a
/// socket directly in the run directory.
pub fn per_attachment(volume_id: u64, socket: &Path, s: &BackendSettings) -> bool {
    socket == socket_path(&s.run_dir, volume_id)
}

/// Prepares the directory of `socket`: `<run-dir>/vol-<id>`, owned by the
/// backend's user (so the backend can create its sockets there), group
/// `owner`'s (mode 0710: the VMM may pass through to its socket, list
/// nothing) or 0700 without an owner. A socket of the older layout keeps
/// its directory as it is (the run directory, ours), and its backend runs
/// as the node manager's user, since no other may create sockets there.
fn socket_dir(
    volume_id: u64,
    socket: &Path,
    owner: Option<Owner>,
    s: &BackendSettings,
) -> Result<SocketDir, SpawnError> {
    let name = socket_name(socket)?;
    let parent = socket.parent().unwrap_or(Path::new("/")).to_owned();
    if per_attachment(volume_id, socket, s) {
        let run = prepare_run_dir(&s.run_dir)?;
        let user = s.backend_user.unwrap_or_else(safefs::me);
        let dir_owner = Owner {
            uid: user.uid,
            gid: owner.map_or(user.gid, |o| o.gid),
        };
        let mode = if owner.is_some() { 0o710 } else { 0o700 };
        let fd = safefs::ensure_dir_at(
            &run,
            &s.run_dir,
            &attachment_dir_name(volume_id),
            dir_owner,
            mode,
        )?;
        Ok(SocketDir {
            fd,
            path: parent,
            name,
            user: s.backend_user,
        })
    } else {
        let fd = safefs::open_dir(&parent).map_err(io_err(&parent))?;
        Ok(SocketDir {
            fd,
            path: parent,
            name,
            user: None,
        })
    }
}

/// Removes the sockets of an attachment and its directory (never
/// following a symlink). Best effort: failures are logged.
pub fn remove_sockets(volume_id: u64, socket: &Path, s: &BackendSettings) {
    let Ok(name) = socket_name(socket) else {
        return;
    };
    let names = [
        name.clone(),
        format!("{name}.ctl"),
        format!("{name}.ctl.tmp"),
    ];
    let warn = |what: &Path, e: io::Error| {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %what.display(), "cannot remove: {e}");
        }
    };
    if per_attachment(volume_id, socket, s) {
        let run = match safefs::open_dir(&s.run_dir) {
            Ok(fd) => fd,
            Err(e) => return warn(&s.run_dir, e),
        };
        let dir_name = attachment_dir_name(volume_id);
        match safefs::open_dir_at(&run, &dir_name) {
            Ok(dir) => {
                for n in &names {
                    if let Err(e) = safefs::remove_at(&dir, n) {
                        warn(&s.run_dir.join(&dir_name).join(n), e);
                    }
                }
                if let Err(e) = safefs::remove_dir_at(&run, &dir_name) {
                    warn(&s.run_dir.join(&dir_name), e);
                }
            }
            // Not a directory (a planted link or file): remove the name.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                if let Err(e) = safefs::remove_at(&run, &dir_name) {
                    warn(&s.run_dir.join(&dir_name), e);
                }
            }
            Err(e) => warn(&s.run_dir.join(&dir_name), e),
        }
    } else if let Some(parent) = socket.parent() {
        match safefs::open_dir(parent) {
            Ok(dir) => {
                for n in &names {
                    if let Err(e) = safefs::remove_at(&dir, n) {
                        warn(&parent.join(n), e);
                    }
                }
            }
            Err(e) => warn(parent, e),
        }
    }
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

/// Opens (creating it) a backend's log: mode 0600, never through a symlink.
fn open_log(path: &Path) -> Result<std::fs::File, SpawnError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(path))?;
    // A log from an older version may have another mode.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(path))?;
    Ok(f)
}

/// Starts a backend for `p` on `socket` in its own process group (so a
/// signal to the node manager's group does not reach it and it outlives
/// the node manager), as `--backend-user` when given, and waits until it
/// serves: its control socket (made after the vhost-user socket) exists.
/// Then both sockets are checked and secured (mode 0600, the vhost-user
/// socket owned by `owner`; see [`safefs::secure_socket_at`]). A backend
/// that does not get there within the start timeout, or whose sockets
/// cannot be secured, is killed.
pub async fn start(
    p: &AttachParams,
    socket: &Path,
    owner: Option<Owner>,
    s: &BackendSettings,
) -> Result<Started, SpawnError> {
    let log = log_path(&s.state_dir, p.volume_id);
    if let Some(d) = log.parent() {
        safefs::ensure_own_dir(d, 0o700)?;
    }
    let dir = socket_dir(p.volume_id, socket, owner, s)?;
    let grant = crate::params::grant_path(&s.state_dir, p.volume_id);
    if let Some(d) = grant.parent() {
        safefs::ensure_own_dir(d, 0o755)?;
    }
    crate::params::store_grant(&s.state_dir, p.volume_id, &p.grant)
        .map_err(|e| io_err(&grant)(std::io::Error::other(e.to_string())))?;
    let ctl_name = dir.ctl_name();
    // Stale sockets (or whatever was planted under their names) go first:
    // a stale control socket would look like readiness.
    for n in [&dir.name, &ctl_name] {
        safefs::remove_at(&dir.fd, n).map_err(io_err(&dir.path.join(n)))?;
    }
    let f = open_log(&log)?;
    let f2 = f.try_clone().map_err(io_err(&log))?;
    let mut cmd = Command::new(&s.bin);
    cmd.args(backend_args(p, socket, s))
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .process_group(0)
        .kill_on_drop(false);
    if let Some(u) = dir.user {
        // Supplementary groups are dropped too (std does when uid is set).
        cmd.gid(u.gid).uid(u.uid);
    }
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
        if safefs::exists_at(&dir.fd, &ctl_name) && safefs::exists_at(&dir.fd, &dir.name) {
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
    let secured = safefs::secure_socket_at(&dir.fd, &dir.path, &ctl_name, dir.creator(), None)
        .and_then(|()| {
            safefs::secure_socket_at(&dir.fd, &dir.path, &dir.name, dir.creator(), owner)
        });
    if let Err(e) = secured {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(e.into());
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
