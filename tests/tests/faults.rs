//! Fault injection under a real guest: a QEMU guest runs fio with crc32c
//! verification (verify_backlog, serialize_overlap) in a loop while faults
//! are injected one at a time, then at random. Each fault is healed after a
//! settle period and the volume must get back to two in-sync copies. The
//! guest script fails on any I/O error or verify failure; at the end all
//! in-sync copies must be byte-identical.
//!
//! `BASALT_SOAK_SECS=N` keeps injecting random faults for N seconds after
//! the one-at-a-time pass (`BASALT_SOAK_SEED` picks the order); without it,
//! two random faults follow the pass (the CI version).

use std::time::{Duration, Instant};

use basalt_tests::cluster::assert_identical;
use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::faults::{self, Fault, FaultRecord, Lcg, Rounds};
use basalt_tests::guest::{self, GuestConfig};

const GUEST_SCRIPT: &str = r#"set -e
i=0
while [ ! -e /tmp/stop ]; do
  i=$((i+1))
  echo "round $i start"
  fio --name=r$i --filename=/dev/vda --direct=1 --ioengine=libaio --rw=randwrite --bs=4k --iodepth=16 --offset=64M --size=32M --verify_backlog=256 --serialize_overlap=1 --verify=crc32c --verify_fatal=1 --eta=never --output=/tmp/fio.out || { cat /tmp/fio.out; exit 3; }
  grep -q "err= 0" /tmp/fio.out || { cat /tmp/fio.out; exit 4; }
  grep -E "clat \(" /tmp/fio.out
  echo "round $i ok"
  if [ "$(cat /sys/block/vda/size)" != 524288 ]; then touch /tmp/stop; fi
done
echo "rounds=$i"
"#;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Bytes sent by full copies and by delta resyncs, from every storage
/// server's log (counters in the servers restart with them).
fn resync_bytes(c: &ManagedCluster) -> (u64, u64) {
    let (mut full, mut delta) = (0, 0);
    for s in &c.servers {
        let text = std::fs::read_to_string(&s.log).unwrap_or_default();
        for line in text.lines().map(strip_ansi) {
            if !line.contains("done: mirror is in sync") {
                continue;
            }
            let bytes = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("bytes="))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            if line.contains("delta resync done") {
                delta += bytes;
            } else {
                full += bytes;
            }
        }
    }
    (full, delta)
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

