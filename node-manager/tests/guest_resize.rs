//! Online resize seen by a real guest: QEMU (TCG) boots against the socket
//! the node manager hands out; while the guest runs, Resize grows the disk;
//! the guest's kernel gets the config-change interrupt, sees the new
//! capacity and can read the new last sector.

mod common;

use std::time::Duration;

use anyhow::Result;
use basalt_tests::cluster::{create_volume, StorageProc};
use basalt_tests::guest::{self, GuestConfig};
use common::*;

const MIB: u64 = 1 << 20;

#[test]
fn guest_sees_online_resize() -> Result<()> {
    assert!(
        guest::qemu_available(),
        "qemu-system-x86_64 is required: run `scripts/setup.sh`"
    );
    let image = guest::ensure_image()?;
    let root = tempfile::tempdir()?;
    let s1 = StorageProc::start(root.path(), "s1")?;
    // The copy is already large enough; growing copies is the control
    // service's job before it calls Resize.
    create_volume(1, 128 * MIB, &s1, &[])?;
    let mut node = NodeProc::start(&root.path().join("node"), &[])?;
    let mut req = attach_req(1, 64 * MIB, &s1.data.to_string());
    req.queues = 1;
    let a = node.attach(req)?;
    assert!(a.qemu_args[1].ends_with(",reconnect=1"));

    let mut cfg = GuestConfig::new(&a.socket_path);
    cfg.queues = 1;
    cfg.reconnect = true;
    let script = r#"
s0=$(cat /sys/block/vda/size)
echo "SIZE0 $s0"
echo RESIZE-NOW
i=0
while [ "$(cat /sys/block/vda/size)" = "$s0" ] && [ $i -lt 600 ]; do usleep 100000; i=$((i + 1)); done
s1=$(cat /sys/block/vda/size)
echo "SIZE1 $s1"
dd if=/dev/vda of=/dev/null bs=512 skip=$((s1 - 1)) count=1 && echo READ-END-OK
dmesg | grep -i capacity
"#;
    let mut resized: Option<Result<(), tonic::Status>> = None;
    let run = image.run_watching(&cfg, script, Duration::from_secs(300), &mut |line| {
        if line.trim() == "RESIZE-NOW" && resized.is_none() {
            resized = Some(node.resize(1, 128 * MIB));
        }
    })?;
    run.ensure_success()?;
    assert!(matches!(resized, Some(Ok(()))), "{resized:?}");
    let out = &run.output;
    assert!(out.lines().any(|l| l.trim() == "SIZE0 131072"), "{out}");
    assert!(out.lines().any(|l| l.trim() == "SIZE1 262144"), "{out}");
    assert!(out.lines().any(|l| l.trim() == "READ-END-OK"), "{out}");
    assert!(
        out.contains("detected capacity change from 131072 to 262144"),
        "{out}"
    );
    node.detach(1)?;
    Ok(())
}
