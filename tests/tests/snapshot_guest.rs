//! A snapshot of a real guest's ext4 filesystem, taken while the guest keeps
//! writing, restored into a new volume that a second guest uses at once.

use std::io::Write;
use std::time::{Duration, Instant};

use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::guest::{self, wait_line, GuestConfig, Lines};

/// Guest A: files with recorded checksums, fsfreeze for the snapshot, then
/// overwrites of those files and verifying fio rounds while it uploads,
/// until the host writes DONE into the mailbox disk (/dev/vdb).
const GUEST_A: &str = r#"set -u
mkfs.ext4 -q -F /dev/vda && mount /dev/vda /mnt || exit 2
i=0
while [ $i -lt 16 ]; do i=$((i+1)); dd if=/dev/urandom of=/mnt/f$i bs=64k count=$((i*3)) 2>/dev/null || exit 3; done
mkdir /mnt/dir && echo hello > /mnt/dir/hello
(cd /mnt && sha256sum f* dir/hello > /mnt/SUMS) || exit 3
sync
fsfreeze --freeze /mnt || exit 4
echo BASALT-STEP frozen
n=0
until dd if=/dev/vdb bs=4096 count=1 iflag=direct 2>/dev/null | grep -q SNAP; do n=$((n+1)); [ $n -lt 3000 ] || exit 5; sleep 0.1; done
fsfreeze --unfreeze /mnt
echo BASALT-STEP thawed
for f in 1 2 3 4 5 6 7 8; do dd if=/dev/urandom of=/mnt/f$f bs=64k count=3 conv=notrunc,fsync 2>/dev/null || exit 6; done
echo BASALT-STEP overwritten
r=0
while :; do
  r=$((r+1))
  echo "round $r start"
  fio --name=r$r --filename=/mnt/fio.dat --size=16M --direct=1 --ioengine=libaio --rw=randwrite --bs=4k --iodepth=16 --verify=crc32c --verify_fatal=1 --eta=never --output=/tmp/fio.out && grep -q "err= 0" /tmp/fio.out || { cat /tmp/fio.out; exit 7; }
  echo "round $r ok"
  dd if=/dev/vdb bs=4096 count=1 iflag=direct 2>/dev/null | grep -q DONE && break
  [ $r -lt 500 ] || exit 8
done
umount /mnt || exit 9
echo "guest-a-done rounds=$r"
"#;

/// Guest B: the restored filesystem checks clean and holds the files as
/// they were at the snapshot.
const GUEST_B: &str = r#"set -u
e2fsck -fn /dev/vda > /tmp/fsck.out 2>&1
rc=$?
cat /tmp/fsck.out
echo "fsck rc=$rc"
mount /dev/vda /mnt || exit 2
cd /mnt && sha256sum -c SUMS > /tmp/sums.out 2>&1
rc=$?
cat /tmp/sums.out
echo "sums rc=$rc"
cd / && umount /mnt
echo guest-b-done
"#;

