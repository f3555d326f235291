//! Config-change notification to the VMM (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG
//! on the backend-request channel), sent after an online resize so the
//! guest re-reads the capacity.
//!
//! The VMM hands the channel over with SET_BACKEND_REQ_FD (we offer the
//! BACKEND_REQ protocol feature); `vhost-user-backend` wraps it in a
//! `vhost::vhost_user::Backend` and gives it to
//! `VhostUserBackend::set_backend_req_fd`. vhost 0.18's `Backend` cannot
//! send CONFIG_CHANGE_MSG (its `handle_config_change` is the trait's ENOSYS
//! default) and keeps its socket private, so we find that socket among our
//! descriptors and write the 12-byte message ourselves on a duplicate.
//!
//! The channel is the socketpair end the VMM created: a unix stream socket
//! with no name on either side whose peer credentials (set at socketpair
//! time) are the VMM's, not ours. Our other unix sockets are named (the
//! vhost-user listener and connection, the control socket), so in a backend
//! process exactly one descriptor matches. If not exactly one does (a VMM
//! inside our own process, as in-process tests), no notification is sent
//! and the guest sees the capacity at its next config read.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use vhost::vhost_user::Backend;

/// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG.
const CONFIG_CHANGE_MSG: u32 = 2;
/// Header flags: protocol version 1, no reply wanted.
const VERSION_1: u32 = 0x1;

struct Channel {
    /// Keeps the VMM's socket open.
    _backend: Backend,
    /// Our duplicate of it, for writing.
    fd: OwnedFd,
}

/// Holds the backend-request channel of the current VMM session.
#[derive(Default)]
pub struct ConfigNotifier {
    slot: Mutex<Option<Channel>>,
}

impl std::fmt::Debug for ConfigNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigNotifier")
            .field("channel", &self.lock().as_ref().map(|c| c.fd.as_raw_fd()))
            .finish()
    }
}

impl ConfigNotifier {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Channel>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs the channel of a new VMM session (replacing the old one).
    pub fn set(&self, backend: Backend) {
        let mut slot = self.lock();
        // Close the previous session's channel first so it is not a candidate.
        *slot = None;
        let found = candidates();
        match found.as_slice() {
            [fd] => match dup(*fd) {
                Ok(fd) => {
                    tracing::debug!(fd = fd.as_raw_fd(), "backend-request channel found");
                    *slot = Some(Channel {
                        _backend: backend,
                        fd,
                    });
                }
                Err(e) => tracing::warn!("cannot duplicate the backend-request channel: {e}"),
            },
            other => tracing::warn!(
                candidates = other.len(),
                "cannot identify the backend-request channel; resizes will not notify the guest"
            ),
        }
    }

    /// Whether a channel is installed.
    pub fn available(&self) -> bool {
        self.lock().is_some()
    }

    /// Sends CONFIG_CHANGE_MSG. `Ok(false)` if there is no channel (no VMM,
    /// or it did not offer one); a broken channel is dropped.
    pub fn notify(&self) -> io::Result<bool> {
        let mut slot = self.lock();
        let Some(ch) = slot.as_ref() else {
            return Ok(false);
        };
        let mut msg = [0u8; 12];
        msg[0..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        msg[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
        // size = 0: no payload.
        // SAFETY: sending a local buffer on a socket we own.
        let n = unsafe {
            libc::send(
                ch.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n == msg.len() as isize {
            return Ok(true);
        }
        let e = if n < 0 {
            io::Error::last_os_error()
        } else {
            io::Error::new(io::ErrorKind::WriteZero, "short write")
        };
        *slot = None;
        Err(e)
    }
}

fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor that is open in this process.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Descriptors that look like a VMM-created backend-request socketpair end.
fn candidates() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    // 0..=2 are never the channel (a socketpair on stderr from a process
    // supervisor must not be mistaken for it).
    fds.into_iter()
        .filter(|&fd| fd > 2 && is_foreign_socketpair(fd))
        .collect()
}

fn sockopt_int(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

fn unnamed(fd: RawFd, peer: bool) -> bool {
    // SAFETY: zeroed sockaddr_un is valid; the kernel writes at most `len`.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let p = (&mut addr as *mut libc::sockaddr_un).cast();
    // SAFETY: valid out-pointers.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    rc == 0 && len as usize <= std::mem::size_of::<libc::sa_family_t>()
}

fn is_foreign_socketpair(fd: RawFd) -> bool {
    if sockopt_int(fd, libc::SO_DOMAIN) != Some(libc::AF_UNIX)
        || sockopt_int(fd, libc::SO_TYPE) != Some(libc::SOCK_STREAM)
    {
        return false;
    }
    if !unnamed(fd, false) || !unnamed(fd, true) {
        return false;
    }
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    rc == 0 && cred.pid != 0 && cred.pid as u32 != std::process::id()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn own_socketpairs_are_not_candidates() {
        let (a, b) = UnixStream::pair().unwrap();
        assert!(!is_foreign_socketpair(a.as_raw_fd()));
        assert!(!candidates().contains(&b.as_raw_fd()));
    }

    #[test]
    fn without_a_channel_nothing_is_sent() {
        let n = ConfigNotifier::default();
        assert!(!n.available());
        assert!(!n.notify().unwrap());
    }
}
