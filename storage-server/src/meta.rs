//! Durable per-copy metadata: `<data_dir>/copies/<volume_id>/meta.json`,
//! replaced atomically (write temp file, fsync, rename, fsync directory).

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Mirror,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMeta {
    pub server_id: String,
    pub address: String,
    /// For a syncing peer: it still holds its old copy, so only the regions
    /// written since it left need to be sent (when a dirty-region map for it
    /// exists; otherwise a full copy is made).
    #[serde(default)]
    pub delta: bool,
    /// For a syncing peer seeded from this snapshot: only the blocks
    /// written since its point need to be sent (when a change map for it
    /// exists; otherwise a full copy is made).
    #[serde(default)]
    pub seed_snapshot: u64,
}

impl PeerMeta {
    /// Same server at the same address (whatever the `delta` flag says).
    pub fn same_peer(&self, other: &PeerMeta) -> bool {
        self.server_id == other.server_id && self.address == other.address
    }
}

/// Everything about a copy except its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyMeta {
    pub volume_id: u64,
    pub size_bytes: u64,
    pub role: Role,
    /// Highest layout epoch this copy has seen; older requests are refused.
    pub epoch: u64,
    /// Primary only: mirrors every write goes to (the in-sync set).
    #[serde(default)]
    pub mirrors: Vec<PeerMeta>,
    /// Mirror only: the one server whose replica frames are accepted.
    #[serde(default)]
    pub primary_server_id: String,
    /// Primary only: mirrors being filled by a full copy (not yet in sync).
    #[serde(default)]
    pub syncing: Vec<PeerMeta>,
    /// The volume's current attachment generation (from the control
    /// service): backends stating an older one are fenced. Never lowered.
    #[serde(default)]
    pub attachment: u64,
}

pub const META_FILE: &str = "meta.json";

impl CopyMeta {
    /// Loads and checks the metadata. A damaged file that still parses
    /// (size 0, unaligned or past the largest volume, epoch 0) is refused:
    /// opening the copy would otherwise cut its data file to that size.
    pub fn load(dir: &Path) -> std::io::Result<CopyMeta> {
        let path = dir.join(META_FILE);
        let bytes = fs::read(&path)?;
        let bad = |why: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: {why}; the copy was left untouched: restore the file or delete the copy",
                    path.display()
                ),
            )
        };
        let m: CopyMeta = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let max = crate::store::MAX_VOLUME_BYTES;
        if m.size_bytes == 0 || !m.size_bytes.is_multiple_of(512) || m.size_bytes > max {
            return Err(bad(format!(
                "size_bytes {} is not a positive multiple of 512 up to {max}",
                m.size_bytes
            )));
        }
        if m.epoch == 0 {
            return Err(bad("epoch 0 (epochs start at 1)".into()));
        }
        Ok(m)
    }

    /// Persists atomically: after this returns, a crash leaves either the old
    /// or the new metadata, never a mix.
    pub fn store(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join("meta.json.tmp");
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, dir.join(META_FILE))?;
        fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_load() {
        let d = tempfile::tempdir().unwrap();
        let m = CopyMeta {
            volume_id: 3,
            size_bytes: 1 << 20,
            role: Role::Primary,
            epoch: 4,
            mirrors: vec![PeerMeta {
                server_id: "s2".into(),
                address: "127.0.0.1:1".into(),
                delta: true,
                seed_snapshot: 0,
            }],
            primary_server_id: String::new(),
            syncing: vec![],
            attachment: 9,
        };
        m.store(d.path()).unwrap();
        assert_eq!(CopyMeta::load(d.path()).unwrap(), m);
        // Metadata written before `delta` existed still loads.
        let old = r#"{"volume_id":1,"size_bytes":4096,"role":"primary","epoch":2,
            "syncing":[{"server_id":"a","address":"127.0.0.1:2"}]}"#;
        std::fs::write(d.path().join(META_FILE), old).unwrap();
        assert!(!CopyMeta::load(d.path()).unwrap().syncing[0].delta);
        m.store(d.path()).unwrap();
        let mut m2 = m.clone();
        m2.epoch = 5;
        m2.store(d.path()).unwrap();
        assert_eq!(CopyMeta::load(d.path()).unwrap().epoch, 5);
        assert!(!d.path().join("meta.json.tmp").exists());
    }

    /// Found by the copy_meta fuzz target: a damaged meta.json that still
    /// parses used to be accepted, and opening the copy then cut its data
    /// file to the damaged size. It is refused and the data left alone.
    #[test]
    fn damaged_metadata_is_refused_and_the_data_kept() {
        let d = tempfile::tempdir().unwrap();
        let c = crate::copy::Copy::create(
            d.path(),
            CopyMeta {
                volume_id: 1,
                size_bytes: 1 << 20,
                role: Role::Primary,
                epoch: 1,
                mirrors: vec![],
                primary_server_id: String::new(),
                syncing: vec![],
                attachment: 0,
            },
        )
        .unwrap();
        c.write_at(512 << 10, &[7; 512]).unwrap();
        drop(c);
        for (size, epoch) in [(0u64, 1u64), (4096, 0), (1000, 1), (u64::MAX - 511, 1)] {
            let bad = format!(
                r#"{{"volume_id":1,"size_bytes":{size},"role":"primary","epoch":{epoch}}}"#
            );
            std::fs::write(d.path().join(META_FILE), bad).unwrap();
            let e = crate::copy::Copy::open(d.path()).err().expect("refused");
            assert!(e.to_string().contains("left untouched"), "{e}");
            let len = std::fs::metadata(d.path().join(crate::copy::DATA_FILE))
                .unwrap()
                .len();
            assert_eq!(len, 1 << 20, "the data file was cut");
        }
    }
}
