//! Crash safety of snapshot deletion and the chunk sweep, with real
//! processes: the control service is killed (failpoint `abort`) at every
//! step of a delete and of the sweep that follows it; after a normal restart
//! the delete completes, every remaining snapshot restores byte for byte,
//! no manifest names a missing chunk, and no garbage stays behind.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use basalt_snapshot::{ChunkId, Destination, DestinationSpec};
use basalt_tests::blk::Blk;
use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::snaps::{attach, noise, read_all, wait_snapshot, MIB};

const SIZE: usize = 16 * MIB;

/// Every step of a delete, then of its sweep, in the order they run.
const FAILPOINTS: [&str; 5] = [
    "snapshot.delete.after_mark",
    "snapshot.delete.after_manifest",
    "gc.after_list",
    "gc.after_read_manifests",
    "gc.mid_delete",
];

/// Polls `check` every 50 ms until it returns Ok, or fails with its last error.
fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => {
                panic!("{what}: not true after {timeout:?}: {e:#}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A snapshot the test keeps, with the volume's image at its point.
struct Snap {
    name: String,
    id: u64,
    image: Vec<u8>,
}

/// Writes `data` at `offset` to the volume and to the expected image.
fn write(b: &mut Blk, image: &mut [u8], offset: usize, data: &[u8]) {
    b.write_at(offset as u64, data).unwrap();
    image[offset..offset + data.len()].copy_from_slice(data);
}

/// Snapshot `k`: 1 MiB of fresh data at 2 MiB (so every snapshot has
/// chunks no other one shares: deleting any leaves garbage to sweep) and
/// 768 KiB at its own place; snapshot 1 also writes 6 MiB from 0.
fn take(c: &ManagedCluster, b: &mut Blk, image: &mut [u8], k: usize) -> Snap {
    if k == 1 {
        write(b, image, 0, &noise(1000, 6 * MIB));
    }
    write(b, image, 2 * MIB, &noise(k as u64, MIB));
    write(b, image, (5 + k) * MIB, &noise(100 + k as u64, 768 << 10));
    b.flush().unwrap();
    let name = format!("v.s{k}");
    let (ok, _, err) = c
        .cli(&["snapshot", "create", "v", "--name", &name])
        .unwrap();
    assert!(ok, "snapshot create {name}: {err}");
    let s = wait_snapshot(c, &name, Duration::from_secs(120), |s| {
        s["state"] != "CREATING"
    })
    .unwrap();
    assert_eq!(s["state"], "COMPLETE", "{s}");
    Snap {
        name,
        id: s["id"].as_u64().unwrap(),
        image: image.to_vec(),
    }
}

/// Restores `snap` into a new volume, compares it byte for byte, then
/// detaches and deletes that volume (so it holds no snapshot).
fn check_restore(c: &ManagedCluster, snap: &Snap, vol: &str) {
    let v = c
        .cli_json(&["volume", "create", vol, "--from-snapshot", &snap.name])
        .unwrap();
    assert_eq!(v["state"], "AVAILABLE", "{v}");
    let mut b = attach(c, vol);
    let got = read_all(&mut b, SIZE);
    drop(b);
    if let Some(at) = got.iter().zip(&snap.image).position(|(a, b)| a != b) {
        panic!(
            "{} (id {}) restored into {vol} differs from its image at byte {at} (block {})",
            snap.name,
            snap.id,
            at / (512 << 10)
        );
    }
    c.cli_json(&["volume", "detach", vol]).unwrap();
    c.cli_json(&["volume", "delete", vol]).unwrap();
    eventually(
        &format!("volume {vol} deleted"),
        Duration::from_secs(30),
        || match c.cli(&["volume", "show", vol])? {
            (false, _, _) => Ok(()),
            (true, out, _) => bail!("still there: {out}"),
        },
    );
}

/// The destination's manifests and chunks: (manifest ids, chunks they
/// name, chunks stored).
fn contents(c: &ManagedCluster, d: &Destination) -> (Vec<u64>, HashSet<ChunkId>, HashSet<ChunkId>) {
    c.rt.block_on(async {
        let ids = d.list_manifests().await.unwrap();
        let mut named = HashSet::new();
        for id in &ids {
            named.extend(d.get_manifest(*id).await.unwrap().blocks.into_values());
        }
        let stored = d.list_chunks().await.unwrap().into_iter().collect();
        (ids, named, stored)
    })
}

/// The snapshots of volume `v` as (name, state).
fn listed(c: &ManagedCluster) -> Result<Vec<(String, String)>> {
    let l = c.cli_json(&["snapshot", "list", "--volume", "v"])?;
    Ok(l.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect())
}

fn count_aborts(root: &Path, fp: &str) -> usize {
    let log = std::fs::read_to_string(root.join("control.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("failpoint: aborting") && l.contains(fp))
        .count()
}

#[test]
fn a_crash_at_any_step_of_delete_or_sweep_never_breaks_a_snapshot() {
    let started = Instant::now();
    let root = tempfile::Builder::new()
        .prefix("basalt-snap-gc-")
        .tempdir()
        .unwrap();
    let mut c = ManagedCluster::start_with_control_args(root.path(), 3, &[]).unwrap();
    // The default destination, `local`.
    let dest = Destination::open(&DestinationSpec {
        name: "local".into(),
        url: format!("file://{}/control/snapshots", root.path().display()),
        ..Default::default()
    })
    .unwrap();

    c.cli_json(&["volume", "create", "v", "--size", "16M"])
        .unwrap();
    let mut b = attach(&c, "v");
    let mut image = vec![0u8; SIZE];
    let mut snaps: Vec<Snap> = (1..=3).map(|k| take(&c, &mut b, &mut image, k)).collect();
    let (ids, _, _) = contents(&c, &dest);
    assert_eq!(
        ids,
        snaps.iter().map(|s| s.id).collect::<Vec<_>>(),
        "manifests"
    );

    // Which snapshot each round deletes (index into `snaps`, oldest first),
    // after taking one more snapshot (except in the first round). Covers the
    // middle of the chain, its oldest and its newest snapshot.
    let victims = [1, 1, 0, 2, 1];
    let mut next = 4;
    let mut restores = 0;
    let mut garbage_after = Vec::new();
    for (round, (fp, victim)) in FAILPOINTS.iter().zip(victims).enumerate() {
        let t = Instant::now();
        if round > 0 {
            snaps.push(take(&c, &mut b, &mut image, next));
            next += 1;
        }
        let gone = snaps.remove(victim);
        let pos = match victim {
            0 => "oldest",
            v if v == snaps.len() => "newest",
            _ => "middle",
        };

        // Arm the failpoint; the delete kills the control service there.
        c.restart_control_env(&[("BASALT_FAILPOINTS", &format!("{fp}=abort"))])
            .unwrap();
        c.wait_ready().unwrap();
        let aborts = count_aborts(root.path(), fp);
        let (ok, out, err) = c.cli(&["snapshot", "delete", &gone.name]).unwrap();
        assert!(
            !ok,
            "round {round} ({fp}): deleting {} succeeded though the control service should have died: {out}",
            gone.name
        );
        eventually(
            &format!("round {round}: the control service dies at {fp}"),
            Duration::from_secs(10),
            || {
                if c.control.has_exited() {
                    Ok(())
                } else {
                    bail!("still running; the delete said: {err}")
                }
            },
        );
        assert_eq!(
            count_aborts(root.path(), fp),
            aborts + 1,
            "round {round}: the control service died elsewhere than at {fp}; the delete said: {err}"
        );

        // A normal restart: the delete completes (resumed if DELETING).
        c.restart_control().unwrap();
        eventually(
            &format!("round {round} ({fp}): {} gone from the list", gone.name),
            Duration::from_secs(30),
            || {
                let l = listed(&c)?;
                if l.iter().any(|(n, _)| *n == gone.name) {
                    bail!("{l:?}");
                }
                Ok(l)
            },
        );
        let l = listed(&c).unwrap();
        let want: Vec<(String, String)> = snaps
            .iter()
            .map(|s| (s.name.clone(), "COMPLETE".to_owned()))
            .collect();
        assert_eq!(l, want, "round {round} ({fp}): snapshots listed");

        // The destination: exactly the remaining manifests, every chunk
        // they name present.
        let (ids, named, stored) = contents(&c, &dest);
        assert_eq!(
            ids,
            snaps.iter().map(|s| s.id).collect::<Vec<_>>(),
            "round {round} ({fp}): manifests in the destination"
        );
        let missing: Vec<String> = named.difference(&stored).map(|c| c.hex()).collect();
        assert!(
            missing.is_empty(),
            "round {round} ({fp}): manifests name missing chunks {missing:?}"
        );
        for s in &snaps {
            restores += 1;
            check_restore(&c, s, &format!("r{restores}"));
        }
        let garbage = stored.difference(&named).count();
        garbage_after.push(garbage);
        println!(
            "round {round}: crashed at {fp} deleting {} ({pos} of the chain); {} snapshots restore; \
             {garbage} unreferenced chunks right after; {:?}",
            gone.name,
            snaps.len(),
            t.elapsed()
        );
    }

    // The crashes left no permanent garbage: eventually every stored chunk
    // is named by a manifest.
    let garbage = eventually(
        "every chunk no manifest names is swept",
        Duration::from_secs(20),
        || {
            let (ids, named, stored) = contents(&c, &dest);
            let garbage: BTreeSet<String> = stored.difference(&named).map(|c| c.hex()).collect();
            if !garbage.is_empty() {
                bail!(
                    "{} chunks named by none of the manifests {ids:?} remain: {garbage:?}",
                    garbage.len()
                );
            }
            Ok(stored.len())
        },
    );
    println!(
        "FIGURE {} delete crashes recovered; {garbage} chunks left, all referenced; \
         unreferenced after each round {garbage_after:?}; {restores} restores; {:?}",
        FAILPOINTS.len(),
        started.elapsed()
    );
}
