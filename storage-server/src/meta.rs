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
    pub fn load(dir: &Path) -> std::io::Result<CopyMeta> {
        let bytes = fs::read(dir.join(META_FILE))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
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
}
