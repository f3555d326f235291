//! Copies of snapshots in more destinations, through the CLI with
//! directory destinations: a copy made and used by a restore after the
//! original destination is removed; removals refused while they would leave
//! too few complete copies (or break a stripe); and the archive rule moving
//! every old snapshot of a volume to a cold destination.

use std::time::{Duration, Instant};

use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::snaps::{
    attach, chunks, dir_dest, manifests, noise, read_all, refused, snapshot, MIB,
};

const DATA: usize = 8 * MIB;

fn ok(c: &ManagedCluster, args: &[&str]) -> serde_json::Value {
    c.cli_json(args)
        .unwrap_or_else(|e| panic!("basalt {args:?}: {e:#}"))
}

fn restores(c: &ManagedCluster, snap: &str, vol: &str, want: &[u8]) {
    let v = ok(c, &["volume", "create", vol, "--from-snapshot", snap]);
    assert_eq!(v["state"], "AVAILABLE", "{v}");
    let mut b = attach(c, vol);
    assert!(
        read_all(&mut b, want.len()) == want,
        "{vol} from {snap} differs"
    );
    c.wait_volume(vol, Duration::from_secs(120), |v| {
        v["hydration"]["complete"] == true
    })
    .unwrap();
    ok(c, &["volume", "detach", vol]);
}

#[test]
fn copies_removals_and_archive() {
    let root = tempfile::Builder::new()
        .prefix("basalt-copies-")
        .tempdir()
        .unwrap();
    let dests = root.path().join("dests");
    let c = ManagedCluster::start(root.path(), 3).unwrap();
    for name in ["a", "b", "cold"] {
        let p = dests.join(name);
        ok(
            &c,
            &[
                "destination",
                "add",
                name,
                "--type",
                "dir",
                "--path",
                p.to_str().unwrap(),
            ],
        );
    }
    let (da, db, dcold) = (
        dir_dest(&dests, "a"),
        dir_dest(&dests, "b"),
        dir_dest(&dests, "cold"),
    );
    ok(&c, &["volume", "create", "v", "--size", "32M"]);
    let mut blk = attach(&c, "v");
    let want = noise(5, DATA);
    blk.write_at(0, &want).unwrap();
    blk.flush().unwrap();

    // A single snapshot in a, copied to b: b holds every chunk and the manifest.
    ok(
        &c,
        &[
            "volume",
            "backup",
            "v",
            "--layout",
            "single",
            "--destination",
            "a",
        ],
    );
    let s1 = snapshot(&c, "v.s1").unwrap();
    let id1 = s1["id"].as_u64().unwrap();
    let s = ok(
        &c,
        &["snapshot", "copy", "v.s1", "--destination", "b", "--wait"],
    );
    assert_eq!(s["copies"], serde_json::json!(["b"]), "{s}");
    assert!(manifests(&c, &db).contains(&id1));
    assert_eq!(chunks(&c, &da), chunks(&c, &db));
    refused(
        &c,
        &["snapshot", "copy", "v.s1", "--destination", "b"],
        "already kept",
    );
    // Removed from a: b takes its place, a is swept empty, it still restores.
    let s = ok(
        &c,
        &["snapshot", "remove-copy", "v.s1", "--destination", "a"],
    );
    assert_eq!(s["destinations"], serde_json::json!(["b"]), "{s}");
    assert!(manifests(&c, &da).is_empty());
    assert!(chunks(&c, &da).is_empty(), "a swept");
    restores(&c, "v.s1", "r1", &want);
    // Its last copy cannot go.
    refused(
        &c,
        &["snapshot", "remove-copy", "v.s1", "--destination", "b"],
        "needs 1",
    );

    // Duplicate over a and b needs two complete copies.
    ok(
        &c,
        &[
            "volume",
            "backup",
            "v",
            "--layout",
            "duplicate",
            "--destination",
            "a",
            "--destination",
            "b",
        ],
    );
    assert_eq!(snapshot(&c, "v.s2").unwrap()["state"], "COMPLETE");
    refused(
        &c,
        &["snapshot", "remove-copy", "v.s2", "--destination", "a"],
        "needs 2",
    );
    ok(
        &c,
        &[
            "snapshot",
            "copy",
            "v.s2",
            "--destination",
            "cold",
            "--wait",
        ],
    );
    let s = ok(
        &c,
        &["snapshot", "remove-copy", "v.s2", "--destination", "a"],
    );
    assert_eq!(s["destinations"], serde_json::json!(["b"]), "{s}");
    assert_eq!(s["layout"], "single", "{s}");
    assert_eq!(s["copies"], serde_json::json!(["cold"]), "{s}");
    // A stripe cannot be removed alone.
    ok(
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
            "b",
        ],
    );
    assert_eq!(snapshot(&c, "v.s3").unwrap()["state"], "COMPLETE");
    ok(
        &c,
        &[
            "snapshot",
            "copy",
            "v.s3",
            "--destination",
            "cold",
            "--wait",
        ],
    );
    refused(
        &c,
        &["snapshot", "remove-copy", "v.s3", "--destination", "a"],
        "stripe",
    );

    // A copy to a destination that fails shows why, and is cancelled by
    // removing that destination's copy.
    let broken = dests.join("broken");
    ok(
        &c,
        &[
            "destination",
            "add",
            "broken",
            "--type",
            "dir",
            "--path",
            broken.to_str().unwrap(),
        ],
    );
    std::fs::write(broken.join("chunks"), b"not a directory").unwrap();
    ok(&c, &["snapshot", "copy", "v.s1", "--destination", "broken"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = ok(&c, &["snapshot", "show", "v.s1"]);
        if s["copy_error"]
            .as_str()
            .is_some_and(|e| e.contains("broken"))
        {
            break s;
        }
        assert!(Instant::now() < deadline, "no copy error shown: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(s["copying"], serde_json::json!(["broken"]), "{s}");
    refused(&c, &["snapshot", "delete", "v.s1"], "being copied");
    let s = ok(
        &c,
        &["snapshot", "remove-copy", "v.s1", "--destination", "broken"],
    );
    assert_eq!(s["copying"], serde_json::json!([]), "cancelled: {s}");
    assert_eq!(s["copy_error"], "", "{s}");
    ok(&c, &["destination", "remove", "broken"]);

    // Archive: every snapshot of v older than 1 s moves to cold.
    ok(
        &c,
        &[
            "volume",
            "backup",
            "v",
            "--layout",
            "single",
            "--destination",
            "a",
            "--archive-after",
            "1s",
            "--archive-to",
            "cold",
        ],
    );
    assert_eq!(snapshot(&c, "v.s4").unwrap()["state"], "COMPLETE");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = ok(&c, &["snapshot", "list", "--volume", "v"]);
        let places: Vec<String> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|s| format!("{}:{}", s["destinations"], s["copies"]))
            .collect();
        if places.iter().all(|p| p == "[\"cold\"]:[]") {
            break;
        }
        assert!(Instant::now() < deadline, "not all archived: {places:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(manifests(&c, &dcold).len(), 4);
    assert!(manifests(&c, &da).is_empty() && manifests(&c, &db).is_empty());
    assert!(
        chunks(&c, &da).is_empty() && chunks(&c, &db).is_empty(),
        "a and b swept"
    );
    restores(&c, "v.s3", "r3", &want);
    restores(&c, "v.s4", "r4", &want);
}
