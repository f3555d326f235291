//! Snapshots on real storage servers over real TCP: the point, copy-on-write
//! while uploading, incremental uploads from change maps, and copies created
//! from a snapshot that serve reads at once, hydrate in the background, and
//! keep hydrating on a promoted mirror.

mod common;

use std::time::{Duration, Instant};

use basalt_proto::wire::{Opcode, PeerRole, Status};
use basalt_snapshot::{Destination, DestinationSpec, BLOCK_SIZE};
use basalt_storage::meta::{PeerMeta, Role};
use basalt_storage::snap::dests::SetSpec;
use basalt_storage::snap::hydrate::Source;
use basalt_storage::snap::job::JobState;
use basalt_storage::snap::PointRequest;
use basalt_storage::store::Layout;
use basalt_storage::testing::LocalServer;
use common::{Client, SIZE, VOL};

const BLOCK: usize = BLOCK_SIZE as usize;

fn spec(dir: &std::path::Path) -> DestinationSpec {
    DestinationSpec {
        name: "local".into(),
        url: format!("file://{}", dir.display()),
        ..Default::default()
    }
}

/// A recognisable block: `tag` and the block index in every 8 bytes.
fn block(tag: u8, index: usize) -> Vec<u8> {
    (0..BLOCK)
        .map(|i| {
            if i % 8 == 0 {
                tag
            } else {
                (index + i / 8) as u8
            }
        })
        .collect()
}

/// A copy's source: snapshot `id` of `dest`, `SIZE` bytes, loaded at `rate`.
fn source(dest: &DestinationSpec, id: u64, rate: u64) -> Source {
    Source::new(id, SIZE, rate, SetSpec::single(dest), false)
}

fn point(s: &LocalServer, dest: &DestinationSpec, id: u64, parent: u64) {
    let _rt = s.enter();
    let copy = s.copy(VOL).unwrap();
    basalt_storage::snap::point(
        &copy,
        PointRequest {
            snapshot_id: id,
            epoch: copy.epoch(),
            parent_id: parent,
            destinations: SetSpec::single(dest),
            rate_bytes_per_sec: 0,
        },
    )
    .unwrap();
}

fn wait_job(s: &LocalServer, id: u64) -> basalt_proto::storage_admin::SnapshotJob {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = s.copy(VOL).unwrap().snap.job(id).unwrap();
        match job.state() {
            JobState::Running if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            JobState::Complete => return job.to_pb(),
            other => panic!("snapshot {id} ended {other:?}"),
        }
    }
}

/// The volume image a snapshot's manifest and chunks describe.
fn restore(s: &LocalServer, dest: &DestinationSpec, id: u64) -> Vec<u8> {
    let dest = dest.clone();
    s.block_on(async move {
        let d = Destination::open(&dest).unwrap();
        let m = d.get_manifest(id).await.unwrap();
        let mut img = vec![0u8; m.size_bytes as usize];
        for (b, c) in &m.blocks {
            let len = m.block_len(*b);
            let data = d.get_chunk(c, len).await.unwrap();
            let at = *b as usize * BLOCK;
            img[at..at + len].copy_from_slice(&data);
        }
        img
    })
}

fn pair(root: &std::path::Path) -> (LocalServer, LocalServer) {
    let mirror = LocalServer::start(&root.join("m"), "s-mirror").unwrap();
    let primary = LocalServer::start(&root.join("p"), "s-primary").unwrap();
    mirror.create_mirror(VOL, SIZE, "s-primary").unwrap();
    primary
        .create_primary_with_mirrors(VOL, SIZE, &[("s-mirror", mirror.data_addr)])
        .unwrap();
    primary
        .wait_replicating(VOL, Duration::from_secs(10))
        .unwrap();
    (primary, mirror)
}