fn mailbox(path: &std::path::Path, word: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(word).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn a_guest_filesystem_snapshot_taken_while_it_writes_restores_at_once() {
    assert!(
        guest::qemu_available(),
        "qemu-system-x86_64 is required: run scripts/setup.sh"
    );
    let image = guest::ensure_image().unwrap();
    let root = tempfile::Builder::new()
        .prefix("basalt-snapg-")
        .tempdir()
        .unwrap();
    let args: Vec<String> = ["--snapshot-rate-mib", "8", "--hydration-rate-mib", "2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let c = ManagedCluster::start_with_control_args(root.path(), 3, &args).unwrap();
    c.cli_json(&["volume", "create", "a", "--size", "256M"])
        .unwrap();
    let a = c
        .cli_json(&["volume", "attach", "a", "--node", "node1"])
        .unwrap();
    let socket_a = a["attachment"]["socket_path"].as_str().unwrap().to_owned();
    let mbox = root.path().join("mailbox.img");
    std::fs::write(&mbox, vec![0u8; 1 << 20]).unwrap();

    let lines: Lines = Lines::default();
    let (snap, run_a) = std::thread::scope(|s| {
        let seen = lines.clone();
        let img = image.clone();
        let mbox_arg = format!("file={},if=none,id=ctl,format=raw", mbox.display());
        let socket = socket_a.clone();
        let guest_a = s.spawn(move || {
            let mut cfg = GuestConfig::new(&socket);
            cfg.extra_args = vec![
                "-drive".into(),
                mbox_arg,
                "-device".into(),
                "virtio-blk-pci,drive=ctl".into(),
            ];
            img.run_watching(&cfg, GUEST_A, Duration::from_secs(900), &mut |l| {
                seen.lock().unwrap().push((Instant::now(), l.to_owned()));
            })
        });
        let snap = (|| -> anyhow::Result<(serde_json::Value, Instant, Instant)> {
            wait_line(
                &lines,
                &guest_a,
                "BASALT-STEP frozen",
                Duration::from_secs(600),
            )?;
            let (ok, out, err) = c.cli(&["snapshot", "create", "a", "--name", "a.snap"])?;
            anyhow::ensure!(ok, "snapshot create: {err}");
            println!("snapshot create: {}", out.trim());
            mailbox(&mbox, b"SNAP");
            let thawed = Instant::now();
            // The guest overwrites snapshotted files and runs fio while the
            // snapshot uploads at 8 MiB/s.
            let deadline = Instant::now() + Duration::from_secs(300);
            let s = loop {
                let s = c.cli_json(&["snapshot", "show", "a.snap"])?;
                if s["state"] != "CREATING" {
                    break s;
                }
                anyhow::ensure!(Instant::now() < deadline, "snapshot never finished: {s}");
                std::thread::sleep(Duration::from_millis(100));
            };
            let done = Instant::now();
            mailbox(&mbox, b"DONE");
            Ok((s, thawed, done))
        })();
        if snap.is_err() {
            mailbox(&mbox, b"SNAP DONE");
        }
        (snap, guest_a.join().expect("guest thread"))
    });
    let run_a = run_a.unwrap();
    run_a.ensure_success().unwrap();
    assert!(run_a.output.contains("guest-a-done"), "{}", run_a.output);
    let (snap, thawed, done) = snap.unwrap();
    assert_eq!(snap["state"], "COMPLETE", "{snap}");
    let cow = snap["progress"]["cow_blocks"].as_u64().unwrap();
    assert!(
        cow > 0,
        "the guest's overwrites should have raced the upload: {snap}"
    );
    let lines = lines.lock().unwrap().clone();
    let wrote_during = lines
        .iter()
        .filter(|(t, l)| {
            *t > thawed && *t < done && (l == "BASALT-STEP overwritten" || l.ends_with(" start"))
        })
        .count();
    assert!(
        wrote_during > 0,
        "the guest did not write during the upload"
    );
    println!(
        "FIGURE guest snapshot: {} blocks uploaded at 8 MiB/s, {cow} copied aside for the guest's overwrites, point {} us",
        snap["progress"]["blocks_total"], snap["progress"]["point_micros"]
    );

    // A new volume from the snapshot, attached and used at once.
    let t = Instant::now();
    let b = c
        .cli_json(&["volume", "create", "b", "--from-snapshot", "a.snap"])
        .unwrap();
    assert_eq!(b["state"], "AVAILABLE");
    let b = c
        .cli_json(&["volume", "attach", "b", "--node", "node1"])
        .unwrap();
    println!(
        "FIGURE volume from snapshot created and attached in {:?}",
        t.elapsed()
    );
    let h = c.cli_json(&["volume", "show", "b"]).unwrap();
    let (present, total) = (
        h["hydration"]["blocks_present"].as_u64().unwrap_or(0),
        h["hydration"]["blocks_total"].as_u64().unwrap_or(0),
    );
    assert!(
        present < total,
        "hydration finished before the guest started: {h}"
    );
    let run_b = image
        .run(
            std::path::Path::new(b["attachment"]["socket_path"].as_str().unwrap()),
            2,
            GUEST_B,
            Duration::from_secs(600),
        )
        .unwrap();
    run_b.ensure_success().unwrap();
    assert!(run_b.output.contains("guest-b-done"), "{}", run_b.output);
    assert!(
        run_b.output.contains("fsck rc=0"),
        "e2fsck is not clean:\n{}",
        run_b.output
    );
    assert!(
        run_b.output.contains("sums rc=0"),
        "checksums differ:\n{}",
        run_b.output
    );
    assert_eq!(run_b.output.matches(": OK").count(), 17, "{}", run_b.output);
    // Hydration completes in the background.
    let v = c.wait_volume("b", Duration::from_secs(150), |v| {
        v["hydration"]["complete"] == true
    });
    let v = v.unwrap_or_else(|e| panic!("{e:#}"));
    println!("FIGURE restored volume hydrated: {}", v["hydration"]);
}
