//! Restore with fallback between two real S3 servers (s3s-fs on loopback):
//! a volume restored from a `duplicate` snapshot keeps reading, never an
//! error, while one server is first slowed by a fault proxy and then killed
//! in the middle of the hydration. Also: adding S3 destinations with wrong
//! credentials or an unreachable endpoint is refused with the reason.
//!
//! Needs `s3s-fs` (`scripts/setup.sh`): skipped loudly when missing, a
//! failure when `CI` is set.

use std::path::Path;
use std::time::{Duration, Instant};

use basalt_snapshot::testing::{s3_server_or_skip, ACCESS_KEY_ID, SECRET_ACCESS_KEY};
use basalt_snapshot::Destination;
use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::faultproxy::FaultProxy;
use basalt_tests::snaps::{attach, noise, secret_file, snapshot, MIB};

const DATA: usize = 24 * MIB;
const BLOCK: usize = 512 << 10;

fn creds_file(dir: &Path, name: &str, secret: &str) -> String {
    secret_file(
        dir,
        name,
        &format!("access_key_id = {ACCESS_KEY_ID}\nsecret_access_key = {secret}\n"),
    )
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[test]
fn duplicate_survives_a_slow_then_dead_s3_server() {
    let Some(s3a) = s3_server_or_skip("duplicate_survives_a_slow_then_dead_s3_server") else {
        return;
    };
    let Some(s3b) = s3_server_or_skip("duplicate_survives_a_slow_then_dead_s3_server") else {
        return;
    };
    let root = tempfile::Builder::new()
        .prefix("basalt-fallback-")
        .tempdir()
        .unwrap();
    let good = creds_file(root.path(), "good", SECRET_ACCESS_KEY);
    let wrong = creds_file(root.path(), "wrong", "not-the-secret");
    // Both are reached through proxies the test can slow down.
    let via = |srv: &basalt_snapshot::testing::S3Server| {
        let p =
            FaultProxy::start(srv.endpoint.trim_start_matches("http://").parse().unwrap()).unwrap();
        let e = format!("http://{}", p.addr());
        (p, e)
    };
    let (proxy, a_endpoint) = via(&s3a);
    let (proxy_b, b_endpoint) = via(&s3b);
    // A slow background hydration: most blocks are read on demand, while
    // the servers misbehave.
    let args = vec!["--hydration-rate-mib".to_owned(), "2".to_owned()];
    let c = ManagedCluster::start_with_control_args(root.path(), 3, &args).unwrap();

    let add = |name: &str, endpoint: &str, bucket: &str, creds: &str| {
        c.cli(&[
            "destination",
            "add",
            name,
            "--type",
            "s3",
            "--bucket",
            bucket,
            "--prefix",
            "backups",
            "--endpoint",
            endpoint,
            "--allow-http",
            "--credentials-file",
            creds,
        ])
        .unwrap()
    };
    // Refusals name the cause and add nothing.
    let (ok, _, err) = add("x1", &s3b.endpoint, &s3b.bucket, &wrong);
    assert!(!ok && err.contains("credentials"), "wrong secret: {err}");
    // (A missing bucket is not checked here: s3s-fs creates one on the
    // first write. The message for real S3's NoSuchBucket is unit-tested in
    // the snapshot crate.)
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (ok, _, err) = add("x3", &dead, &s3b.bucket, &good);
    assert!(
        !ok && err.contains("cannot be reached"),
        "unreachable endpoint: {err}"
    );
    let list = c.cli_json(&["destination", "list"]).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "only `local`: {list}");
    // The secret never appears in what the CLI prints.
    assert!(!err.contains(SECRET_ACCESS_KEY));

    let (ok, _, err) = add("s3a", &a_endpoint, &s3a.bucket, &good);
    assert!(ok, "{err}");
    let (ok, _, err) = add("s3b", &b_endpoint, &s3b.bucket, &good);
    assert!(ok, "{err}");
    let shown = c.cli_json(&["destination", "show", "s3a"]).unwrap();
    assert_eq!(shown["health"], "OK", "{shown}");
    assert!(!shown.to_string().contains(SECRET_ACCESS_KEY));

    c.cli_json(&["volume", "create", "v", "--size", "64M"])
        .unwrap();
    let mut blk = attach(&c, "v");
    let data = noise(7, DATA);
    blk.write_at(0, &data).unwrap();
    blk.flush().unwrap();
    c.cli_json(&[
        "volume",
        "backup",
        "v",
        "--layout",
        "duplicate",
        "--destination",
        "s3a",
        "--destination",
        "s3b",
    ])
    .unwrap();
    let s = snapshot(&c, "v.s1").unwrap();
    assert_eq!(s["state"], "COMPLETE", "{s}");
    let id = s["id"].as_u64().unwrap();
    // Both buckets hold the whole snapshot.
    for (srv, endpoint) in [(&s3a, a_endpoint.as_str()), (&s3b, b_endpoint.as_str())] {
        let mut spec = srv.spec_for(&format!("{}/backups", srv.bucket));
        spec.endpoint = endpoint.to_owned();
        let d = Destination::open(&spec).unwrap();
        let m = c.rt.block_on(d.get_manifest(id)).expect("manifest in both");
        assert_eq!(m.blocks.len(), DATA / BLOCK);
        for chunk in m.blocks.values() {
            assert!(c.rt.block_on(d.has_chunk(chunk)).unwrap());
        }
    }

    let blocks = DATA / BLOCK;
    let restore = |vol: &str| {
        let v = c
            .cli_json(&["volume", "create", vol, "--from-snapshot", "v.s1"])
            .unwrap();
        assert_eq!(v["state"], "AVAILABLE", "{v}");
        attach(&c, vol)
    };
    let read_block = |r: &mut basalt_tests::blk::Blk, i: usize| -> Duration {
        let mut buf = vec![0u8; BLOCK];
        let t = Instant::now();
        r.read_at((i * BLOCK) as u64, &mut buf)
            .unwrap_or_else(|e| panic!("read of block {i} failed: {e}"));
        let took = t.elapsed();
        assert!(buf == data[i * BLOCK..(i + 1) * BLOCK], "block {i} differs");
        took
    };
    let report = |vol: &str| -> serde_json::Value {
        let v = c
            .wait_volume(vol, Duration::from_secs(180), |v| {
                v["hydration"]["complete"] == true
            })
            .expect("hydration completes");
        eprintln!("hydration report of {vol}: {}", v["hydration"]);
        v["hydration"].clone()
    };
    let src = |h: &serde_json::Value, n: &str, what: &str| -> u64 {
        h["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["destination"] == n)
            .unwrap_or_else(|| panic!("no source {n}: {h}"))[what]
            .as_u64()
            .unwrap()
    };

    // Slow: s3a is first in the set; every read through the proxy waits
    // 300 ms, so its answers come late and reads are hedged to s3b.
    let mut r1 = restore("r1");
    proxy.set_delay(Duration::from_millis(300));
    let mut slow: Vec<Duration> = (0..blocks / 2).map(|i| read_block(&mut r1, i)).collect();
    proxy.set_delay(Duration::ZERO);
    let mut fast: Vec<Duration> = (blocks / 2..blocks)
        .map(|i| read_block(&mut r1, i))
        .collect();
    let h1 = report("r1");
    assert!(
        h1["hedges"].as_u64().unwrap() >= 1,
        "slow s3a was hedged: {h1}"
    );
    assert!(src(&h1, "s3b", "served") >= 1, "{h1}");

    // Dead: a second restore (fresh statistics) reads from s3a (s3b is
    // slowed meanwhile, so s3a stays the preferred one) until s3a is killed
    // in the middle of the hydration; every read after that is served by
    // s3b, never an error.
    let mut r2 = restore("r2");
    proxy_b.set_delay(Duration::from_millis(300));
    let mut healthy: Vec<Duration> = (0..blocks / 3).map(|i| read_block(&mut r2, i)).collect();
    drop(s3a);
    proxy_b.set_delay(Duration::ZERO);
    let mut dead: Vec<Duration> = (blocks / 3..blocks)
        .map(|i| read_block(&mut r2, i))
        .collect();
    let h2 = report("r2");
    assert!(
        src(&h2, "s3a", "served") >= 1,
        "s3a served before it died: {h2}"
    );
    assert!(src(&h2, "s3b", "served") >= 1, "s3b served after: {h2}");
    assert!(h2["fallbacks"].as_u64().unwrap() >= 1, "{h2}");
    eprintln!(
        "read latency of a cold 512 KiB block (median / max): s3a slowed {:?} / {:?}; \
         after the slowdown {:?} / {:?}; s3b slowed {:?} / {:?}; s3a killed {:?} / {:?}",
        median(&mut slow),
        slow.iter().max().unwrap(),
        median(&mut fast),
        fast.iter().max().unwrap(),
        median(&mut healthy),
        healthy.iter().max().unwrap(),
        median(&mut dead),
        dead.iter().max().unwrap()
    );
    // Every block of both volumes, once more, now that they are local.
    for i in 0..blocks {
        read_block(&mut r1, i);
        read_block(&mut r2, i);
    }
}
