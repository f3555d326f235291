//! Snapshots end to end with real processes: control service, three
//! storage servers, a node manager and the `basalt` CLI; data written and
//! read through real vhost-user-blk backends (libblkio on the host).

use std::time::Duration;

use basalt_tests::blk::Blk;
use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::snaps::{attach, noise, read_all, restore, snapshot, wait_snapshot, MIB};

fn cluster(args: &[&str]) -> (tempfile::TempDir, ManagedCluster) {
    let root = tempfile::Builder::new()
        .prefix("basalt-snap-")
        .tempdir()
        .unwrap();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let c = ManagedCluster::start_with_control_args(root.path(), 3, &args).unwrap();
    (root, c)
}

#[test]
fn incremental_snapshots_restore_byte_for_byte_after_deleting_the_middle_one() {
    let (_root, c) = cluster(&[]);
    c.cli_json(&["volume", "create", "v", "--size", "64M"])
        .unwrap();
    let mut b = attach(&c, "v");
    let size = 64 * MIB;
    let mut image = vec![0u8; size];
    // 24 MiB of data; the rest stays zero (never stored).
    let data = noise(1, 24 * MIB);
    b.write_at(8 << 20, &data).unwrap();
    image[8 * MIB..32 * MIB].copy_from_slice(&data);
    b.flush().unwrap();
    let s1 = snapshot(&c, "v.s1").unwrap();
    assert_eq!(s1["state"], "COMPLETE", "{s1}");
    assert_eq!(s1["progress"]["change_source"], "FULL");
    assert_eq!(s1["progress"]["data_bytes"], 24 * MIB as u64);
    let full_upload = s1["progress"]["bytes_uploaded"].as_u64().unwrap();
    let img1 = image.clone();

    // Change 1 % of the volume (640 KiB in one place), then snapshot again.
    let change = noise(2, 640 << 10);
    b.write_at(40 << 20, &change).unwrap();
    image[40 * MIB..40 * MIB + change.len()].copy_from_slice(&change);
    b.flush().unwrap();
    let s2 = snapshot(&c, "v.s2").unwrap();
    assert_eq!(s2["state"], "COMPLETE", "{s2}");
    assert_eq!(s2["parent_id"], s1["id"]);
    assert_eq!(s2["progress"]["change_source"], "CHANGE_MAP");
    let inc = s2["progress"]["bytes_uploaded"].as_u64().unwrap();
    assert_eq!(
        s2["progress"]["blocks_total"], 2,
        "640 KiB at a block boundary touches 2 blocks"
    );
    assert!(
        inc <= 1 << 20,
        "incremental upload {inc} bytes for a 640 KiB change"
    );
    println!("FIGURE full snapshot uploaded {full_upload} bytes; after a 640 KiB change the incremental one uploaded {inc} bytes");

    // Overwrite part of the first data and snapshot a third time.
    let third = noise(3, 2 * MIB);
    b.write_at(10 << 20, &third).unwrap();
    image[10 * MIB..12 * MIB].copy_from_slice(&third);
    b.flush().unwrap();
    let s3 = snapshot(&c, "v.s3").unwrap();
    assert_eq!(s3["state"], "COMPLETE", "{s3}");
    assert_eq!(s3["parent_id"], s2["id"]);

    // Delete the middle one; the others still restore byte for byte.
    let (ok, _, err) = c.cli(&["snapshot", "delete", "v.s2"]).unwrap();
    assert!(ok, "{err}");
    let (ok, _, _) = c.cli(&["snapshot", "show", "v.s2"]).unwrap();
    assert!(!ok, "a deleted snapshot is gone");
    assert!(restore(&c, "v.s1", "r1", size) == img1, "s1 restored wrong");
    assert!(
        restore(&c, "v.s3", "r3", size) == image,
        "s3 restored wrong"
    );
    let list = c.cli_json(&["snapshot", "list", "--volume", "v"]).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    // Hydration completes on every copy, and the snapshot is no longer
    // needed by the restored volume.
    let r3 = c
        .wait_volume("r3", Duration::from_secs(60), |v| {
            v["hydration"]["complete"] == true
        })
        .unwrap();
    assert_eq!(
        r3["hydration"]["blocks_present"],
        r3["hydration"]["blocks_total"]
    );
}

