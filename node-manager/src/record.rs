//! Attachment records: `<state-dir>/attachments/<volume-id>.json`, one per
//! attached volume, replaced atomically (temp file, fsync, rename, fsync of
//! the directory) so a crash leaves the old or the new version.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::params::AttachParams;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub params: AttachParams,
    pub socket: PathBuf,
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
    std::fs::create_dir_all(&d).map_err(err)?;
    let tmp = p.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(r).map_err(|e| err(io::Error::other(e)))?;
    {
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
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
            },
            socket: PathBuf::from(format!("/run/vol-{id}.sock")),
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
    }
}