#[test]
fn faults_under_a_guest_lose_nothing_and_stall_briefly() {
    assert!(
        guest::qemu_available(),
        "qemu-system-x86_64 is required: run scripts/setup.sh"
    );
    let image = guest::ensure_image().unwrap();
    let root = tempfile::Builder::new()
        .prefix("basalt-faults-")
        .tempdir()
        .unwrap();
    let mut c = ManagedCluster::start_proxied(root.path(), 3).unwrap();
    let v = c
        .cli_json(&["volume", "create", "soak", "--size", "256M"])
        .unwrap();
    let id = v["id"].as_u64().unwrap();
    let a = c
        .cli_json(&["volume", "attach", "soak", "--node", "node1"])
        .unwrap();
    let socket = a["attachment"]["socket_path"].as_str().unwrap().to_owned();

    let soak = env_u64("BASALT_SOAK_SECS").map(Duration::from_secs);
    let seed = env_u64("BASALT_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    println!("fault suite: soak {soak:?}, seed {seed} (BASALT_SOAK_SEED to repeat)");
    let rounds = Rounds::default();
    let mut records: Vec<FaultRecord> = Vec::new();
    let guest_timeout = Duration::from_secs(900) + soak.unwrap_or_default();

    let run = std::thread::scope(|s| {
        let feed = rounds.clone();
        let guest = s.spawn(move || {
            let mut cfg = GuestConfig::new(&socket);
            // QEMU reconnects to a restarted backend.
            cfg.reconnect = true;
            image.run_watching(
                &cfg,
                GUEST_SCRIPT,
                guest_timeout,
                &mut |line| feed.on_line(line),
            )
        });
        let outcome = (|| -> anyhow::Result<()> {
            faults::wait_rounds(&rounds, 1, Duration::from_secs(300))?;
            let mut rng = Lcg(seed);
            let started = Instant::now();
            let mut plan: Vec<Fault> = faults::ALL.to_vec();
            if soak.is_none() {
                plan.push(rng.pick());
                plan.push(rng.pick());
            }
            let mut k = 0;
            loop {
                let f = match plan.get(k) {
                    Some(f) => *f,
                    None if soak.is_some_and(|d| started.elapsed() < d) => rng.pick(),
                    None => break,
                };
                k += 1;
                // Steady state first: a whole fio round since the last fault;
                // then the fault lands inside the next round.
                let done = rounds.finished();
                faults::wait_rounds(&rounds, done + 1, Duration::from_secs(120))?;
                faults::wait_mid_round(&rounds, done + 1, Duration::from_millis(500), Duration::from_secs(120))?;
                let (failed_over, healthy, t0) = faults::inject(&mut c, "soak", f)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", f.name()))?;
                // The rounds running during the fault must finish to be counted.
                let done = rounds.finished();
                faults::wait_rounds(&rounds, done + 1, Duration::from_secs(120))?;
                let stall_ms = rounds.stall_ms(t0, t0 + healthy);
                println!(
                    "FAULT {k} {}: failover visible after {}, healthy again after {:.1}s, longest guest I/O completion {stall_ms:.0} ms",
                    f.name(),
                    failed_over.map_or("- (none needed)".to_owned(), |d| format!("{} ms", d.as_millis())),
                    healthy.as_secs_f64(),
                );
                records.push(FaultRecord {
                    fault: f,
                    injected: t0,
                    failed_over,
                    healthy,
                    stall_ms,
                });
            }
            Ok(())
        })();
        if let Err(e) = &outcome {
            eprintln!("fault suite failed: {e:#}");
        }
        // Whatever happened, let the guest stop: it exits when it sees the
        // disk grow (retried: the volume may be busy healing).
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Err(e) = c.cli_json(&["volume", "resize", "soak", "--size", "260M"]) {
            if Instant::now() > deadline {
                eprintln!("cannot stop the guest by resizing: {e:#}");
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let run = guest.join().expect("guest thread");
        if let Err(e) = &outcome {
            panic!("fault suite: {e:#}");
        }
        run
    })
    .unwrap();
    if let Err(e) = run.ensure_success() {
        panic!("guest: {e:#}");
    }

    let (full, delta) = resync_bytes(&c);
    let v = c.cli_json(&["volume", "show", "soak"]).unwrap();
    c.cli_json(&["volume", "detach", "soak"]).unwrap();
    let copy = |sid: &serde_json::Value| {
        let i: usize = sid.as_str().unwrap()[1..].parse::<usize>().unwrap() - 1;
        c.server_data_dir(i)
            .join("copies")
            .join(id.to_string())
            .join("data")
    };
    let n = assert_identical(
        &copy(&v["primary"]["server_id"]),
        &copy(&v["mirrors"][0]["server_id"]),
    )
    .unwrap();
    let stalls: Vec<f64> = records.iter().map(|r| r.stall_ms).collect();
    let (p50, max) = faults::p50_max(&stalls);
    let with_failover: Vec<f64> = records
        .iter()
        .filter(|r| r.failed_over.is_some())
        .map(|r| r.failed_over.unwrap_or_default().as_millis() as f64)
        .collect();
    let (fo50, fomax) = faults::p50_max(&with_failover);
    println!(
        "FIGURE fault suite: {} faults injected ({} with a failover), guest I/O errors 0, fio verify failures 0, \
         longest guest I/O completion per fault p50 {p50:.0} ms / max {max:.0} ms, failover visible in control p50 {fo50:.0} ms / max {fomax:.0} ms, \
         in-sync copies identical ({n} bytes compared), resync traffic: full copies {full} bytes, delta resyncs {delta} bytes",
        records.len(),
        with_failover.len(),
    );
    assert!(
        records.len() >= faults::ALL.len(),
        "every fault was injected"
    );
}
