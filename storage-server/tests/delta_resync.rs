//! Delta resync over real TCP: a mirror that comes back with its old copy is
//! sent only the regions written while it was away (holes included, as
//! discards), and ends byte-identical to the primary; without a map (the
//! primary restarted) a full copy does the same.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use basalt_proto::storage_admin::storage_admin_client::StorageAdminClient;
use basalt_proto::storage_admin::DescribeCopyRequest;
use basalt_proto::wire::{Opcode, PeerRole, Status};
use basalt_storage::dirty::GRANULE;
use basalt_storage::meta::{PeerMeta, Role};
use basalt_storage::store::Layout;
use basalt_storage::testing::{LocalServer, Options};
use common::{wait_until, Client, VOL};

/// Big enough that a delta is visibly smaller than a full copy.
const SIZE: u64 = 64 << 20;
const MIB: u64 = 1 << 20;

fn peer(id: &str, addr: SocketAddr, delta: bool) -> PeerMeta {
    PeerMeta {
        server_id: id.to_owned(),
        address: addr.to_string(),
        delta,
        seed_snapshot: 0,
    }
}

fn primary_layout(epoch: u64, mirrors: Vec<PeerMeta>, syncing: Vec<PeerMeta>) -> Layout {
    Layout {
        role: Role::Primary,
        epoch,
        mirrors,
        primary_server_id: String::new(),
        syncing,
        attachment: 0,
    }
}

fn mirror_layout(epoch: u64, primary: &str) -> Layout {
    Layout {
        role: Role::Mirror,
        epoch,
        mirrors: vec![],
        primary_server_id: primary.to_owned(),
        syncing: vec![],
        attachment: 0,
    }
}

fn start(dir: &Path, id: &str, listen: Option<SocketAddr>) -> LocalServer {
    LocalServer::start_with(
        dir,
        id,
        Options {
            listen,
            ..Options::default()
        },
    )
    .unwrap()
}

/// Primary `a` replicating to in-sync mirror `b`, with the whole volume
/// written.
fn filled_pair(dir: &Path, a: &str, b: &str) -> (LocalServer, LocalServer) {
    let mirror = start(&dir.join(b), b, None);
    let primary = start(&dir.join(a), a, None);
    mirror.create_mirror(VOL, SIZE, a).unwrap();
    primary
        .create_primary_with_mirrors(VOL, SIZE, &[(b, mirror.data_addr)])
        .unwrap();
    primary
        .wait_replicating(VOL, Duration::from_secs(10))
        .unwrap();
    let mut c = Client::connect(primary.data_addr, PeerRole::Backend, "fill");
    for i in 0..SIZE / MIB {
        let block: Vec<u8> = (0..MIB).map(|j| (j * 7 + i * 13) as u8).collect();
        assert_eq!(
            c.op(Opcode::Write, 1, i * MIB, MIB as u32, &block),
            Status::Ok
        );
    }
    (primary, mirror)
}

fn wait_synced(primary: &LocalServer, id: &str) {
    wait_until(
        Duration::from_secs(60),
        &format!("{id} to be synced"),
        || primary.synced(VOL).iter().any(|s| s == id),
    );
}

fn assert_identical(primary: &LocalServer, mirror: &LocalServer) {
    let (p, m) = (
        primary.read_copy(VOL).unwrap(),
        mirror.read_copy(VOL).unwrap(),
    );
    assert_eq!(p.len(), m.len());
    if let Some(i) = p.iter().zip(&m).position(|(x, y)| x != y) {
        panic!(
            "copies differ first at byte {i} (granule {})",
            i as u64 / GRANULE
        );
    }
}

fn counters(s: &LocalServer) -> (u64, u64) {
    let c = s.copy(VOL).unwrap();
    (
        c.delta_resync_bytes.load(Ordering::Relaxed),
        c.resync_bytes.load(Ordering::Relaxed),
    )
}

