//! One writer per volume, with two hosts: a guest on node1 writes with fio
//! verify; node1's node manager is stopped (SIGSTOP), so the control service
//! cannot stop node1's backend; the volume is force-attached to node2, where
//! a second guest writes a known pattern. From then on node1's backend gets
//! only errors (its guest sees EIO: correct for a fenced VM), even though it
//! asks the control service for the layout and retries; and the pattern
//! written through node2 is intact afterwards, on every copy.
//!
//! Before attachment fencing, node1's backend got StaleEpoch, asked the
//! control service, was handed the new epoch and went on writing: two VMs
//! wrote one volume.

use std::time::{Duration, Instant};

use basalt_tests::cluster::assert_identical;
use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::guest::{self, wait_line, GuestConfig, Lines};

/// node1's guest: fio verify rounds until told to stop through a second
/// (plain virtio-blk) disk the host writes "STOP" into; then probes that
/// write and read the region node2's pattern lives in.
const NODE1_SCRIPT: &str = r#"set -u
i=0
failed=0
while :; do
  i=$((i+1))
  echo "round $i start"
  if fio --name=r$i --filename=/dev/vda --direct=1 --ioengine=libaio --rw=randwrite --bs=4k --iodepth=16 --offset=64M --size=16M --verify_backlog=256 --serialize_overlap=1 --verify=crc32c --verify_fatal=1 --eta=never --output=/tmp/fio.out && grep -q "err= 0" /tmp/fio.out; then
    echo "round $i ok"
  else
    echo "round $i failed"
    failed=$((failed+1))
  fi
  if dd if=/dev/vdb bs=4096 count=1 iflag=direct 2>/dev/null | grep -q STOP; then break; fi
  if [ $i -ge 2000 ]; then echo "never told to stop"; exit 5; fi
done
for k in 1 2 3 4; do
  off=$((16384 + k * 7))
  if dd if=/dev/zero of=/dev/vda bs=4096 count=1 seek=$off oflag=direct conv=fsync 2>/dev/null; then echo "PROBE write $k ok"; else echo "PROBE write $k failed"; fi
  if dd if=/dev/vda of=/dev/null bs=4096 count=1 skip=$off iflag=direct 2>/dev/null; then echo "PROBE read $k ok"; else echo "PROBE read $k failed"; fi
done
echo "rounds=$i failed=$failed"
"#;

/// The pattern node2's guest writes at 64 MiB (inside node1's fio region).
const PATTERN_LINE: &str = "basalt-node2-pattern-0123456789";
const PATTERN_AT: u64 = 64 << 20;
const PATTERN_LEN: usize = 8 << 20;

fn pattern() -> Vec<u8> {
    let line = format!("{PATTERN_LINE}\n");
    line.bytes().cycle().take(PATTERN_LEN).collect()
}

const NODE2_WRITE: &str = r#"set -e
yes basalt-node2-pattern-0123456789 | head -c 8388608 > /tmp/p
dd if=/tmp/p of=/dev/vda bs=1M seek=64 oflag=direct conv=fsync 2>/dev/null
dd if=/dev/vda bs=1M skip=64 count=8 iflag=direct 2>/dev/null | cmp - /tmp/p
echo "PATTERN written"
"#;

const NODE2_CHECK: &str = r#"set -e
yes basalt-node2-pattern-0123456789 | head -c 8388608 > /tmp/p
dd if=/dev/vda bs=1M skip=64 count=8 iflag=direct 2>/dev/null | cmp - /tmp/p
echo "PATTERN intact"
"#;

