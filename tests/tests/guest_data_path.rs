//! End to end with real processes: three storage servers on loopback, a
//! volume with a primary and a mirror, a `basalt-vhost-blk` backend, and a
//! real QEMU guest (TCG) doing verified I/O on the virtio disk. Afterwards
//! the primary and mirror copies must be byte-identical.

use std::time::{Duration, Instant};

use basalt_tests::cluster::{
    assert_identical, create_volume, BackendOpts, BackendProc, StorageProc,
};
use basalt_tests::guest::{self, GuestConfig};

const VOL: u64 = 1;
const SIZE: u64 = 256 << 20;
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

fn require_qemu() {
    assert!(
        guest::qemu_available(),
        "qemu-system-x86_64 is required for the guest tests: run `scripts/setup.sh` (it installs it)"
    );
}

struct Cluster {
    root: tempfile::TempDir,
    servers: Vec<StorageProc>,
}

fn cluster() -> Cluster {
    let root = tempfile::Builder::new()
        .prefix("basalt-e2e-")
        .tempdir()
        .unwrap();
    let servers = ["s1", "s2", "s3"]
        .iter()
        .map(|id| StorageProc::start(root.path(), id).unwrap())
        .collect();
    Cluster { root, servers }
}

fn backend(c: &Cluster, read_only: bool) -> BackendProc {
    let o = BackendOpts {
        volume_id: VOL,
        size_bytes: SIZE,
        primary: c.servers[0].data,
        queues: 2,
        read_only,
        extra: &[],
    };
    BackendProc::start(c.root.path(), &o).unwrap()
}

/// `(job, iops)` for every fio job the script announced with `FIO <job>`.
fn fio_iops(output: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut job = String::new();
    for line in output.lines() {
        if let Some(j) = line.trim().strip_prefix("FIO ") {
            job = j.to_owned();
        } else if let Some(i) = line.find("IOPS=") {
            let v = line[i + 5..].split(',').next().unwrap_or("").to_owned();
            let kind = line.trim().split(':').next().unwrap_or("").to_owned();
            // A randwrite job's "read" line is its verify pass.
            let main = if job.starts_with("randwrite") {
                "write"
            } else {
                "read"
            };
            let label = if kind == main {
                kind
            } else {
                format!("{kind} (verify)")
            };
            out.push((format!("{job} {label}"), v));
        }
    }
    out
}

const FIO: &str =
    "fio --direct=1 --ioengine=libaio --bs=4k --numjobs=2 --offset_increment=64M --size=24M \
--verify=crc32c --verify_fatal=1 --do_verify=1 --eta=never --group_reporting \
--cpus_allowed=0-1 --cpus_allowed_policy=split --filename=/dev/vda";

#[test]
fn guest_fio_mkfs_discard_on_a_replicated_volume() {
    require_qemu();
    let image = guest::ensure_image().unwrap();
    let c = cluster();
    create_volume(VOL, SIZE, &c.servers[0], &[&c.servers[1]]).unwrap();
    let mut be = backend(&c, false);
    let script = format!(
        r#"set -e
echo "sectors=$(cat /sys/block/vda/size) queues=$(ls /sys/block/vda/mq | wc -l)"
echo "discard_max=$(cat /sys/block/vda/queue/discard_max_bytes) write_zeroes_max=$(cat /sys/block/vda/queue/write_zeroes_max_bytes)"
test "$(cat /sys/block/vda/size)" = "{sectors}"
test "$(ls /sys/block/vda/mq | wc -l)" = 2
test "$(cat /sys/block/vda/queue/write_zeroes_max_bytes)" -gt 0
for qd in 1 8 32; do
  echo "FIO randwrite-qd$qd"
  {fio} --name=randwrite-qd$qd --rw=randwrite --iodepth=$qd
done
echo "FIO randread-qd16"
{fio} --name=randread-qd16 --rw=randread --iodepth=16 --verify=0 --do_verify=0
# Discard: the range reads back as zeroes.
dd if=/dev/urandom of=/dev/vda bs=1M count=4 seek=100 oflag=direct 2>/dev/null
blkdiscard -o $((100*1048576)) -l $((4*1048576)) /dev/vda
dd if=/dev/vda bs=1M count=4 skip=100 iflag=direct 2>/dev/null | cmp -n $((4*1048576)) - /dev/zero
echo "discard ok"
# mkfs with eager zeroing issues WRITE_ZEROES for inode tables and journal.
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 /dev/vda
mkdir -p /mnt && mount /dev/vda /mnt
for i in 1 2 3 4; do dd if=/dev/urandom of=/mnt/f$i bs=1M count=8 2>/dev/null; done
sha256sum /mnt/f* > /sums
umount /mnt && mount /dev/vda /mnt && sha256sum -c /sums && umount /mnt
e2fsck -fn /dev/vda
echo "fs ok"
sync
"#,
        sectors = SIZE / 512,
        fio = FIO
    );
    let started = Instant::now();
    let run = image.run(&be.socket, 2, &script, GUEST_TIMEOUT).unwrap();
    run.ensure_success().unwrap();
    assert!(run.output.contains("discard ok") && run.output.contains("fs ok"));
    assert!(
        !run.output.contains("err= 1") && !run.output.contains("verify: bad"),
        "fio reported errors"
    );
    let iops = fio_iops(&run.output);
    let main_results = iops
        .iter()
        .filter(|(j, _)| !j.ends_with("(verify)"))
        .count();
    assert_eq!(main_results, 4, "expected four fio results, got {iops:?}");
    println!(
        "guest run took {:.1}s (boot + workload), TCG guest, 2 queues",
        started.elapsed().as_secs_f64()
    );
    for (job, v) in &iops {
        println!("FIGURE fio {job}: IOPS={v}");
    }
    assert!(
        be.proc.stop(Duration::from_secs(10)),
        "backend did not exit on SIGTERM"
    );
    let n = assert_identical(&c.servers[0].copy_file(VOL), &c.servers[1].copy_file(VOL)).unwrap();
    println!("FIGURE primary and mirror copies identical: {n} bytes compared");
}