#[test]
fn bad_snapshot_requests_get_clear_errors_and_change_nothing() {
    let (_root, c) = cluster(&["--snapshot-rate-mib", "2"]);
    c.cli_json(&["volume", "create", "v", "--size", "16M"])
        .unwrap();
    let mut b = attach(&c, "v");
    b.write_at(0, &noise(4, 8 * MIB)).unwrap();
    let expect_err = |args: &[&str], want: &str| {
        let (ok, out, err) = c.cli(args).unwrap();
        assert!(!ok, "basalt {args:?} succeeded: {out}");
        assert!(
            err.contains(want),
            "basalt {args:?}: {err:?} lacks {want:?}"
        );
    };
    expect_err(
        &["snapshot", "create", "nope", "--name", "x"],
        "does not exist",
    );
    expect_err(&["snapshot", "create", "v", "--name", "bad name!"], "name");
    expect_err(
        &[
            "snapshot",
            "create",
            "v",
            "--name",
            "x",
            "--destination",
            "nowhere",
        ],
        "no destination",
    );
    expect_err(&["snapshot", "show", "missing"], "does not exist");
    expect_err(&["snapshot", "delete", "missing"], "does not exist");
    expect_err(
        &["volume", "create", "r", "--from-snapshot", "missing"],
        "does not exist",
    );
    // An upload in progress (2 MiB/s): one at a time, and no delete.
    let (ok, _, err) = c
        .cli(&["snapshot", "create", "v", "--name", "v.a"])
        .unwrap();
    assert!(ok, "{err}");
    expect_err(
        &["snapshot", "create", "v", "--name", "v.b"],
        "still uploading",
    );
    expect_err(&["snapshot", "delete", "v.a"], "still uploading");
    expect_err(
        &["volume", "create", "r", "--from-snapshot", "v.a"],
        "complete snapshot",
    );
    expect_err(
        &["snapshot", "create", "v", "--name", "v.a"],
        "already exists",
    );
    let a = wait_snapshot(&c, "v.a", Duration::from_secs(60), |s| {
        s["state"] == "COMPLETE"
    })
    .unwrap();
    expect_err(
        &[
            "volume",
            "create",
            "r",
            "--from-snapshot",
            "v.a",
            "--size",
            "8M",
        ],
        "smaller than",
    );
    // A hydrating volume keeps its snapshot, and cannot be snapshotted yet.
    let (_root2, _) = ((), ());
    let r = c
        .cli_json(&[
            "volume",
            "create",
            "r",
            "--from-snapshot",
            "v.a",
            "--size",
            "32M",
        ])
        .unwrap();
    assert_eq!(
        r["size_bytes"],
        32 * MIB as u64,
        "a larger volume from a snapshot"
    );
    assert_eq!(r["source_snapshot_id"], a["id"]);
    let list = c.cli_json(&["snapshot", "list"]).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "failed requests left records: {list}"
    );
}

#[test]
fn control_restart_during_an_upload_completes_it_and_a_primary_kill_fails_it_clearly() {
    let (_root, mut c) = cluster(&["--snapshot-rate-mib", "4"]);
    let v = c
        .cli_json(&["volume", "create", "v", "--size", "32M"])
        .unwrap();
    let mut b = attach(&c, "v");
    let data = noise(5, 16 * MIB);
    b.write_at(0, &data).unwrap();
    b.flush().unwrap();
    // Upload at 4 MiB/s: ~4 s. The control service dies meanwhile.
    let (ok, _, err) = c
        .cli(&["snapshot", "create", "v", "--name", "v.c"])
        .unwrap();
    assert!(ok, "{err}");
    c.restart_control().unwrap();
    // The guest side keeps writing while it uploads (copy-on-write).
    b.write_at(0, &noise(6, 16 * MIB)).unwrap();
    let s = wait_snapshot(&c, "v.c", Duration::from_secs(60), |s| {
        s["state"] != "CREATING"
    })
    .unwrap();
    assert_eq!(s["state"], "COMPLETE", "{s}");
    assert!(
        s["progress"]["cow_blocks"].as_u64().unwrap() > 0,
        "the overwrite raced the upload: {s}"
    );
    let mut expected = data.clone();
    expected.resize(32 * MIB, 0);
    assert!(
        restore(&c, "v.c", "r", 32 * MIB) == expected,
        "the snapshot is not the image at its point"
    );

    // The primary's server dies during an upload: FAILED, with the reason.
    let (ok, _, err) = c
        .cli(&["snapshot", "create", "v", "--name", "v.d"])
        .unwrap();
    assert!(ok, "{err}");
    let primary = v["primary"]["server_id"].as_str().unwrap();
    let i: usize = primary[1..].parse::<usize>().unwrap() - 1;
    c.servers[i].kill9();
    let s = wait_snapshot(&c, "v.d", Duration::from_secs(60), |s| {
        s["state"] != "CREATING"
    })
    .unwrap();
    assert_eq!(s["state"], "FAILED", "{s}");
    let why = s["failure"].as_str().unwrap();
    assert!(
        why.contains(primary) && why.contains("take a new snapshot"),
        "{why}"
    );
    println!("FIGURE primary killed during an upload: FAILED: {why}");
}

