//! The node manager's attachment records (`node-manager/src/record.rs`),
//! loaded through its public API (`record::load_all`) from a scratch state
//! directory holding one record file with arbitrary contents.
//!
//! Input: one byte choosing the file name, then the file's bytes. Names:
//! the `params.volume_id` the bytes claim (when they are JSON with one), so
//! valid records are accepted, or a fixed `7.json`.
//!
//! Invariants checked:
//! - `load_all` never panics and never fails on a readable directory;
//! - it returns the record exactly when the bytes parse as a `Record` whose
//!   volume id is the file's stem; otherwise the file is moved aside as
//!   `<name>.json.bad` and nothing is returned;
//! - an accepted record survives `save` + `load_all` unchanged.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use basalt_node::record::{self, Record};
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

fn scratch() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        remove_stale(&base, "basalt-fuzz-node-record-");
        base.join(format!("basalt-fuzz-node-record-{}", std::process::id()))
    })
}

fn claimed_id(data: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    v.get("params")?.get("volume_id")?.as_u64()
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let state = scratch();
    let dir = record::dir(state);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let stem = match (sel & 1, claimed_id(body)) {
        (0, Some(id)) => id.to_string(),
        _ => "7".to_owned(),
    };
    let file = dir.join(format!("{stem}.json"));
    std::fs::write(&file, body).expect("write record");

    let got = record::load_all(state).expect("load_all failed on a readable directory");
    let want = serde_json::from_slice::<Record>(body)
        .ok()
        .filter(|r| r.params.volume_id.to_string() == stem);
    match want {
        Some(r) => {
            assert_eq!(got, vec![r.clone()]);
            assert!(file.exists(), "accepted record moved");
            record::save(state, &r).expect("save");
            assert_eq!(
                record::load_all(state).unwrap(),
                vec![r],
                "save + load changed it"
            );
        }
        None => {
            assert!(got.is_empty(), "accepted {got:?}");
            assert!(!file.exists(), "bad record left in place");
            assert!(
                dir.join(format!("{stem}.json.bad")).exists(),
                "bad record not kept"
            );
        }
    }
});