#[test]
fn mirror_kill9_stalls_writes_but_never_fails_them() {
    require_qemu();
    let image = guest::ensure_image().unwrap();
    let mut c = cluster();
    create_volume(VOL, SIZE, &c.servers[0], &[&c.servers[1]]).unwrap();
    let mut be = backend(&c, false);
    let script = format!(
        "set -e\necho BASALT-STEP fio-start\n{FIO} --name=under-fault --rw=randwrite --iodepth=16 --size=48M\necho BASALT-STEP fio-done\n"
    );
    let primary_file = c.servers[0].copy_file(VOL);
    let allocated = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0)
    };
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut mirror = c.servers.remove(1);
    let backend_log = be.proc.log.clone();
    // Rounds in which the backend resubmitted held requests.
    let resubmissions = move || {
        std::fs::read_to_string(&backend_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("resubmitted in-flight requests"))
            .count()
    };
    let fault = std::thread::spawn(move || {
        rx.recv().unwrap();
        // Wait until the guest's writes are flowing, then kill the mirror.
        let base = allocated(&primary_file);
        let deadline = Instant::now() + Duration::from_secs(120);
        while allocated(&primary_file) < base + (8 << 20) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = resubmissions();
        mirror.kill9();
        let killed = Instant::now();
        // Bring it back once the backend has held and resubmitted the
        // refused writes several times over (each round is a refusal by
        // the primary for want of the mirror, then a retry).
        let deadline = Instant::now() + Duration::from_secs(60);
        while resubmissions() < before + 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        mirror.restart().unwrap();
        (mirror, killed.elapsed())
    });
    let mut tx = Some(tx);
    let cfg = GuestConfig::new(&be.socket);
    let run = image
        .run_watching(&cfg, &script, GUEST_TIMEOUT, &mut |line| {
            if line.contains("BASALT-STEP fio-start") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        })
        .unwrap();
    let (mirror, outage) = fault.join().unwrap();
    run.ensure_success().unwrap();
    assert!(run.output.contains("BASALT-STEP fio-done"));
    assert!(
        !run.output.contains("err= 1") && !run.output.contains("verify: bad"),
        "fio reported errors"
    );
    // The fault must actually have hit writes: the primary refused them
    // (MirrorUnavailable) and the backend held and resubmitted them.
    let log = std::fs::read_to_string(&be.proc.log).unwrap_or_default();
    let refused = log
        .lines()
        .filter(|l| l.contains("MirrorUnavailable"))
        .count();
    let resubmits = log
        .lines()
        .filter(|l| l.contains("resubmitted in-flight requests"))
        .count();
    assert!(
        refused > 0 && resubmits > 0,
        "the mirror outage never stalled a write; backend log:\n{log}"
    );
    println!(
        "FIGURE mirror outage {:.0} ms under guest fio verify: 0 guest errors",
        outage.as_secs_f64() * 1000.0
    );
    println!(
        "backend: {refused} MirrorUnavailable reports (rate-limited), {resubmits} resubmissions"
    );
    assert!(be.proc.stop(Duration::from_secs(10)));
    let n = assert_identical(&c.servers[0].copy_file(VOL), &mirror.copy_file(VOL)).unwrap();
    println!("FIGURE copies identical after mirror kill -9 and restart: {n} bytes compared");
}

#[test]
fn read_only_attachment_refuses_writes() {
    require_qemu();
    let image = guest::ensure_image().unwrap();
    let c = cluster();
    create_volume(VOL, SIZE, &c.servers[0], &[&c.servers[1]]).unwrap();
    let _be = backend(&c, true);
    let script = r#"
test "$(cat /sys/block/vda/ro)" = 1 || exit 10
dd if=/dev/vda of=/dev/null bs=1M count=4 iflag=direct || exit 11
if dd if=/dev/zero of=/dev/vda bs=4k count=1 oflag=direct 2>/dev/null; then exit 12; fi
echo "read-only ok"
"#;
    let run = image.run(&_be.socket, 2, script, GUEST_TIMEOUT).unwrap();
    run.ensure_success().unwrap();
    assert!(run.output.contains("read-only ok"));
    assert!(std::fs::read(c.servers[0].copy_file(VOL))
        .unwrap()
        .iter()
        .all(|&b| b == 0));
}
