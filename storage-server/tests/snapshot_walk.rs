//! A write to a hole while a snapshot point walks the allocated extents
//! (outside the ordering lock) is in the snapshot: it was acknowledged
//! before the point. The walk is held open with a failpoint.

mod common;

use std::time::{Duration, Instant};

use basalt_proto::wire::{Opcode, PeerRole, Status};
use basalt_snapshot::{Destination, DestinationSpec, BLOCK_SIZE};
use basalt_storage::snap::dests::SetSpec;
use basalt_storage::snap::job::JobState;
use basalt_storage::snap::PointRequest;
use basalt_storage::testing::LocalServer;
use common::{Client, SIZE, VOL};

#[test]
fn a_write_to_a_hole_during_the_walk_is_in_the_snapshot() {
    // Read once per process: this test binary holds only this test.
    std::env::set_var(basalt_failpoint::ENV, "snapshot.after_walk=sleep(500)");
    let root = tempfile::tempdir().unwrap();
    let dest = DestinationSpec {
        name: "local".into(),
        url: format!("file://{}", root.path().join("dest").display()),
        ..Default::default()
    };
    let p = LocalServer::start(&root.path().join("p"), "s-p").unwrap();
    p.create_primary(VOL, SIZE).unwrap();
    let mut c = Client::connect(p.data_addr, PeerRole::Backend, "b1");
    assert_eq!(c.op(Opcode::Write, 1, 0, 4096, &[1; 4096]), Status::Ok);
    let copy = p.copy(VOL).unwrap();
    let point = {
        let copy = copy.clone();
        let dest = dest.clone();
        let _rt = p.enter();
        let h = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            let _g = h.enter();
            basalt_storage::snap::point(
                &copy,
                PointRequest {
                    snapshot_id: 1,
                    epoch: 1,
                    parent_id: 0,
                    destinations: SetSpec::single(&dest),
                    rate_bytes_per_sec: 0,
                },
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
    };
    // The walk (microseconds) found only block 0 and the point waits 500
    // ms after it; this write lands in a hole meanwhile and is acknowledged
    // before the point.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !copy.snap.walking() {
        assert!(
            Instant::now() < deadline,
            "the point never started its walk"
        );
        std::thread::yield_now();
    }
    let hole = 7 * BLOCK_SIZE;
    assert_eq!(c.op(Opcode::Write, 1, hole, 4096, &[9; 4096]), Status::Ok);
    point.join().unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let j = copy.snap.job(1).unwrap();
        if j.state() != JobState::Running || Instant::now() > deadline {
            break j;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(job.state(), JobState::Complete);
    let m = p.block_on(async move {
        let d = Destination::open(&dest).unwrap();
        d.get_manifest(1).await.unwrap()
    });
    assert_eq!(
        m.blocks.keys().copied().collect::<Vec<_>>(),
        vec![0, 7],
        "the write made during the walk is missing from the snapshot"
    );
}