#[test]
fn a_forced_attach_fences_the_old_host_for_good() {
    assert!(
        guest::qemu_available(),
        "qemu-system-x86_64 is required: run scripts/setup.sh"
    );
    let image = guest::ensure_image().unwrap();
    let root = tempfile::Builder::new()
        .prefix("basalt-fencing-")
        .tempdir()
        .unwrap();
    let mut c = ManagedCluster::start(root.path(), 3).unwrap();
    let mut node2 = c.add_node2().unwrap();
    let v = c
        .cli_json(&["volume", "create", "shared", "--size", "128M"])
        .unwrap();
    let id = v["id"].as_u64().unwrap();
    let a1 = c
        .cli_json(&["volume", "attach", "shared", "--node", "node1"])
        .unwrap();
    let socket1 = a1["attachment"]["socket_path"].as_str().unwrap().to_owned();
    let backend1 = c.backend_pids().unwrap();
    assert_eq!(backend1.len(), 1, "one backend on node1");

    // The host's side of node1's guest's stop signal.
    let stop_img = root.path().join("stop.img");
    std::fs::write(&stop_img, vec![0u8; 4096]).unwrap();
    let lines: Lines = Lines::default();

    let outcome = std::thread::scope(|s| {
        let seen = lines.clone();
        let img = image.clone();
        let stop_arg = format!("file={},if=none,id=ctl,format=raw", stop_img.display());
        let guest1 = s.spawn(move || {
            let mut cfg = GuestConfig::new(&socket1);
            cfg.extra_args = vec![
                "-drive".into(),
                stop_arg,
                "-device".into(),
                "virtio-blk-pci,drive=ctl".into(),
            ];
            img.run_watching(&cfg, NODE1_SCRIPT, Duration::from_secs(600), &mut |l| {
                seen.lock().unwrap().push((Instant::now(), l.to_owned()));
            })
        });
        let result = (|| -> anyhow::Result<(Instant, String, String)> {
            // Steady state: node1's guest has verified a whole round.
            wait_line(&lines, &guest1, "round 1 ok", Duration::from_secs(300))?;
            // node1's host stops answering: its node manager is frozen, its
            // backend (its own process) keeps running.
            c.node.signal(libc::SIGSTOP);
            let (ok, out, err) =
                c.cli(&["volume", "attach", "shared", "--node", "node2", "--force"])?;
            anyhow::ensure!(ok, "forced attach failed: {err}");
            let fenced_at = Instant::now();
            println!("forced attach to node2: {}", out.trim());
            let a2 = c.cli_json(&["volume", "show", "shared"])?;
            let socket2 = a2["attachment"]["socket_path"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            anyhow::ensure!(
                a2["attachment"]["node_id"] == "node2",
                "attached to node2: {a2}"
            );
            // node1's backend survived the forced attach.
            for pid in &backend1 {
                anyhow::ensure!(
                    std::path::Path::new(&format!("/proc/{pid}")).exists(),
                    "node1's backend {pid} was stopped: the test needs it alive"
                );
            }
            // node2's guest writes the pattern over node1's fio region.
            let run = image.run_with(
                &GuestConfig::new(&socket2),
                NODE2_WRITE,
                Duration::from_secs(300),
            )?;
            run.ensure_success()?;
            anyhow::ensure!(run.output.contains("PATTERN written"), "{}", run.output);
            // Now node1's guest may try again: its probes run after the
            // pattern is in place.
            let mut f = std::fs::OpenOptions::new().write(true).open(&stop_img)?;
            std::io::Write::write_all(&mut f, b"STOP")?;
            f.sync_all()?;
            Ok((fenced_at, socket2, run.output))
        })();
        let run1 = match &result {
            Ok(_) => guest1.join().expect("guest thread"),
            Err(_) => {
                // Let node1's guest stop, whatever happened.
                let _ = std::fs::write(&stop_img, b"STOP");
                guest1.join().expect("guest thread")
            }
        };
        (result, run1)
    });
    c.node.signal(libc::SIGCONT);
    let (result, run1) = outcome;
    let (fenced_at, socket2, _) = match result {
        Ok(r) => r,
        Err(e) => panic!("fencing test: {e:#}"),
    };
    let run1 = run1.unwrap();
    println!(
        "node1's guest: {}",
        run1.output.lines().last().unwrap_or("")
    );
    assert_eq!(run1.status, 0, "node1's guest: {}", run1.output);

    // From the forced attach on, node1's guest saw only errors.
    let seen = lines.lock().unwrap().clone();
    let mut after = 0;
    let mut started_after: Vec<String> = Vec::new();
    for (at, l) in &seen {
        if *at > fenced_at {
            if let Some(n) = l
                .strip_prefix("round ")
                .and_then(|r| r.strip_suffix(" start"))
            {
                started_after.push(n.to_owned());
            }
        }
    }
    for n in &started_after {
        let ok = format!("round {n} ok");
        assert!(
            !seen.iter().any(|(_, l)| *l == ok),
            "round {n} of node1's guest started after the forced attach and succeeded"
        );
        after += 1;
    }
    let probes: Vec<&String> = seen
        .iter()
        .map(|(_, l)| l)
        .filter(|l| l.starts_with("PROBE"))
        .collect();
    assert_eq!(probes.len(), 8, "{probes:?}");
    assert!(
        probes.iter().all(|l| l.ends_with("failed")),
        "node1's fenced guest completed I/O: {probes:?}"
    );
    println!(
        "FIGURE fencing: node1's guest ran {after} fio rounds after the forced attach, all failed; 8/8 probes failed"
    );

    // The pattern written through node2 is intact, read through node2...
    let run = image
        .run_with(
            &GuestConfig::new(&socket2),
            NODE2_CHECK,
            Duration::from_secs(300),
        )
        .unwrap();
    assert!(
        run.status == 0 && run.output.contains("PATTERN intact"),
        "{}",
        run.output
    );
    // ...and on every copy, which are identical.
    let v = c.cli_json(&["volume", "show", "shared"]).unwrap();
    c.cli_json(&["volume", "detach", "shared"]).unwrap();
    let copy = |sid: &serde_json::Value| {
        let i: usize = sid.as_str().unwrap()[1..].parse::<usize>().unwrap() - 1;
        c.server_data_dir(i)
            .join("copies")
            .join(id.to_string())
            .join("data")
    };
    let (p, m) = (
        copy(&v["primary"]["server_id"]),
        copy(&v["mirrors"][0]["server_id"]),
    );
    let want = pattern();
    for f in [&p, &m] {
        let data = std::fs::read(f).unwrap();
        assert!(
            data[PATTERN_AT as usize..PATTERN_AT as usize + PATTERN_LEN] == want[..],
            "pattern damaged on {}",
            f.display()
        );
    }
    assert_identical(&p, &m).unwrap();
    node2.kill9();
}
