//! The exact point in time of a snapshot, checked block by block: the
//! host writes generation-stamped 4 KiB blocks at QD32 through a real
//! backend while `basalt snapshot create` runs; every block of the volume
//! restored from that snapshot must hold a write acknowledged before the
//! call, or one in flight during it, and none submitted after it returned
//! (`basalt-bench stamp-write` / `stamp-check`).

use std::process::Command;
use std::time::Duration;

use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::procs::bin;

#[test]
fn a_snapshot_holds_exactly_the_writes_acknowledged_before_its_point() {
    let root = tempfile::Builder::new()
        .prefix("basalt-pit-")
        .tempdir()
        .unwrap();
    let c = ManagedCluster::start(root.path(), 3).unwrap();
    c.cli_json(&["volume", "create", "v", "--size", "64M"])
        .unwrap();
    let a = c
        .cli_json(&["volume", "attach", "v", "--node", "node1"])
        .unwrap();
    let socket = a["attachment"]["socket_path"].as_str().unwrap().to_owned();
    let cmd = c.cli_cmdline("snapshot create v --name pit").unwrap();
    let log = root.path().join("stamp.json");
    let out = Command::new(bin("basalt-bench").unwrap())
        .args([
            "stamp-write",
            "--socket",
            &socket,
            "--span",
            "64M",
            "--qd",
            "32",
        ])
        .args(["--seconds", "4", "--at-secs", "2", "--cmd", &cmd, "--log"])
        .arg(&log)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stamp-write failed: {stderr}");
    let figures: serde_json::Value = serde_json::from_slice(&std::fs::read(&log).unwrap()).unwrap();
    let f = &figures["figures"];
    assert!(
        f["in_flight_during_cmd"].as_u64().unwrap() > 0,
        "no write was in flight during the snapshot call: {f}"
    );
    println!(
        "FIGURE point in time: {} writes at QD32 ({} IOPS); longest write in flight during CreateSnapshot {} us, median {} us",
        f["writes"], f["iops"], f["max_lat_during_cmd_us"], f["lat_p50_us"]
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let s = loop {
        let s = c.cli_json(&["snapshot", "show", "pit"]).unwrap();
        if s["state"] != "CREATING" || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(s["state"], "COMPLETE", "{s}");
    c.cli_json(&["volume", "create", "r", "--from-snapshot", "pit"])
        .unwrap();
    let r = c
        .cli_json(&["volume", "attach", "r", "--node", "node1"])
        .unwrap();
    let out = Command::new(bin("basalt-bench").unwrap())
        .args(["stamp-check", "--socket"])
        .arg(r["attachment"]["socket_path"].as_str().unwrap())
        .args(["--span", "64M", "--log"])
        .arg(&log)
        .output()
        .unwrap();
    let result = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the restored volume is not the image at the snapshot point:\n{result}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(r["violations"], 0);
    assert_eq!(r["blocks"], 16384);
    println!(
        "FIGURE point in time: {} blocks checked, {} hold the last write acknowledged before the call, {} an in-flight one, 0 violations",
        r["blocks"], r["latest_acked_before_start"], r["in_flight"]
    );
}
