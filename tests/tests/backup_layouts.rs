//! Named destinations and backup layouts end to end, through the CLI, with
//! directory destinations: access checks, single / striped / duplicate /
//! alternate snapshots (where every chunk lands, checked with the test's own
//! destination clients), restores from each, refused removals, and a
//! corrupt chunk detected, served from the other copy and repaired.

use std::time::Duration;

use basalt_snapshot::{Destination, Manifest};
use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::snaps::{
    attach, chunks, destination_names, dir_dest, manifests, noise, read_all, refused, snapshot, MIB,
};

const DATA: usize = 12 * MIB;

fn manifest(c: &ManagedCluster, d: &Destination, id: u64) -> Manifest {
    c.rt.block_on(d.get_manifest(id))
        .unwrap_or_else(|e| panic!("manifest {id} in {}: {e}", d.name()))
}

fn id_of(s: &serde_json::Value) -> u64 {
    s["id"].as_u64().expect("snapshot id")
}

/// Restores `snap` into `vol` and checks its first `DATA` bytes.
fn check_restore(c: &ManagedCluster, snap: &str, vol: &str, want: &[u8]) -> serde_json::Value {
    let v = c
        .cli_json(&["volume", "create", vol, "--from-snapshot", snap])
        .expect("restore");
    assert_eq!(v["state"], "AVAILABLE", "{v}");
    let mut b = attach(c, vol);
    let got = read_all(&mut b, want.len());
    assert!(got == want, "volume {vol} restored from {snap} differs");
    c.wait_volume(vol, Duration::from_secs(120), |v| {
        v["hydration"]["complete"] == true
    })
    .expect("hydration completes")
}