#[test]
fn a_volume_from_a_snapshot_survives_a_primary_kill_and_a_control_kill_while_it_hydrates() {
    let (_root, mut c) = cluster(&["--hydration-rate-mib", "1"]);
    c.cli_json(&["volume", "create", "v", "--size", "32M"])
        .unwrap();
    let mut b = attach(&c, "v");
    let data = noise(7, 12 * MIB);
    b.write_at(4 << 20, &data).unwrap();
    b.flush().unwrap();
    let s = snapshot(&c, "v.s").unwrap();
    assert_eq!(s["state"], "COMPLETE", "{s}");
    let mut expected = vec![0u8; 32 * MIB];
    expected[4 * MIB..16 * MIB].copy_from_slice(&data);

    let r = c
        .cli_json(&["volume", "create", "r", "--from-snapshot", "v.s"])
        .unwrap();
    let mut rb = attach(&c, "r");
    // Partial writes into blocks not yet local merge with the snapshot.
    let step = |rb: &mut Blk, expected: &mut Vec<u8>, at: usize, seed: u64| {
        let w = noise(seed, 4096);
        rb.write_at(at as u64, &w).unwrap();
        expected[at..at + 4096].copy_from_slice(&w);
        let mut got = vec![0u8; 64 << 10];
        let base = at & !((64 << 10) - 1);
        rb.read_at(base as u64, &mut got).unwrap();
        assert!(
            got == expected[base..base + (64 << 10)],
            "wrong data around {at}"
        );
    };
    step(&mut rb, &mut expected, 5 * MIB + 8192, 10);
    step(&mut rb, &mut expected, 15 * MIB + 4096, 11);
    let h = c.cli_json(&["volume", "show", "r"]).unwrap();
    assert_eq!(h["hydration"]["complete"], false, "{h}");

    // The primary dies mid-hydration: a mirror takes over and goes on.
    let primary = r["primary"]["server_id"].as_str().unwrap().to_owned();
    let i: usize = primary[1..].parse::<usize>().unwrap() - 1;
    c.servers[i].kill9();
    step(&mut rb, &mut expected, 9 * MIB + 512 * 1024 + 4096, 12);
    step(&mut rb, &mut expected, 13 * MIB + 12288, 13);
    // And the control service dies too (one server is down: do not wait
    // for every server to be up).
    c.restart_control_env(&[]).unwrap();
    step(&mut rb, &mut expected, 7 * MIB + 4096, 14);
    let v = c
        .wait_volume("r", Duration::from_secs(120), |v| {
            v["hydration"]["complete"] == true
                && v["mirrors"].as_array().is_some_and(|m| !m.is_empty())
                && v["primary"]["server_id"] != primary.as_str()
        })
        .unwrap();
    println!(
        "FIGURE hydration survived a primary kill and a control kill: {}",
        v["hydration"]
    );
    assert!(
        read_all(&mut rb, 32 * MIB) == expected,
        "the hydrated volume differs from snapshot + writes"
    );
    rb.flush().unwrap();
}