/// Describes the copy over the admin API (as the control service).
fn describe(server: &LocalServer) -> basalt_proto::storage_admin::CopyInfo {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let endpoint = server.admin_endpoint();
    rt.block_on(async {
        let mut c = StorageAdminClient::new(endpoint.connect().await.unwrap());
        c.describe_copy(DescribeCopyRequest { volume_id: VOL })
            .await
            .unwrap()
            .into_inner()
            .copy
            .unwrap()
    })
}

#[test]
fn a_removed_mirror_rejoins_with_only_the_regions_written_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let (p, m) = filled_pair(dir.path(), "s-primary", "s-mirror");
    // Control removes the mirror from the in-sync set.
    p.set_layout(VOL, primary_layout(2, vec![], vec![]))
        .unwrap();
    let info = describe(&p);
    assert_eq!(info.tracking, vec!["s-mirror"]);

    // Written while the mirror is away: three small writes (one straddles
    // two granules), and a discard of a region the mirror holds data in.
    let mut c = Client::connect(p.data_addr, PeerRole::Backend, "b1");
    assert_eq!(
        c.op(Opcode::Write, 2, 3 * MIB, 4096, &[0xa1; 4096]),
        Status::Ok
    );
    assert_eq!(
        c.op(
            Opcode::Write,
            2,
            10 * MIB + GRANULE - 4096,
            8192,
            &[0xa2; 8192]
        ),
        Status::Ok
    );
    assert_eq!(
        c.op(Opcode::Write, 2, 40 * MIB, 512, &[0xa3; 512]),
        Status::Ok
    );
    assert_eq!(
        c.op(Opcode::Discard, 2, 20 * MIB, GRANULE as u32, &[]),
        Status::Ok
    );
    let written_granules = 4; // 1 + 2 + 1
    let dirty = (written_granules + 1) * GRANULE;

    // The mirror rejoins as syncing with its old copy.
    m.set_layout(VOL, mirror_layout(3, "s-primary")).unwrap();
    p.set_layout(
        VOL,
        primary_layout(3, vec![], vec![peer("s-mirror", m.data_addr, true)]),
    )
    .unwrap();
    wait_synced(&p, "s-mirror");
    let info = describe(&p);
    assert_eq!(info.synced, vec!["s-mirror"]);
    assert!(
        info.layout.unwrap().syncing[0].delta,
        "the delta flag is kept in the layout"
    );
    assert_eq!(info.resync_bytes, 0, "no full copy was made");
    let delta = info.delta_resync_bytes;
    println!(
        "delta resync after removal: {delta} bytes sent for {dirty} dirty bytes; volume {SIZE} bytes"
    );
    assert!(
        delta >= written_granules * GRANULE && delta <= dirty,
        "delta resync sent {delta} bytes for {dirty} dirty bytes"
    );
    assert_identical(&p, &m);

    // Back in the in-sync set: the map is dropped, writes need the mirror.
    // Mirrors first: a copy takes a new epoch only from a layout.
    m.set_layout(VOL, mirror_layout(4, "s-primary")).unwrap();
    p.set_layout(
        VOL,
        primary_layout(4, vec![peer("s-mirror", m.data_addr, false)], vec![]),
    )
    .unwrap();
    assert!(describe(&p).tracking.is_empty());
    assert_eq!(c.op(Opcode::Write, 4, 0, 4096, &[0xa4; 4096]), Status::Ok);
    assert_eq!(c.op(Opcode::Flush, 4, 0, 0, &[]), Status::Ok);
    assert_identical(&p, &m);
}

/// Writes in a loop until stopped, like a backend: a write that is not
/// acknowledged is resubmitted (with the current epoch) until it is.
struct Writer {
    stop: Arc<AtomicBool>,
    /// Held by the writer for each write; taken by the test to hold writes.
    gate: Arc<std::sync::Mutex<()>>,
    done: Arc<AtomicU64>,
    epoch: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<u64>,
}

