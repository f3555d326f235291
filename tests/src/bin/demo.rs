//! The main job on embedded defaults: three storage servers on loopback, a
//! volume with a primary and a mirror, a vhost-user-blk backend, and a QEMU
//! guest that makes a filesystem on the disk and writes and reads data.
//! Everything runs under a temporary directory (or `--state-dir`).

use std::time::{Duration, Instant};

use anyhow::Context;
use basalt_tests::cluster::{
    assert_identical, create_volume, BackendOpts, BackendProc, StorageProc,
};
use basalt_tests::guest;

const VOL: u64 = 1;
const SIZE: u64 = 1 << 30;

const SCRIPT: &str = r#"set -e
echo "guest: disk vda is $(( $(cat /sys/block/vda/size) / 2048 )) MiB, $(ls /sys/block/vda/mq | wc -l) queues"
mkfs.ext4 -q -F /dev/vda
mkdir -p /mnt && mount /dev/vda /mnt
dd if=/dev/urandom of=/mnt/data bs=1M count=64 2>/dev/null
sha256sum /mnt/data > /sum
umount /mnt
mount /dev/vda /mnt && sha256sum -c /sum
fio --name=demo --filename=/mnt/fio.dat --direct=1 --ioengine=libaio --rw=randrw --bs=4k --iodepth=16 --size=64M --verify=crc32c --eta=never --minimal | awk -F';' '{print "guest: fio 4k randrw qd16 on ext4 with crc32c verify: read IOPS " $8 ", write IOPS " $49}'
umount /mnt
e2fsck -fn /dev/vda >/dev/null && echo "guest: filesystem clean"
"#;

fn main() -> anyhow::Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    anyhow::ensure!(
        guest::qemu_available(),
        "qemu-system-x86_64 not found: run scripts/setup.sh"
    );
    let image = guest::ensure_image()?;
    let root = tempfile::Builder::new().prefix("basalt-demo-").tempdir()?;
    println!("basalt demo: state under {}", root.path().display());
    let servers: Vec<StorageProc> = ["s1", "s2", "s3"]
        .iter()
        .map(|id| StorageProc::start(root.path(), id))
        .collect::<Result<_, _>>()?;
    for s in &servers {
        println!(
            "  storage server {}: data {} admin {}",
            s.id, s.data, s.admin
        );
    }
    create_volume(VOL, SIZE, &servers[0], &[&servers[1]])?;
    println!("  volume {VOL}: 1 GiB, primary on s1, mirror on s2");
    let opts = BackendOpts {
        volume_id: VOL,
        size_bytes: SIZE,
        primary: servers[0].data,
        queues: 2,
        read_only: false,
        extra: &[],
    };
    let mut backend = BackendProc::start(root.path(), &opts)?;
    println!("  backend: vhost-user socket {}", backend.socket.display());
    println!("booting a QEMU guest (TCG) on the volume…");
    let t = Instant::now();
    let run = image.run(&backend.socket, 2, SCRIPT, Duration::from_secs(600))?;
    run.ensure_success()?;
    for line in run.output.lines().filter(|l| l.starts_with("guest:")) {
        println!("  {line}");
    }
    println!("guest finished in {:.1}s", t.elapsed().as_secs_f64());
    backend.proc.stop(Duration::from_secs(10));
    let n = assert_identical(&servers[0].copy_file(VOL), &servers[1].copy_file(VOL))
        .context("replication check")?;
    println!(
        "primary and mirror copies are identical ({} MiB compared)",
        n >> 20
    );
    if keep {
        let p = root.keep();
        println!("state kept in {}", p.display());
    }
    Ok(())
}