#[test]
fn a_snapshot_holds_the_point_and_the_next_one_only_the_changes() {
    let root = tempfile::tempdir().unwrap();
    let dest = spec(&root.path().join("dest"));
    let (primary, mirror) = pair(root.path());
    let mut c = Client::connect(primary.data_addr, PeerRole::Backend, "b1");
    let blocks = SIZE as usize / BLOCK;
    let mut expected = vec![0u8; SIZE as usize];
    // Every other block written; the rest stay zero (not stored).
    for b in (0..blocks).step_by(2) {
        let data = block(1, b);
        assert_eq!(
            c.op(Opcode::Write, 1, (b * BLOCK) as u64, BLOCK as u32, &data),
            Status::Ok
        );
        expected[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(&data);
    }
    point(&primary, &dest, 1, 0);
    // Overwrite everything at once: whatever the upload had not read yet
    // is copied aside first.
    for b in 0..blocks {
        assert_eq!(
            c.op(
                Opcode::Write,
                1,
                (b * BLOCK) as u64,
                BLOCK as u32,
                &block(2, b)
            ),
            Status::Ok
        );
    }
    let job = wait_job(&primary, 1);
    assert_eq!(job.change_source, "FULL");
    assert_eq!(
        job.blocks_total,
        blocks as u64 / 2,
        "only allocated blocks are read"
    );
    assert_eq!(job.chunks_new, blocks as u64 / 2);
    assert_eq!(job.data_bytes, SIZE / 2);
    assert!(
        restore(&primary, &dest, 1) == expected,
        "snapshot 1 is not the image at its point"
    );
    println!(
        "FIGURE snapshot 1: {} blocks read, {} copied aside before upload, point {} us",
        job.blocks_total, job.cow_blocks, job.point_micros
    );

    // Snapshot 2 after the overwrite; then change one block for snapshot 3.
    let mut now: Vec<u8> = (0..blocks).flat_map(|b| block(2, b)).collect();
    point(&primary, &dest, 2, 1);
    let job = wait_job(&primary, 2);
    assert_eq!(job.change_source, "CHANGE_MAP");
    assert_eq!(job.blocks_total, blocks as u64);
    assert!(restore(&primary, &dest, 2) == now);
    assert_eq!(
        c.op(Opcode::Write, 1, 3 * BLOCK as u64 + 4096, 4096, &[9; 4096]),
        Status::Ok
    );
    now[3 * BLOCK + 4096..3 * BLOCK + 8192].fill(9);
    point(&primary, &dest, 3, 2);
    let job = wait_job(&primary, 3);
    assert_eq!(job.change_source, "CHANGE_MAP");
    assert_eq!(
        (job.blocks_total, job.chunks_new),
        (1, 1),
        "only the changed block is read and stored"
    );
    assert!(restore(&primary, &dest, 3) == now);
    // The mirror tracked the same changes (late, so it answers with the
    // map before): after a failover the next snapshot is still incremental.
    {
        let _rt = mirror.enter();
        basalt_storage::snap::mark(&mirror.copy(VOL).unwrap(), 3);
    }
    let since = mirror
        .copy(VOL)
        .unwrap()
        .snap
        .changes
        .lock()
        .unwrap()
        .since(3);
    assert_eq!(
        since, None,
        "a mirror's first late map has nothing before it"
    );
    drop(c);
}

/// The whole volume, read through the data plane 1 MiB at a time.
fn read_all(c: &mut Client, epoch: u64, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for off in (0..size).step_by(1 << 20) {
        let (s, got) = c.read(epoch, off, 1 << 20);
        assert_eq!(s, Status::Ok, "read at {off}");
        out.extend_from_slice(&got);
    }
    out
}

fn hydrating_layout(role: Role, mirror: Option<(&str, std::net::SocketAddr)>) -> Layout {
    Layout {
        role,
        epoch: 1,
        mirrors: mirror
            .map(|(id, a)| PeerMeta {
                server_id: id.into(),
                address: a.to_string(),
                delta: false,
                seed_snapshot: 0,
            })
            .into_iter()
            .collect(),
        primary_server_id: if role == Role::Mirror {
            "s-primary2".into()
        } else {
            String::new()
        },
        syncing: vec![],
        attachment: 0,
    }
}

#[test]
fn a_copy_from_a_snapshot_serves_at_once_and_hydrates_through_a_failover() {
    let root = tempfile::tempdir().unwrap();
    let dest = spec(&root.path().join("dest"));
    let (src, _src_mirror) = pair(root.path());
    let mut c = Client::connect(src.data_addr, PeerRole::Backend, "b1");
    let blocks = SIZE as usize / BLOCK;
    let image: Vec<u8> = (0..blocks)
        .flat_map(|b| {
            if b % 4 == 3 {
                vec![0; BLOCK]
            } else {
                block(5, b)
            }
        })
        .collect();
    for b in 0..blocks {
        let data = &image[b * BLOCK..(b + 1) * BLOCK];
        assert_eq!(
            c.op(Opcode::Write, 1, (b * BLOCK) as u64, BLOCK as u32, data),
            Status::Ok
        );
    }
    point(&src, &dest, 7, 0);
    wait_job(&src, 7);
    drop(c);

    // A new volume, twice as large, from snapshot 7: slow background
    // hydration so on-demand fetches and the failover happen mid-way.
    let p = LocalServer::start(&root.path().join("p2"), "s-primary2").unwrap();
    let m = LocalServer::start(&root.path().join("m2"), "s-mirror2").unwrap();
    let source = source(&dest, 7, 2 << 20);
    {
        let _rt = m.enter();
        m.store()
            .create_from(
                VOL,
                2 * SIZE,
                hydrating_layout(Role::Mirror, None),
                Some(source.clone()),
            )
            .unwrap();
    }
    {
        let _rt = p.enter();
        p.store()
            .create_from(
                VOL,
                2 * SIZE,
                hydrating_layout(Role::Primary, Some(("s-mirror2", m.data_addr))),
                Some(source),
            )
            .unwrap();
    }
    p.wait_replicating(VOL, Duration::from_secs(10)).unwrap();
    let mut c = Client::connect(p.data_addr, PeerRole::Backend, "b2");
    // Usable at once: the last block of the snapshot, read first.
    let t = Instant::now();
    let last = (blocks - 1) * BLOCK;
    let (s, got) = c.read(1, last as u64, BLOCK as u32);
    println!("FIGURE first read of a cold block: {:?}", t.elapsed());
    assert_eq!(s, Status::Ok);
    assert!(
        got == image[last..],
        "an on-demand read returned wrong data"
    );
    // A partial write into a block not yet local merges with the snapshot.
    let b = blocks - 2;
    assert_eq!(
        c.op(
            Opcode::Write,
            1,
            (b * BLOCK + 512) as u64,
            512,
            &[0xEE; 512]
        ),
        Status::Ok
    );
    let mut want = image.clone();
    want.resize(2 * SIZE as usize, 0);
    want[b * BLOCK + 512..b * BLOCK + 1024].fill(0xEE);
    // Past the snapshot's size the volume reads zeroes.
    let (s, got) = c.read(1, SIZE + 4096, 4096);
    assert_eq!((s, got), (Status::Ok, vec![0; 4096]));
    assert_eq!(c.op(Opcode::Flush, 1, 0, 0, &[]), Status::Ok);
    let present = p.copy(VOL).unwrap().hydration().unwrap().presence.present();
    assert!(
        present < blocks as u64,
        "hydration finished too early to test a failover ({present} blocks)"
    );

    // Fail over: the mirror becomes the primary and goes on hydrating.
    drop(c);
    drop(p);
    {
        let _rt = m.enter();
        let mut l = hydrating_layout(Role::Primary, None);
        l.epoch = 2;
        m.store().set_layout(VOL, l).unwrap();
    }
    let mut c = Client::connect(m.data_addr, PeerRole::Backend, "b3");
    let got = read_all(&mut c, 2, 2 * SIZE);
    assert!(
        got == want,
        "the promoted mirror's volume differs from snapshot + writes"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.copy(VOL).unwrap().hydration().is_some() {
        assert!(
            Instant::now() < deadline,
            "hydration did not complete on the promoted mirror"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(read_all(&mut c, 2, 2 * SIZE) == want);
    let dir = m.store().get(VOL).unwrap().dir().to_path_buf();
    assert!(
        !dir.join("source.json").exists(),
        "the source is dropped once hydrated"
    );
}

/// A rate-limited hydration with a mirror finishes on both copies and drops
/// the source everywhere.
#[test]
fn a_rate_limited_hydration_finishes_on_every_copy() {
    let root = tempfile::tempdir().unwrap();
    let dest = spec(&root.path().join("dest"));
    let src = LocalServer::start(&root.path().join("s"), "s-src").unwrap();
    src.create_primary(VOL, SIZE).unwrap();
    let mut c = Client::connect(src.data_addr, PeerRole::Backend, "b1");
    for b in 0..4usize {
        assert_eq!(
            c.op(
                Opcode::Write,
                1,
                (b * BLOCK) as u64,
                BLOCK as u32,
                &block(3, b)
            ),
            Status::Ok
        );
    }
    point(&src, &dest, 9, 0);
    wait_job(&src, 9);
    let p = LocalServer::start(&root.path().join("p"), "s-primary2").unwrap();
    let m = LocalServer::start(&root.path().join("m"), "s-mirror2").unwrap();
    let source = source(&dest, 9, 1 << 20);
    {
        let _rt = m.enter();
        m.store()
            .create_from(
                VOL,
                SIZE,
                hydrating_layout(Role::Mirror, None),
                Some(source.clone()),
            )
            .unwrap();
    }
    {
        let _rt = p.enter();
        p.store()
            .create_from(
                VOL,
                SIZE,
                hydrating_layout(Role::Primary, Some(("s-mirror2", m.data_addr))),
                Some(source),
            )
            .unwrap();
    }
    p.wait_replicating(VOL, Duration::from_secs(10)).unwrap();
    let mut c = Client::connect(p.data_addr, PeerRole::Backend, "b2");
    let (s, _) = c.read(1, 0, 4096);
    assert_eq!(s, Status::Ok);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if p.copy(VOL).unwrap().hydration().is_none() && m.copy(VOL).unwrap().hydration().is_none()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("hydration never finished on both copies");
}

/// Change maps survive a clean restart (the next snapshot reads only the
/// changed block); without them (a crash) the snapshot compares hashes,
/// reads every allocated block, stores only the changed one, and is right.
#[test]
fn change_tracking_survives_a_clean_restart_and_falls_back_to_hashes_after_a_crash() {
    let root = tempfile::tempdir().unwrap();
    let dest = spec(&root.path().join("dest"));
    let dir = root.path().join("p");
    let blocks = SIZE as usize / BLOCK;
    let mut image: Vec<u8> = (0..blocks).flat_map(|b| block(4, b)).collect();
    {
        let p = LocalServer::start(&dir, "s-p").unwrap();
        p.create_primary(VOL, SIZE).unwrap();
        let mut c = Client::connect(p.data_addr, PeerRole::Backend, "b1");
        for b in 0..blocks {
            let d = &image[b * BLOCK..(b + 1) * BLOCK];
            assert_eq!(
                c.op(Opcode::Write, 1, (b * BLOCK) as u64, BLOCK as u32, d),
                Status::Ok
            );
        }
        point(&p, &dest, 1, 0);
        wait_job(&p, 1);
        assert_eq!(
            c.op(Opcode::Write, 1, 5 * BLOCK as u64, 4096, &[1; 4096]),
            Status::Ok
        );
        image[5 * BLOCK..5 * BLOCK + 4096].fill(1);
    }
    assert!(dir
        .join("copies")
        .join(VOL.to_string())
        .join("changes.bin")
        .exists());
    {
        let p = LocalServer::start(&dir, "s-p").unwrap();
        point(&p, &dest, 2, 1);
        let job = wait_job(&p, 2);
        assert_eq!(job.change_source, "CHANGE_MAP");
        assert_eq!((job.blocks_total, job.chunks_new), (1, 1));
        assert!(restore(&p, &dest, 2) == image);
        let mut c = Client::connect(p.data_addr, PeerRole::Backend, "b1");
        assert_eq!(
            c.op(Opcode::Write, 1, 9 * BLOCK as u64, 4096, &[2; 4096]),
            Status::Ok
        );
        image[9 * BLOCK..9 * BLOCK + 4096].fill(2);
    }
    // A crash: the maps were never saved.
    std::fs::remove_file(dir.join("copies").join(VOL.to_string()).join("changes.bin")).unwrap();
    let p = LocalServer::start(&dir, "s-p").unwrap();
    point(&p, &dest, 3, 2);
    let job = wait_job(&p, 3);
    assert_eq!(job.change_source, "HASH_COMPARE");
    assert_eq!(
        job.blocks_total, blocks as u64,
        "every allocated block is read"
    );
    assert_eq!(job.chunks_new, 1, "only the changed block is stored");
    assert!(restore(&p, &dest, 3) == image);
}

/// Found by the snapshot benchmark: a primary that installed blocks before
/// its link to the mirror was up lost them for that mirror (nobody waits
/// for an install's acknowledgement), so the mirror never finished loading.
/// Installs now wait for the in-sync mirrors' links.
#[test]
fn installs_wait_for_the_mirror_link_and_every_copy_finishes() {
    let root = tempfile::tempdir().unwrap();
    let dest = spec(&root.path().join("dest"));
    let src = LocalServer::start(&root.path().join("s"), "s-src").unwrap();
    src.create_primary(VOL, SIZE).unwrap();
    let mut c = Client::connect(src.data_addr, PeerRole::Backend, "b1");
    let blocks = SIZE as usize / BLOCK;
    for b in 0..blocks {
        assert_eq!(
            c.op(
                Opcode::Write,
                1,
                (b * BLOCK) as u64,
                BLOCK as u32,
                &block(6, b)
            ),
            Status::Ok
        );
    }
    point(&src, &dest, 4, 0);
    wait_job(&src, 4);
    let source = source(&dest, 4, 0);
    // The mirror's address is known but nothing listens there yet.
    let mirror_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = LocalServer::start(&root.path().join("p"), "s-primary2").unwrap();
    {
        let _rt = p.enter();
        p.store()
            .create_from(
                VOL,
                SIZE,
                hydrating_layout(Role::Primary, Some(("s-mirror2", mirror_addr))),
                Some(source.clone()),
            )
            .unwrap();
    }
    let m = LocalServer::start_with(
        &root.path().join("m"),
        "s-mirror2",
        basalt_storage::testing::Options {
            listen: Some(mirror_addr),
            ..Default::default()
        },
    )
    .unwrap();
    {
        let _rt = m.enter();
        m.store()
            .create_from(
                VOL,
                SIZE,
                hydrating_layout(Role::Mirror, None),
                Some(source),
            )
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.copy(VOL).unwrap().hydration().is_some() || m.copy(VOL).unwrap().hydration().is_some() {
        assert!(Instant::now() < deadline, "a copy never finished loading");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        p.read_copy(VOL).unwrap() == m.read_copy(VOL).unwrap(),
        "the copies differ"
    );
}