impl Writer {
    fn start(addr: SocketAddr, epoch: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let epoch = Arc::new(AtomicU64::new(epoch));
        let gate = Arc::new(std::sync::Mutex::new(()));
        let thread = {
            let (stop, done, epoch) = (stop.clone(), done.clone(), epoch.clone());
            let gate = gate.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, PeerRole::Backend, "writer");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // A few hot regions, as a guest's working set.
                    let off = (n * 7919 % 96) * 4096 + (n % 3) * 16 * MIB;
                    let data = [(n % 251) as u8; 4096];
                    let _held = gate.lock().unwrap();
                    loop {
                        let e = epoch.load(Ordering::Relaxed);
                        match c.op(Opcode::Write, e, off, 4096, &data) {
                            Status::Ok => break,
                            Status::MirrorUnavailable | Status::StaleEpoch => {
                                std::thread::yield_now()
                            }
                            s => panic!("write answered {s:?}"),
                        }
                    }
                    n += 1;
                    done.store(n, Ordering::Relaxed);
                }
                n
            })
        };
        Writer {
            stop,
            gate,
            done,
            epoch,
            thread,
        }
    }

    /// Waits until `n` more writes were acknowledged.
    fn progress(&self, n: u64) {
        let target = self.done.load(Ordering::Relaxed) + n;
        wait_until(Duration::from_secs(30), "writes to be acknowledged", || {
            assert!(!self.thread.is_finished(), "the writer stopped");
            self.done.load(Ordering::Relaxed) >= target
        });
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
fn a_restarted_mirror_catches_up_by_delta_while_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (p, m) = filled_pair(dir.path(), "s-primary", "s-mirror");
    let w = Writer::start(p.data_addr, 1);
    w.progress(200);
    // The mirror's server goes away; writes stall (not acknowledged) until
    // control drops it from the in-sync set.
    let m_addr = m.data_addr;
    drop(m);
    p.set_layout(VOL, primary_layout(2, vec![], vec![]))
        .unwrap();
    w.epoch.store(2, Ordering::Relaxed);
    w.progress(300);
    // It comes back on the same data directory and address.
    let m = start(&dir.path().join("s-mirror"), "s-mirror", Some(m_addr));
    m.set_layout(VOL, mirror_layout(3, "s-primary")).unwrap();
    p.set_layout(
        VOL,
        primary_layout(3, vec![], vec![peer("s-mirror", m_addr, true)]),
    )
    .unwrap();
    w.epoch.store(3, Ordering::Relaxed);
    wait_synced(&p, "s-mirror");
    // Control moves it into the in-sync set; writes go on. Mirrors first:
    // a copy takes a new epoch only from a layout, so a write forwarded
    // between the two pushes would be refused by the mirror (and resent by
    // the next delta pass, which this test's byte count would include); the
    // writer holds its writes for the two calls.
    {
        let _hold = w.gate.lock().unwrap();
        m.set_layout(VOL, mirror_layout(4, "s-primary")).unwrap();
        p.set_layout(
            VOL,
            primary_layout(4, vec![peer("s-mirror", m_addr, false)], vec![]),
        )
        .unwrap();
        w.epoch.store(4, Ordering::Relaxed);
    }
    w.progress(300);
    let writes = w.finish();
    let mut c = Client::connect(p.data_addr, PeerRole::Backend, "b1");
    assert_eq!(c.op(Opcode::Flush, 4, 0, 0, &[]), Status::Ok);
    assert_identical(&p, &m);
    let (delta, full) = counters(&p);
    println!("mirror restart: delta resync sent {delta} bytes ({writes} writes in all); volume {SIZE} bytes; full copies {full} bytes");
    assert_eq!(full, 0, "no full copy was made");
    // The writer touches 96 4 KiB blocks (6 granules) in each of 3 regions:
    // whatever it wrote while the mirror was away lies in those 18 granules.
    assert!(
        delta > 0 && delta <= 18 * GRANULE,
        "delta resync moved {delta} bytes"
    );
}