#[test]
fn destinations_and_layouts() {
    let root = tempfile::Builder::new()
        .prefix("basalt-layouts-")
        .tempdir()
        .unwrap();
    let dests = root.path().join("dests");
    std::fs::create_dir_all(&dests).unwrap();
    let c = ManagedCluster::start(root.path(), 3).unwrap();

    // Destinations: added after an access check; refused with the reason.
    for name in ["a", "b", "c"] {
        let path = dests.join(name);
        let d = c
            .cli_json(&[
                "destination",
                "add",
                name,
                "--type",
                "dir",
                "--path",
                path.to_str().unwrap(),
            ])
            .expect("destination add");
        assert_eq!(d["health"], "OK", "{d}");
        assert_eq!(d["type"], "dir");
    }
    let ro = dests.join("read-only");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("probe"), b"a file where the probe directory goes").unwrap();
    refused(
        &c,
        &[
            "destination",
            "add",
            "bad",
            "--type",
            "dir",
            "--path",
            ro.to_str().unwrap(),
        ],
        "writing a test object failed",
    );
    refused(
        &c,
        &[
            "destination",
            "add",
            "a",
            "--type",
            "dir",
            "--path",
            "/tmp/x",
        ],
        "already exists",
    );
    assert_eq!(destination_names(&c), ["a", "b", "c", "local"]);

    let (da, db, dc) = (
        dir_dest(&dests, "a"),
        dir_dest(&dests, "b"),
        dir_dest(&dests, "c"),
    );

    c.cli_json(&["volume", "create", "v", "--size", "64M"])
        .unwrap();
    let mut blk = attach(&c, "v");
    let mut data = noise(1, DATA);
    blk.write_at(0, &data).unwrap();
    blk.flush().unwrap();

    // Bad policies are refused and change nothing.
    refused(
        &c,
        &[
            "volume",
            "backup",
            "v",
            "--layout",
            "duplicate",
            "--destination",
            "a",
        ],
        "2 to 8",
    );
    refused(
        &c,
        &[
            "volume",
            "backup",
            "v",
            "--layout",
            "single",
            "--destination",
            "nope",
        ],
        "no destination \"nope\"",
    );
    refused(
        &c,
        &[
            "volume",
            "backup",
            "v",
            "--layout",
            "striped",
            "--destination",
            "a",
            "--destination",
            "a",
        ],
        "named twice",
    );
    let v = c.cli_json(&["volume", "show", "v"]).unwrap();
    assert!(v["backup_policy"].is_null(), "{v}");

    // Striped over a and b: every chunk only in the destination of its
    // block's stripe (4 MiB = 8 blocks), the manifest in both.
    let v = c
        .cli_json(&[
            "volume",
            "backup",
            "v",
            "--layout",
            "striped",
            "--destination",
            "a",
            "--destination",
            "b",
        ])
        .unwrap();
    assert_eq!(v["backup_policy"]["layout"], "striped", "{v}");
    assert_eq!(v["backup_policy"]["stripe_mib"], 4, "{v}");
    let s1 = snapshot(&c, "v.s1").unwrap();
    assert_eq!(s1["state"], "COMPLETE", "{s1}");
    assert_eq!(s1["layout"], "striped");
    assert_eq!(s1["destinations"], serde_json::json!(["a", "b"]));
    let m1 = manifest(&c, &da, id_of(&s1));
    assert_eq!(m1, manifest(&c, &db, id_of(&s1)), "same manifest in both");
    assert_eq!(m1.blocks.len(), DATA / (512 << 10));
    let (ca, cb) = (chunks(&c, &da), chunks(&c, &db));
    for (&block, id) in &m1.blocks {
        let (holder, other) = if (block / 8) % 2 == 0 {
            (&ca, &cb)
        } else {
            (&cb, &ca)
        };
        assert!(
            holder.contains(id),
            "block {block}: chunk not in its stripe's destination"
        );
        assert!(
            !other.contains(id),
            "block {block}: chunk in the other destination too"
        );
    }
    assert_eq!(ca.len() + cb.len(), m1.blocks.len());
    let want1 = data.clone();

    // Duplicate over a and b: every chunk in both; a full snapshot (the
    // striped one is in another set).
    data[..MIB].copy_from_slice(&noise(2, MIB));
    blk.write_at(0, &data[..MIB]).unwrap();
    blk.flush().unwrap();
    c.cli_json(&[
        "volume",
        "backup",
        "v",
        "--layout",
        "duplicate",
        "--destination",
        "a",
        "--destination",
        "b",
    ])
    .unwrap();
    let s2 = snapshot(&c, "v.s2").unwrap();
    assert_eq!(s2["state"], "COMPLETE", "{s2}");
    assert_eq!(s2["layout"], "duplicate");
    assert_eq!(
        s2["parent_id"], 0,
        "a new set starts with a full snapshot: {s2}"
    );
    let m2 = manifest(&c, &da, id_of(&s2));
    let (ca, cb) = (chunks(&c, &da), chunks(&c, &db));
    for (block, id) in &m2.blocks {
        assert!(
            ca.contains(id) && cb.contains(id),
            "block {block}: not in both"
        );
    }
    let want2 = data.clone();

    // Alternate over a and c: the last snapshot went to a, so c, then a;
    // each complete in its one destination.
    c.cli_json(&[
        "volume",
        "backup",
        "v",
        "--layout",
        "alternate",
        "--destination",
        "a",
        "--destination",
        "c",
    ])
    .unwrap();
    data[MIB..2 * MIB].copy_from_slice(&noise(3, MIB));
    blk.write_at(MIB as u64, &data[MIB..2 * MIB]).unwrap();
    blk.flush().unwrap();
    let s3 = snapshot(&c, "v.s3").unwrap();
    assert_eq!(s3["destinations"], serde_json::json!(["c"]), "{s3}");
    assert_eq!(s3["parent_id"], 0, "c held no snapshot of v: {s3}");
    let m3 = manifest(&c, &dc, id_of(&s3));
    let cc = chunks(&c, &dc);
    assert!(
        m3.blocks.values().all(|id| cc.contains(id)),
        "s3 complete in c"
    );
    assert_eq!(manifests(&c, &dc), [id_of(&s3)]);
    let want3 = data.clone();
    let s4 = snapshot(&c, "v.s4").unwrap();
    assert_eq!(s4["destinations"], serde_json::json!(["a"]), "{s4}");
    assert!(!manifests(&c, &dc).contains(&id_of(&s4)));
    let m4 = manifest(&c, &da, id_of(&s4));
    let ca = chunks(&c, &da);
    assert!(
        m4.blocks.values().all(|id| ca.contains(id)),
        "s4 complete in a"
    );

    // Removals that would strand snapshots are refused.
    refused(&c, &["destination", "remove", "a"], "snapshot(s) are kept");
    refused(&c, &["destination", "remove", "local"], "--destination");
    let (ok, _, err) = c
        .cli(&[
            "destination",
            "add",
            "d",
            "--type",
            "dir",
            "--path",
            dests.join("d").to_str().unwrap(),
        ])
        .unwrap();
    assert!(ok, "{err}");
    let (ok, _, err) = c.cli(&["destination", "remove", "d"]).unwrap();
    assert!(ok, "an unused destination is removed: {err}");

    // `show` counts what a destination stores.
    let shown = c.cli_json(&["destination", "show", "c"]).unwrap();
    assert_eq!(shown["chunks"].as_u64(), Some(cc.len() as u64), "{shown}");
    assert!(shown["bytes_stored"].as_u64().unwrap() > 0, "{shown}");
    assert_eq!(shown["snapshots"], 1, "{shown}");

    // Every snapshot restores, whatever its layout.
    check_restore(&c, "v.s1", "r1", &want1);
    check_restore(&c, "v.s3", "r3", &want3);

    // A corrupt chunk in a (the first destination of s2's duplicate set) is
    // detected, served from b and repaired.
    let block0 = m2.blocks[&0];
    let hex = block0.hex();
    let file = dests.join("a").join("chunks").join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let v = check_restore(&c, "v.s2", "r2", &want2);
    let sources = v["hydration"]["sources"]
        .as_array()
        .expect("sources")
        .clone();
    let of = |n: &str| {
        sources
            .iter()
            .find(|s| s["destination"] == n)
            .unwrap_or_else(|| panic!("no source {n}: {v}"))
            .clone()
    };
    assert!(of("a")["corrupt"].as_u64().unwrap() >= 1, "{v}");
    assert!(of("a")["repaired"].as_u64().unwrap() >= 1, "{v}");
    assert!(of("b")["served"].as_u64().unwrap() >= 1, "{v}");
    let repaired = c.rt.block_on(da.get_chunk(&block0, 512 << 10));
    assert!(repaired.is_ok(), "chunk repaired in a: {repaired:?}");

    // Deleting a duplicate snapshot removes its manifest from both.
    let (ok, _, err) = c.cli(&["snapshot", "delete", "v.s2"]).unwrap();
    assert!(ok, "{err}");
    assert!(!manifests(&c, &da).contains(&id_of(&s2)));
    assert!(!manifests(&c, &db).contains(&id_of(&s2)));
    // s1 (striped) is still whole after the sweep.
    check_restore(&c, "v.s1", "r1b", &want1);
}
