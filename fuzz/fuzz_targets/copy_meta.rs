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

use std::path::PathBuf;
use std::sync::OnceLock;

use basalt_storage::dirty::Tracker;
use basalt_storage::meta::{CopyMeta, META_FILE};
use libfuzzer_sys::fuzz_target;

/// A scratch directory for this process (on tmpfs when there is one).
fn scratch() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
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
    match (&loaded, &parsed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
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
