//! Attachment records: `<state-dir>/attachments/<volume-id>.json`, one per
//! attached volume, replaced atomically (temp file, fsync, rename, fsync of
//! the directory) so a crash leaves the old or the new version. Records are
//! mode 0600 in a 0700 directory.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::Owner;
use crate::params::AttachParams;
use crate::safefs;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub params: AttachParams,
    pub socket: PathBuf,
    /// Owner given to this attachment's socket: `Some(None)` none,
    /// `Some(Some(o))` o; `None` in records written before it was recorded
    /// (the node's `--socket-owner` then applies).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_owner: Option<Option<Owner>>,
    /// Backend pid and its start time (/proc/<pid>/stat field 22), which
    /// tells the backend apart from a later process reusing the pid.
    pub pid: u32,
    pub start_time: u64,
    pub restarts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot write attachment record {path}: {source}; check that the state directory is writable and not full")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read attachment records in {path}: {source}; check the state directory's permissions")]
    Read { path: PathBuf, source: io::Error },
}

/// A field that is present (possibly `null`) is `Some`; absent is the
/// `default` (`None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Owner>>, D::Error> {
    Option::<Owner>::deserialize(d).map(Some)
}

/// Mode of the records directory (and the logs directory).
pub const DIR_MODE: u32 = 0o700;

/// The records directory of a state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("attachments")
}

fn path(state_dir: &Path, volume_id: u64) -> PathBuf {
    dir(state_dir).join(format!("{volume_id}.json"))
}

/// Writes `r` atomically and durably.
pub fn save(state_dir: &Path, r: &Record) -> Result<(), RecordError> {
    let d = dir(state_dir);
    let p = path(state_dir, r.params.volume_id);
    let err = |source| RecordError::Write {
        path: p.clone(),
        source,
    };
    safefs::ensure_own_dir(&d, DIR_MODE).map_err(|e| err(io::Error::other(e)))?;
    let tmp = p.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(r).map_err(|e| err(io::Error::other(e)))?;
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(err)?;
        // A leftover temp file keeps its mode through O_CREAT.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, &p).map_err(err)?;
    std::fs::File::open(&d)
        .and_then(|f| f.sync_all())
        .map_err(err)?;
    Ok(())
}

/// Removes the record of `volume_id` (absent is fine).
pub fn remove(state_dir: &Path, volume_id: u64) -> Result<(), RecordError> {
    let p = path(state_dir, volume_id);
    match std::fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(RecordError::Write { path: p, source }),
    }
    let _ = std::fs::File::open(dir(state_dir)).and_then(|f| f.sync_all());
    Ok(())
}

/// Every readable record. An unreadable one is logged and set aside as
/// `<name>.bad` so it is looked at by a person, not silently dropped.
pub fn load_all(state_dir: &Path) -> Result<Vec<Record>, RecordError> {
    let d = dir(state_dir);
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(RecordError::Read { path: d, source }),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let parsed = std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()));
        match parsed {
            Ok(r)
                if p.file_stem().and_then(|s| s.to_str())
                    == Some(&r.params.volume_id.to_string()) =>
            {
                out.push(r)
            }
            Ok(_) | Err(_) => {
                tracing::error!(path = %p.display(), "unreadable attachment record; moved aside as .bad");
                let _ = std::fs::rename(&p, p.with_extension("json.bad"));
            }
        }
    }
    out.sort_by_key(|r| r.params.volume_id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64) -> Record {
        Record {
            params: AttachParams {
                volume_id: id,
                size_bytes: 1 << 20,
                primary: "127.0.0.1:1".into(),
                epoch: 2,
                read_only: true,
                queues: 2,
                attachment: 4,
                grant: vec![9; 100],
            },
            socket: PathBuf::from(format!("/run/vol-{id}/sock")),
            socket_owner: Some(Some(Owner { uid: 7, gid: 8 })),
            pid: 10,
            start_time: 20,
            restarts: 1,
        }
    }

    #[test]
    fn save_load_remove() {
        let d = tempfile::tempdir().unwrap();
        assert!(load_all(d.path()).unwrap().is_empty());
        save(d.path(), &rec(2)).unwrap();
        save(d.path(), &rec(1)).unwrap();
        let mut r = rec(1);
        r.restarts = 5;
        save(d.path(), &r).unwrap();
        let all = load_all(d.path()).unwrap();
        assert_eq!(all, vec![r, rec(2)]);
        std::fs::write(dir(d.path()).join("9.json"), b"{oops").unwrap();
        assert_eq!(load_all(d.path()).unwrap().len(), 2);
        assert!(dir(d.path()).join("9.json.bad").exists());
        remove(d.path(), 1).unwrap();
        remove(d.path(), 1).unwrap();
        assert_eq!(load_all(d.path()).unwrap(), vec![rec(2)]);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir(d.path())), 0o700);
        assert_eq!(mode(&path(d.path(), 2)), 0o600);
        let mut r = rec(3);
        r.socket_owner = Some(None);
        save(d.path(), &r).unwrap();
        assert_eq!(load_all(d.path()).unwrap()[1].socket_owner, Some(None));
    }

    /// A record written before attachments and per-attachment owners were
    /// recorded still loads: attachment 0, owner from the node's flag.
    #[test]
    fn old_record_loads() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir(d.path())).unwrap();
        let old = r#"{"params":{"volume_id":6,"size_bytes":1048576,"primary":"127.0.0.1:1",
            "epoch":3,"read_only":false,"queues":1},"socket":"/run/b/vol-6.sock",
            "pid":10,"start_time":20,"restarts":0}"#;
        std::fs::write(path(d.path(), 6), old).unwrap();
        let all = load_all(d.path()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].params.attachment, 0);
        assert_eq!(all[0].params.epoch, 3);
        assert_eq!(all[0].socket_owner, None);
    }
}
