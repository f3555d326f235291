//! File operations on the run and state directories that never follow a
//! symlink. The node manager runs as root on a host where the VMM's user
//! (and, with `--backend-user`, the backends' user) can write somewhere
//! below the run directory; a path-based chown or chmod there could be
//! redirected by a planted link to any file on the host. So:
//!
//! - a directory is opened with `O_DIRECTORY | O_NOFOLLOW` and its owner
//!   and mode are changed through that descriptor (`fchown`, `fchmod`);
//! - entries inside are reached relative to a directory descriptor
//!   (`mkdirat`, `openat`, `fstatat(AT_SYMLINK_NOFOLLOW)`, `unlinkat`);
//! - a socket is opened with `O_PATH | O_NOFOLLOW`, checked on that very
//!   inode (a socket, one link, made by the expected user), and changed
//!   through the descriptor: `fchownat(fd, "", AT_EMPTY_PATH)` and a chmod
//!   of `/proc/self/fd/<fd>` (Linux's `fchmodat` has no working
//!   `AT_SYMLINK_NOFOLLOW`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::config::Owner;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path}: {source}; check that the directory exists and is writable by basalt-node")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} {what}; refusing to use it or change its owner or mode. Something other than basalt-node and its backend wrote there: inspect it, remove it, and retry")]
    Unsafe { path: PathBuf, what: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a path"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Effective uid and gid of this process.
pub fn me() -> Owner {
    // SAFETY: geteuid/getegid have no preconditions.
    unsafe {
        Owner {
            uid: libc::geteuid(),
            gid: libc::getegid(),
        }
    }
}

const O_DIR: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// Opens the directory at `path`; its last component must not be a symlink.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid C string for the duration of the call.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), O_DIR) })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `name` in `dir`: a directory, not a symlink.
pub fn open_dir_at(dir: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    openat(dir, name, O_DIR)
}

fn openat(dir: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstring(name.as_bytes())?;
    // SAFETY: valid descriptor and C string for the duration of the call.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fstat(2).
pub fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and a pointer to a stat we own.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: the entry itself, never
/// what a symlink points at.
pub fn lstat_at(dir: &OwnedFd, name: &str) -> io::Result<libc::stat> {
    let c = cstring(name.as_bytes())?;
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, C string and stat pointer for the call.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// Whether `name` exists in `dir` (whatever it is; a symlink is not followed).
pub fn exists_at(dir: &OwnedFd, name: &str) -> bool {
    lstat_at(dir, name).is_ok()
}

fn file_type(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

fn describe(st: &libc::stat) -> &'static str {
    match file_type(st) {
        libc::S_IFLNK => "is a symlink",
        libc::S_IFREG => "is a regular file",
        libc::S_IFDIR => "is a directory",
        libc::S_IFSOCK => "is a socket",
        _ => "is a special file",
    }
}

/// Removes `name` from `dir` if present. A symlink is removed itself,
/// never its target (unlinkat does not follow links).
pub fn remove_at(dir: &OwnedFd, name: &str) -> io::Result<()> {
    unlinkat(dir, name, 0)
}

/// Removes the empty directory `name` from `dir` if present.
pub fn remove_dir_at(dir: &OwnedFd, name: &str) -> io::Result<()> {
    unlinkat(dir, name, libc::AT_REMOVEDIR)
}

fn unlinkat(dir: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<()> {
    let c = cstring(name.as_bytes())?;
    // SAFETY: valid descriptor and C string for the duration of the call.
    match cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn fchown(fd: &OwnedFd, o: Owner) -> io::Result<()> {
    // SAFETY: fchown on a descriptor we own.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), o.uid, o.gid) }).map(|_| ())
}

fn fchmod(fd: &OwnedFd, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod on a descriptor we own.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(|_| ())
}

/// Owner and mode of an open directory, changed through its descriptor
/// and only where they differ.
fn set_owner_mode(fd: &OwnedFd, path: &Path, o: Owner, mode: u32) -> Result<(), FsError> {
    let st = fstat(fd).map_err(io_err(path))?;
    if st.st_uid != o.uid || st.st_gid != o.gid {
        fchown(fd, o).map_err(io_err(path))?;
    }
    if st.st_mode & 0o7777 != mode {
        fchmod(fd, mode).map_err(io_err(path))?;
    }
    Ok(())
}

/// For an open of a directory that failed because the name is something
/// else (`O_NOFOLLOW` on a symlink gives ELOOP, or ENOTDIR with
/// `O_DIRECTORY`): what it is, from `lstat`.
fn not_a_dir(
    path: &Path,
    e: &io::Error,
    lstat: impl FnOnce() -> io::Result<libc::stat>,
) -> Option<FsError> {
    if !matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) {
        return None;
    }
    let what = lstat().map_or("is not a directory", |st| describe(&st));
    Some(FsError::Unsafe {
        path: path.to_owned(),
        what: what.to_owned(),
    })
}

fn lstat_path(path: &Path) -> io::Result<libc::stat> {
    let c = cstring(path.as_os_str().as_bytes())?;
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and stat pointer for the call.
    cvt(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
    Ok(st)
}

/// Makes `path` (created with its parents if missing) a directory owned by
/// this process's user with `mode`, and opens it. Its last component must
/// be the directory itself, not a symlink to one.
pub fn ensure_own_dir(path: &Path, mode: u32) -> Result<OwnedFd, FsError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let fd = open_dir(path)
        .map_err(|e| not_a_dir(path, &e, || lstat_path(path)).unwrap_or_else(|| io_err(path)(e)))?;
    set_owner_mode(&fd, path, me(), mode)?;
    Ok(fd)
}

/// Makes `name` in `parent` a directory owned by `owner` with `mode`, and
/// opens it. Whatever else is there under that name (a symlink, a file) is
/// removed first: unlinkat removes a link, never its target, and `parent`
/// is writable by this process alone, so the name then stays ours.
pub fn ensure_dir_at(
    parent: &OwnedFd,
    parent_path: &Path,
    name: &str,
    owner: Owner,
    mode: u32,
) -> Result<OwnedFd, FsError> {
    let path = parent_path.join(name);
    let c = cstring(name.as_bytes()).map_err(io_err(&path))?;
    let mut replaced = false;
    let fd = loop {
        // SAFETY: valid descriptor and C string for the duration of the call.
        match cvt(unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o700) }) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        match open_dir_at(parent, name) {
            Ok(fd) => break fd,
            Err(e) => match not_a_dir(&path, &e, || lstat_at(parent, name)) {
                Some(unsafe_err) if !replaced => {
                    tracing::warn!(path = %path.display(), "{unsafe_err}: replacing it with a directory (the link or file is removed, its target is left alone)");
                    remove_at(parent, name).map_err(io_err(&path))?;
                    replaced = true;
                }
                Some(unsafe_err) => return Err(unsafe_err),
                None => return Err(io_err(&path)(e)),
            },
        }
    };
    set_owner_mode(&fd, &path, owner, mode)?;
    Ok(fd)
}

/// Secures the socket `name` in `dir`, made by the user `creator`: it must
/// be a socket (not a symlink, nor any other file) with a single link and
/// owned by `creator`; then its mode becomes 0600 and, with `owner`, its
/// owner `owner`. Checked and changed on the same inode, through an
/// `O_PATH | O_NOFOLLOW` descriptor, so nothing swapped in meanwhile is
/// touched.
pub fn secure_socket_at(
    dir: &OwnedFd,
    dir_path: &Path,
    name: &str,
    creator: u32,
    owner: Option<Owner>,
) -> Result<(), FsError> {
    let path = dir_path.join(name);
    let fd = openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .map_err(io_err(&path))?;
    let st = fstat(&fd).map_err(io_err(&path))?;
    let unsafe_err = |what: String| FsError::Unsafe {
        path: path.clone(),
        what,
    };
    if file_type(&st) != libc::S_IFSOCK {
        return Err(unsafe_err(format!(
            "{} where the backend's socket should be",
            describe(&st)
        )));
    }
    if st.st_nlink != 1 {
        return Err(unsafe_err(format!("has {} hard links", st.st_nlink)));
    }
    if st.st_uid != creator {
        return Err(unsafe_err(format!(
            "is owned by uid {}, not by the backend's uid {creator}",
            st.st_uid
        )));
    }
    if st.st_mode & 0o7777 != 0o600 {
        // chmod through the descriptor's /proc link reaches exactly the
        // inode `fd` refers to.
        let proc_path = cstring(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())
            .map_err(io_err(&path))?;
        // SAFETY: valid C string for the duration of the call.
        cvt(unsafe { libc::chmod(proc_path.as_ptr(), 0o600) }).map_err(io_err(&path))?;
    }
    if let Some(o) = owner {
        if st.st_uid != o.uid || st.st_gid != o.gid {
            // SAFETY: valid descriptor and empty C string; AT_EMPTY_PATH
            // makes the call act on `fd` itself.
            cvt(unsafe {
                libc::fchownat(
                    fd.as_raw_fd(),
                    c"".as_ptr(),
                    o.uid,
                    o.gid,
                    libc::AT_EMPTY_PATH,
                )
            })
            .map_err(io_err(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn own_dir_refuses_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = ensure_own_dir(&link, 0o711).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert_eq!(mode(&real), 0o755);
        let d = t.path().join("a/b");
        ensure_own_dir(&d, 0o711).unwrap();
        assert_eq!(mode(&d), 0o711);
    }

    #[test]
    fn dir_at_replaces_a_symlink_and_leaves_its_target() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        let parent_path = t.path().join("run");
        std::fs::create_dir(&parent_path).unwrap();
        std::os::unix::fs::symlink(&outside, parent_path.join("vol-1")).unwrap();
        let parent = open_dir(&parent_path).unwrap();
        let fd = ensure_dir_at(&parent, &parent_path, "vol-1", me(), 0o700).unwrap();
        assert!(fstat(&fd).is_ok());
        let m = std::fs::symlink_metadata(parent_path.join("vol-1")).unwrap();
        assert!(m.is_dir());
        assert_eq!(mode(&parent_path.join("vol-1")), 0o700);
        assert_eq!(mode(&outside), 0o644);
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
    }

    #[test]
    fn socket_checks() {
        let t = tempfile::tempdir().unwrap();
        let dir = open_dir(t.path()).unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, t.path().join("link")).unwrap();
        let e = secure_socket_at(&dir, t.path(), "link", me().uid, None).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        std::fs::hard_link(&outside, t.path().join("hard")).unwrap();
        let e = secure_socket_at(&dir, t.path(), "hard", me().uid, None).unwrap_err();
        assert!(e.to_string().contains("regular file"), "{e}");
        assert_eq!(mode(&outside), 0o644);

        let _l = std::os::unix::net::UnixListener::bind(t.path().join("s")).unwrap();
        std::fs::set_permissions(t.path().join("s"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let e = secure_socket_at(&dir, t.path(), "s", me().uid + 1, None).unwrap_err();
        assert!(e.to_string().contains("not by the backend's uid"), "{e}");
        assert_eq!(mode(&t.path().join("s")), 0o777);
        secure_socket_at(&dir, t.path(), "s", me().uid, None).unwrap();
        assert_eq!(mode(&t.path().join("s")), 0o600);
        if me().uid == 0 {
            let o = Owner {
                uid: 4242,
                gid: 4343,
            };
            secure_socket_at(&dir, t.path(), "s", 0, Some(o)).unwrap();
            let m = std::fs::symlink_metadata(t.path().join("s")).unwrap();
            assert_eq!((m.uid(), m.gid()), (4242, 4343));
        }
        std::fs::hard_link(t.path().join("s"), t.path().join("s2")).unwrap();
        let e = secure_socket_at(&dir, t.path(), "s2", 4242, None).unwrap_err();
        assert!(e.to_string().contains("2 hard links"), "{e}");
        remove_at(&dir, "link").unwrap();
        remove_at(&dir, "link").unwrap();
        assert!(!exists_at(&dir, "link"));
        assert!(outside.exists());
    }
}
