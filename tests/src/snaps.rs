//! Helpers shared by the snapshot tests: host-side I/O through an attached
//! volume's backend, and waits for snapshot states through the CLI.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::blk::Blk;
use crate::controlplane::ManagedCluster;

pub const MIB: usize = 1 << 20;

/// Attaches `vol` to node1 and opens its vhost-user-blk socket.
pub fn attach(c: &ManagedCluster, vol: &str) -> Blk {
    let a = c
        .cli_json(&["volume", "attach", vol, "--node", "node1"])
        .expect("volume attach");
    Blk::open(Path::new(
        a["attachment"]["socket_path"]
            .as_str()
            .expect("attachment.socket_path"),
    ))
    .expect("open the backend's socket")
}

/// Deterministic pseudo-random (incompressible) bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The first `len` bytes of the device, read 1 MiB at a time.
pub fn read_all(b: &mut Blk, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (i, chunk) in out.chunks_mut(MIB).enumerate() {
        b.read_at((i * MIB) as u64, chunk).expect("read");
    }
    out
}

/// Test snapshots are named `<volume>.<tag>`.
pub fn vol_of(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// Creates snapshot `name` of its volume and waits until it is no longer
/// CREATING.
pub fn snapshot(c: &ManagedCluster, name: &str) -> Result<serde_json::Value> {
    let (ok, _, err) = c.cli(&["snapshot", "create", vol_of(name), "--name", name])?;
    if !ok {
        bail!("snapshot create {name}: {err}");
    }
    wait_snapshot(c, name, Duration::from_secs(120), |s| {
        s["state"] != "CREATING"
    })
}

/// Waits until `pred` holds for the snapshot's JSON (errors are retried:
/// the control service may be restarting).
pub fn wait_snapshot(
    c: &ManagedCluster,
    name: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = c.cli_json(&["snapshot", "show", name]);
        if let Ok(s) = &s {
            if pred(s) {
                return Ok(s.clone());
            }
        }
        if Instant::now() > deadline {
            bail!("snapshot {name} never reached the expected state: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A new volume from `snap`, attached at once; returns its first `len` bytes.
pub fn restore(c: &ManagedCluster, snap: &str, vol: &str, len: usize) -> Vec<u8> {
    let v = c
        .cli_json(&["volume", "create", vol, "--from-snapshot", snap])
        .expect("volume create --from-snapshot");
    assert_eq!(v["state"], "AVAILABLE", "{v}");
    let mut b = attach(c, vol);
    read_all(&mut b, len)
}

/// The test's own client of directory destination `name` under `root`.
pub fn dir_dest(root: &Path, name: &str) -> basalt_snapshot::Destination {
    basalt_snapshot::Destination::open(&basalt_snapshot::DestinationSpec {
        name: name.into(),
        url: format!("file://{}", root.join(name).display()),
        ..Default::default()
    })
    .expect("open the test's own client of a destination")
}

/// Every chunk stored in `d`.
pub fn chunks(
    c: &ManagedCluster,
    d: &basalt_snapshot::Destination,
) -> std::collections::BTreeSet<basalt_snapshot::ChunkId> {
    c.rt.block_on(d.list_chunks())
        .expect("list chunks")
        .into_iter()
        .collect()
}

/// Ids of every manifest stored in `d`.
pub fn manifests(c: &ManagedCluster, d: &basalt_snapshot::Destination) -> Vec<u64> {
    c.rt.block_on(d.list_manifests()).expect("list manifests")
}

/// Runs the CLI and checks it fails with an error mentioning `why`.
pub fn refused(c: &ManagedCluster, args: &[&str], why: &str) {
    let (ok, out, err) = c.cli(args).expect("run basalt");
    assert!(!ok, "basalt {args:?} should be refused: {out}");
    assert!(
        err.contains(why),
        "basalt {args:?}: the error should mention {why:?}: {err}"
    );
}

/// Writes an owner-only (0600) file `dir/name` holding `text`, as a user
/// keeps a credentials file; returns its path.
pub fn secret_file(dir: &Path, name: &str, text: &str) -> String {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p.display().to_string()
}

/// The names `basalt destination list` shows, in its order.
pub fn destination_names(c: &ManagedCluster) -> Vec<String> {
    let list = c
        .cli_json(&["destination", "list"])
        .expect("destination list");
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|d| d["name"].as_str().expect("a name").to_owned())
        .collect()
}