#[test]
fn a_failed_primary_returns_as_a_mirror_of_the_promoted_one_by_delta() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = filled_pair(dir.path(), "s-a", "s-b");
    // a fails; control promotes its in-sync mirror b.
    let a_addr = a.data_addr;
    drop(a);
    b.set_layout(VOL, primary_layout(2, vec![], vec![]))
        .unwrap();
    assert_eq!(b.copy(VOL).unwrap().dirty.tracking(), vec!["s-a"]);
    let mut c = Client::connect(b.data_addr, PeerRole::Backend, "b1");
    for i in 0..8u64 {
        assert_eq!(
            c.op(Opcode::Write, 2, i * 5 * MIB, 8192, &[0xb0 + i as u8; 8192]),
            Status::Ok
        );
    }
    assert_eq!(
        c.op(Opcode::WriteZeroes, 2, 50 * MIB, 2 * GRANULE as u32, &[]),
        Status::Ok
    );
    let w = Writer::start(b.data_addr, 2);
    w.progress(100);
    // a comes back, demoted to a mirror of b, and rejoins by delta.
    let a = start(&dir.path().join("s-a"), "s-a", Some(a_addr));
    a.set_layout(VOL, mirror_layout(3, "s-b")).unwrap();
    b.set_layout(
        VOL,
        primary_layout(3, vec![], vec![peer("s-a", a_addr, true)]),
    )
    .unwrap();
    w.epoch.store(3, Ordering::Relaxed);
    wait_synced(&b, "s-a");
    // Mirrors first: a copy takes a new epoch only from a layout.
    a.set_layout(VOL, mirror_layout(4, "s-b")).unwrap();
    b.set_layout(
        VOL,
        primary_layout(4, vec![peer("s-a", a_addr, false)], vec![]),
    )
    .unwrap();
    w.epoch.store(4, Ordering::Relaxed);
    w.progress(100);
    w.finish();
    assert_eq!(c.op(Opcode::Flush, 4, 0, 0, &[]), Status::Ok);
    assert_identical(&b, &a);
    let (delta, full) = counters(&b);
    println!("promotion: delta resync to the old primary sent {delta} bytes; volume {SIZE} bytes; full copies {full} bytes");
    assert_eq!(full, 0, "no full copy was made");
    assert!(
        delta > 0 && delta <= SIZE / 16,
        "delta resync moved {delta} bytes"
    );
}

#[test]
fn without_a_map_a_returning_mirror_gets_a_full_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (p, m) = filled_pair(dir.path(), "s-primary", "s-mirror");
    p.set_layout(VOL, primary_layout(2, vec![], vec![]))
        .unwrap();
    let mut c = Client::connect(p.data_addr, PeerRole::Backend, "b1");
    assert_eq!(c.op(Opcode::Write, 2, MIB, 4096, &[0xc1; 4096]), Status::Ok);
    // A hole where the mirror still holds data: the full copy must send it.
    assert_eq!(
        c.op(Opcode::Discard, 2, 30 * MIB, 4 * MIB as u32, &[]),
        Status::Ok
    );
    assert_eq!(c.op(Opcode::Flush, 2, 0, 0, &[]), Status::Ok);
    drop(c);
    // The primary restarts: its dirty-region maps are gone.
    drop(p);
    let p = start(&dir.path().join("s-primary"), "s-primary", None);
    assert!(p.copy(VOL).unwrap().dirty.tracking().is_empty());
    m.set_layout(VOL, mirror_layout(3, "s-primary")).unwrap();
    p.set_layout(
        VOL,
        primary_layout(3, vec![], vec![peer("s-mirror", m.data_addr, true)]),
    )
    .unwrap();
    wait_synced(&p, "s-mirror");
    assert_identical(&p, &m);
    let (delta, full) = counters(&p);
    println!("no map: full copy sent {full} bytes (delta {delta}); volume {SIZE} bytes");
    assert_eq!(delta, 0);
    assert!(
        full >= SIZE - 4 * MIB,
        "the full copy sent only {full} bytes"
    );
}
