//! Minimal mirrors (seed 001): a new mirror is seeded from the volume's
//! latest snapshot, loaded from the destination, and the primary sends only
//! the blocks written since; measured against a full copy, side by side.

use std::time::{Duration, Instant};

use basalt_auth::Credentials;
use basalt_tests::blk::Blk;
use basalt_tests::cluster::{assert_identical, Admin};
use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::snaps::{noise, MIB};

fn server_index(id: &str) -> usize {
    id[1..].parse::<usize>().unwrap() - 1
}

/// Bytes the primary has sent to fill mirrors (full and seeded copies).
fn resync_bytes(c: &ManagedCluster, server: &str, vol: u64) -> u64 {
    let addr = format!(
        "127.0.0.1:{}",
        c.base + 11 + 2 * server_index(server) as u16
    );
    // As the cluster's control service (its credentials, from its state
    // directory): the only caller the admin API accepts.
    let control = Credentials::load(&c.root.join("control").join("tls")).unwrap();
    let mut a = Admin::connect_with(addr.parse().unwrap(), server, &control).unwrap();
    a.describe(vol).unwrap().resync_bytes
}

/// Waits until the volume has two copies again, the mirror not in `gone`.
fn wait_remirrored(c: &ManagedCluster, gone: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = c.cli_json(&["volume", "show", "v"]).unwrap();
        let m = v["mirrors"][0]["server_id"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if !m.is_empty() && !gone.contains(&m.as_str()) {
            return v;
        }
        assert!(Instant::now() < deadline, "never re-mirrored: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn copy_file(c: &ManagedCluster, server: &str, vol: u64) -> std::path::PathBuf {
    c.server_data_dir(server_index(server))
        .join("copies")
        .join(vol.to_string())
        .join("data")
}

#[test]
fn a_new_mirror_seeded_from_a_snapshot_reads_only_the_changes_from_the_primary() {
    let root = tempfile::Builder::new()
        .prefix("basalt-seed-")
        .tempdir()
        .unwrap();
    let mut c = ManagedCluster::start(root.path(), 4).unwrap();
    let v = c
        .cli_json(&["volume", "create", "v", "--size", "64M"])
        .unwrap();
    let id = v["id"].as_u64().unwrap();
    let primary = v["primary"]["server_id"].as_str().unwrap().to_owned();
    let a = c
        .cli_json(&["volume", "attach", "v", "--node", "node1"])
        .unwrap();
    let mut b = Blk::open(std::path::Path::new(
        a["attachment"]["socket_path"].as_str().unwrap(),
    ))
    .unwrap();
    b.write_at(0, &noise(1, 32 * MIB)).unwrap();
    b.flush().unwrap();

    // Without a snapshot: the new mirror is a full copy from the primary.
    let m1 = v["mirrors"][0]["server_id"].as_str().unwrap().to_owned();
    let before = resync_bytes(&c, &primary, id);
    c.servers[server_index(&m1)].kill9();
    let v = wait_remirrored(&c, &[&m1]);
    assert_eq!(v["primary"]["server_id"], primary.as_str());
    let full = resync_bytes(&c, &primary, id) - before;
    let m2 = v["mirrors"][0]["server_id"].as_str().unwrap().to_owned();

    // With one: snapshot, change 1 MiB, lose the mirror again.
    let (ok, _, err) = c
        .cli(&["snapshot", "create", "v", "--name", "s", "--wait"])
        .unwrap();
    assert!(ok, "{err}");
    b.write_at(40 << 20, &noise(2, MIB)).unwrap();
    b.flush().unwrap();
    let before = resync_bytes(&c, &primary, id);
    c.servers[server_index(&m2)].kill9();
    let v = wait_remirrored(&c, &[&m1, &m2]);
    let seeded = resync_bytes(&c, &primary, id) - before;
    let m3 = v["mirrors"][0]["server_id"].as_str().unwrap().to_owned();
    println!(
        "FIGURE new mirror of a volume holding 33 MiB: full copy read {full} bytes from the primary; seeded from a snapshot + 1 MiB changed since: {seeded} bytes"
    );
    if seeded > 2 * MIB as u64 {
        c.dump_logs(40);
    }
    assert!(
        full >= 32 * MIB as u64,
        "a full copy sends all the data: {full}"
    );
    assert!(
        seeded <= 2 * MIB as u64,
        "a seeded mirror needs only the changes: {seeded}"
    );
    // The seeded mirror holds exactly the primary's data.
    b.flush().unwrap();
    let n = assert_identical(&copy_file(&c, &primary, id), &copy_file(&c, &m3, id)).unwrap();
    assert_eq!(n, 64 * MIB as u64);
    let mut got = vec![0u8; MIB];
    b.read_at(40 << 20, &mut got).unwrap();
    assert!(got == noise(2, MIB));
}
