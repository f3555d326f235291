//! A storage server's per-copy `meta.json` (`storage-server/src/meta.rs`),
//! loaded with `CopyMeta::load` from a scratch directory, as at start-up.
//!
//! Invariants checked:
//! - `load` never panics, and accepts exactly what `serde_json` parses as a
//!   `CopyMeta`;
//! - a loaded `CopyMeta` survives `store` + `load` and a JSON round trip
//!   unchanged;
//! - what start-up does next with it (`Tracker::new`, in `Copy::open`) does
//!   not panic.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use basalt_storage::dirty::Tracker;
use basalt_storage::meta::{CopyMeta, META_FILE};
use libfuzzer_sys::fuzz_target;

/// Removes scratch directories `<prefix><pid>` under `base` left by earlier
/// runs whose process is gone (libFuzzer gives a target no exit hook).
fn remove_stale(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A scratch directory for this process (on tmpfs when there is one).
fn scratch() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        remove_stale(&base, "basalt-fuzz-copy-meta-");
        let d = base.join(format!("basalt-fuzz-copy-meta-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    std::fs::write(dir.join(META_FILE), data).expect("write meta.json");
    let loaded = CopyMeta::load(dir);
    let parsed = serde_json::from_slice::<CopyMeta>(data);
    // `load` also refuses metadata that parses but would damage the copy:
    // a size that is 0, unaligned or past the largest volume, or epoch 0.
    let valid = |m: &CopyMeta| {
        m.size_bytes > 0
            && m.size_bytes % 512 == 0
            && m.size_bytes <= basalt_storage::store::MAX_VOLUME_BYTES
            && m.epoch > 0
    };
    match (&loaded, &parsed) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            assert!(valid(a), "load accepted damaging metadata: {a:?}");
        }
        (Err(e), Ok(b)) => {
            assert!(!valid(b), "load refused valid metadata: {e} ({b:?})");
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        }
        (Err(e), Err(_)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidData),
        _ => panic!("load and serde_json disagree: {loaded:?} vs {parsed:?}"),
    }
    let Ok(m) = loaded else {
        return;
    };
    let again: CopyMeta = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
    assert_eq!(again, m, "JSON round trip changed the metadata");
    m.store(dir).expect("store");
    assert_eq!(
        CopyMeta::load(dir).expect("reload"),
        m,
        "store + load changed it"
    );
    assert!(!dir.join("meta.json.tmp").exists());
    let _ = Tracker::new(&m);
});
