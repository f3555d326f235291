//! Peers that try to make the storage server hold memory or wait forever:
//! connection floods and stalled handshakes, a backend that never reads its
//! responses, a syncing mirror that never reads its replication stream, and
//! an in-sync mirror that hangs on Flush. Each runs while a well-behaved
//! client keeps using the volume; the server runs in this process, so its
//! memory is this process's resident set (`VmRSS`), sampled throughout.
//! Tests run one at a time in CI (`--test-threads=1`); run in parallel they
//! see each other's memory, which the bounds leave room for.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt_proto::control as pb;
use basalt_proto::wire::{Flags, Header, Opcode, PeerRole, Status, HEADER_LEN, MAX_PAYLOAD};
use basalt_storage::data_client::accept_as;
use basalt_storage::fake_control;
use basalt_storage::frames::read_frame;
use basalt_storage::meta::Role;
use basalt_storage::store::Layout;
use basalt_storage::testing::shared_pki;
use basalt_storage::testing::{LocalServer, Options};
use common::{wait_until, Client, SIZE, VOL};
use tokio::io::AsyncWriteExt;

const MIB: u64 = 1 << 20;

/// This process's resident set in bytes (`VmRSS` in /proc/self/status).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib << 10
}

/// Samples the resident set every few milliseconds from a thread and keeps
/// the highest growth over the baseline taken at start.
struct Memory {
    base: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Memory {
    fn watch() -> Memory {
        let base = rss();
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss().saturating_sub(base), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Memory {
            base,
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// Highest growth seen so far.
    fn growth(&self) -> u64 {
        self.peak
            .load(Ordering::Relaxed)
            .max(rss().saturating_sub(self.base))
    }

    /// Stops sampling; prints and checks the highest growth against `bound`.
    fn check(mut self, what: &str, bound: u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let growth = self.growth();
        let now = rss();
        println!(
            "{what}: resident set {} MiB before, {} MiB after, peak growth {} MiB (bound {} MiB)",
            self.base / MIB,
            now / MIB,
            growth / MIB,
            bound / MIB
        );
        assert!(
            growth < bound,
            "{what}: the server's memory grew by {} MiB, over the {} MiB bound",
            growth / MIB,
            bound / MIB
        );
    }
}

/// Panics in the server's runtime threads (a peer must never cause one).
static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_server_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tokio-runtime-worker") {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// The well-behaved client's round: a write, a read of it back, a flush.
fn serve_well(c: &mut Client, epoch: u64, round: u64) {
    let data = vec![(round % 251) as u8; 4096];
    let offset = (round % 64) * 4096;
    assert_eq!(c.op(Opcode::Write, epoch, offset, 4096, &data), Status::Ok);
    let (s, got) = c.read(epoch, offset, 4096);
    assert_eq!(s, Status::Ok);
    assert_eq!(got, data, "read back what was written");
    assert_eq!(c.op(Opcode::Flush, epoch, 0, 0, &[]), Status::Ok);
}

/// Reads until the server closes the connection; false if it is still open
/// after `within`. Whatever the server had sent first is discarded.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn server(dir: &std::path::Path, id: &str, o: Options) -> LocalServer {
    LocalServer::start_with(dir, id, o).unwrap()
}

/// (a) Connections are counted from accept: beyond `--max-connections` they
/// are closed at once, without a challenge; a handshake announcing a 4 MiB
/// hello is refused before anything is allocated for it; stalled handshakes
/// are closed after `--handshake-timeout-ms`, which frees their slots.
#[test]
fn connections_beyond_the_cap_are_closed_at_once_and_stalled_handshakes_time_out() {
    count_server_panics();
    let dir = tempfile::tempdir().unwrap();
    let cap = 32;
    let handshake = Duration::from_secs(3);
    let s = server(
        dir.path(),
        "s1",
        Options {
            max_connections: cap,
            handshake_timeout: handshake,
            ..Options::default()
        },
    );
    s.create_primary(VOL, SIZE).unwrap();
    let mut good = Client::connect(s.data_addr, PeerRole::Backend, "good");
    serve_well(&mut good, 1, 0);
    let mem = Memory::watch();

    // Handshakes announcing a 4 MiB hello payload, then stalling: refused
    // at the header, long before the handshake timeout.
    let t = Instant::now();
    let mut big: Vec<TcpStream> = (0..cap)
        .map(|_| {
            let mut c = TcpStream::connect(s.data_addr).unwrap();
            let mut h = Header::request(Opcode::Hello, 0, 0, 0);
            h.payload_len = MAX_PAYLOAD;
            c.write_all(&h.encode()).unwrap();
            c.write_all(&[0u8; 4096]).unwrap();
            c
        })
        .collect();
    for c in &mut big {
        assert!(
            closed_within(c, handshake / 2),
            "a handshake announcing a 4 MiB hello was not refused"
        );
    }
    println!(
        "{cap} handshakes announcing 4 MiB hellos refused in {:?}",
        t.elapsed()
    );
    drop(big);
    wait_until(
        Duration::from_secs(5),
        "the refused handshakes to end",
        || s.data_connections() == 1,
    );

    // Idle connections that never handshake fill the remaining slots...
    let idle: Vec<TcpStream> = (1..cap)
        .map(|_| TcpStream::connect(s.data_addr).unwrap())
        .collect();
    wait_until(Duration::from_secs(5), "the cap to be reached", || {
        s.data_connections() == cap
    });
    // ...and every connection beyond the cap is closed at once: it gets no
    // challenge (nothing is read from it, nothing allocated for it).
    let excess = 4 * cap;
    let t = Instant::now();
    let mut refused = 0;
    let mut most = 0;
    for _ in 0..excess {
        let mut c = TcpStream::connect(s.data_addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut b = [0u8; 64];
        match c.read(&mut b) {
            Ok(0) => refused += 1,
            Err(e) if e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::TimedOut => {
                refused += 1
            }
            Ok(_) => {}
            Err(_) => {}
        }
        most = most.max(s.data_connections());
    }
    let took = t.elapsed();
    println!(
        "{refused} of {excess} connections beyond the cap of {cap} closed at once ({took:?}); at most {most} open"
    );
    assert_eq!(
        refused, excess,
        "connections beyond --max-connections were served"
    );
    assert!(
        most <= cap,
        "{most} connections open, over the cap of {cap}"
    );
    // The established client is served throughout.
    for round in 1..20 {
        serve_well(&mut good, 1, round);
    }
    // The stalled handshakes time out and free their slots: a new client
    // gets in.
    let t = Instant::now();
    wait_until(handshake * 3, "stalled handshakes to time out", || {
        s.data_connections() == 1
    });
    println!("stalled handshakes closed {:?} later", t.elapsed());
    drop(idle);
    let mut late = Client::connect(s.data_addr, PeerRole::Backend, "late");
    serve_well(&mut late, 1, 30);
    serve_well(&mut good, 1, 31);
    mem.check("connection flood", 64 * MIB);
    assert_eq!(
        SERVER_PANICS.load(Ordering::SeqCst),
        0,
        "the server panicked"
    );
}

/// (b) A backend pipelines many 4 MiB reads and never reads a response: the
/// server stops reading its requests once the connection's response budget
/// is used up (memory stays bounded), and closes the connection after
/// `--peer-timeout-ms` without progress. Another backend is served
/// throughout.
#[test]
fn a_backend_that_never_reads_its_responses_is_bounded_and_cut_off() {
    count_server_panics();
    let dir = tempfile::tempdir().unwrap();
    let peer_timeout = Duration::from_millis(500);
    let s = server(
        dir.path(),
        "s1",
        Options {
            peer_timeout,
            response_budget: 32 << 20,
            ..Options::default()
        },
    );
    s.create_primary(VOL, SIZE).unwrap();
    let mut good = Client::connect(s.data_addr, PeerRole::Backend, "good");
    // Data, so each read copies 4 MiB into a response.
    let data = vec![7u8; MAX_PAYLOAD as usize];
    assert_eq!(good.op(Opcode::Write, 1, 0, MAX_PAYLOAD, &data), Status::Ok);
    serve_well(&mut good, 1, 0);
    let mem = Memory::watch();

    // 300 reads of 4 MiB: 1.2 GiB of responses if the server queued them all.
    let reads = 300u64;
    let mut hostile = Client::connect(s.data_addr, PeerRole::Backend, "hostile");
    let t = Instant::now();
    let mut batch = Vec::new();
    for i in 0..reads {
        let h = Header {
            request_id: i + 1,
            offset: 0,
            length: MAX_PAYLOAD,
            ..Header::request(Opcode::Read, 0, VOL, 1)
        };
        batch.extend_from_slice(&h.encode());
    }
    hostile.send_raw(&batch);
    println!(
        "hostile backend: {reads} reads of 4 MiB sent ({} bytes of requests) in {:?}",
        reads * HEADER_LEN as u64,
        t.elapsed()
    );
    // The good backend is served while the hostile one sits there, until
    // the server has closed the hostile connection.
    let deadline = Instant::now() + peer_timeout + Duration::from_secs(10);
    let mut round = 1;
    let closed_after = loop {
        serve_well(&mut good, 1, round);
        round += 1;
        if s.data_connections() == 1 {
            break Some(t.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
    };
    println!("good backend served {round} rounds meanwhile");
    mem.check("backend that never reads", 100 * MIB);
    let closed_after =
        closed_after.expect("the server never closed a connection whose peer stopped reading");
    println!("hostile connection closed by the server after {closed_after:?}");
    assert!(
        closed_within(&mut hostile.s, Duration::from_secs(5)),
        "the hostile backend's socket is still open"
    );
    serve_well(&mut good, 1, round);
    assert_eq!(
        SERVER_PANICS.load(Ordering::SeqCst),
        0,
        "the server panicked"
    );
}

/// A fake mirror for (c): completes the handshake as `id`, then never reads
/// again. The newest connection is held open; an older one is dropped when
/// the primary reconnects (its end was closed by then). Counts connections.
async fn deaf_mirror(listener: tokio::net::TcpListener, id: &'static str, count: Arc<AtomicUsize>) {
    let mut held = Vec::new();
    loop {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        if let Ok((_, halves)) = accept_as(s, &shared_pki(), id).await {
            count.fetch_add(1, Ordering::SeqCst);
            held.clear();
            held.push(halves);
        }
    }
}

/// (c) A syncing mirror accepts the replication connection and then stops
/// reading. Forwarded writes and resync pieces must not queue without
/// bound on the primary: the link is torn down when its queue or a frame's
/// deadline is exceeded, and the good client's writes keep being
/// acknowledged (a syncing mirror's acknowledgement does not count).
#[test]
fn a_syncing_mirror_that_stops_reading_is_cut_off_while_writes_go_on() {
    count_server_panics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let mirror_addr: SocketAddr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(deaf_mirror(l, "s-deaf", accepted.clone()));
        addr
    });
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        "s-primary",
        Options {
            peer_timeout: Duration::from_millis(500),
            mirror_queue: 16 << 20,
            ..Options::default()
        },
    );
    s.create_primary(VOL, SIZE).unwrap();
    s.set_primary_layout(VOL, &[], &[("s-deaf", mirror_addr)])
        .unwrap();
    wait_until(Duration::from_secs(10), "the syncing mirror's link", || {
        accepted.load(Ordering::SeqCst) >= 1
    });
    let mut good = Client::connect(s.data_addr, PeerRole::Backend, "good");
    let mem = Memory::watch();

    // 300 writes of 4 MiB: 1.2 GiB forwarded to the deaf mirror.
    let writes = 300u64;
    let data = vec![9u8; MAX_PAYLOAD as usize];
    let t = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..writes {
        let w = Instant::now();
        let offset = (i % (SIZE / u64::from(MAX_PAYLOAD))) * u64::from(MAX_PAYLOAD);
        assert_eq!(
            good.op(Opcode::Write, 1, offset, MAX_PAYLOAD, &data),
            Status::Ok,
            "write {i} was not acknowledged"
        );
        slowest = slowest.max(w.elapsed());
        if mem.growth() > 1536 * MIB {
            println!(
                "stopping early: memory grew past 1.5 GiB after {} writes",
                i + 1
            );
            break;
        }
    }
    serve_well(&mut good, 1, 0);
    println!(
        "{writes} writes of 4 MiB acknowledged in {:?} (slowest {slowest:?}); the deaf mirror was connected {} times",
        t.elapsed(),
        accepted.load(Ordering::SeqCst)
    );
    mem.check("syncing mirror that never reads", 100 * MIB);
    assert!(
        accepted.load(Ordering::SeqCst) >= 2,
        "the link to the deaf syncing mirror was never torn down"
    );
    assert!(
        s.synced(VOL).is_empty(),
        "a deaf mirror was reported synced"
    );
    assert_eq!(
        SERVER_PANICS.load(Ordering::SeqCst),
        0,
        "the server panicked"
    );
    drop(s);
    drop(rt);
}

/// What a fake in-sync mirror for (d) never acknowledges.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Hang {
    /// Flush (its disk hangs in fdatasync).
    Flush,
    /// FUA writes (the same, for writes that must be durable).
    Fua,
}

/// A fake in-sync mirror for (d): acknowledges every replica frame except
/// those `hang` names, which it reads and never answers.
async fn hanging_mirror(listener: tokio::net::TcpListener, id: &'static str, hang: Hang) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let Ok((_, (mut rd, mut wr))) = accept_as(s, &shared_pki(), id).await else {
                return;
            };
            let mut buf = Vec::new();
            while let Ok(h) = read_frame(&mut rd, &mut buf).await {
                let hangs = match hang {
                    Hang::Flush => h.opcode == Opcode::Flush,
                    Hang::Fua => h.flags.has(Flags::FUA),
                };
                if hangs {
                    continue;
                }
                if wr
                    .write_all(&h.response(Status::Ok).encode())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// (d) An in-sync mirror acknowledges writes but hangs on Flush (or on FUA
/// writes): the request is answered MirrorUnavailable within the mirror
/// timeout (not held forever), the link is torn down and the mirror
/// reported to the control service, which drops it; then the volume works
/// again.
fn mirror_hanging_on(hang: Hang) {
    count_server_panics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let primary_slot: Arc<Mutex<Option<Arc<LocalServer>>>> = Arc::default();
    let (reports_tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    // The fake control service and the primary share one CA.
    let pki = shared_pki();
    let control_addr: SocketAddr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let slot = primary_slot.clone();
        // Removes the reported mirror from the primary's layout (epoch + 1)
        // before answering, as the real control service does.
        let handler: fake_control::ReportHandler = Arc::new(move |r| {
            let slot = slot.clone();
            let reports = reports_tx.clone();
            Box::pin(async move {
                let _ = reports.send(r.clone());
                let primary = slot.lock().unwrap().clone();
                let primary = primary.ok_or_else(|| tonic::Status::unavailable("not yet"))?;
                let epoch = r.epoch + 1;
                let layout = Layout {
                    role: Role::Primary,
                    epoch,
                    mirrors: vec![],
                    primary_server_id: String::new(),
                    syncing: vec![],
                    attachment: 0,
                };
                tokio::task::spawn_blocking(move || primary.set_layout(VOL, layout))
                    .await
                    .map_err(|e| tonic::Status::internal(e.to_string()))?
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
                Ok(tonic::Response::new(pb::ReportUnreachableResponse {
                    outcome: pb::ReportOutcome::MirrorRemoved as i32,
                    epoch,
                    ..Default::default()
                }))
            })
        });
        tokio::spawn(fake_control::serve(l, &pki.control(), handler));
        addr
    });
    let mirror_addr: SocketAddr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(hanging_mirror(l, "s-hanging", hang));
        addr
    });
    let dir = tempfile::tempdir().unwrap();
    let mirror_timeout = Duration::from_millis(300);
    let primary = Arc::new(server(
        dir.path(),
        "s-primary",
        Options {
            control: Some(control_addr.to_string()),
            pki: Some(pki.clone()),
            mirror_timeout,
            ..Options::default()
        },
    ));
    primary
        .create_primary_with_mirrors(VOL, SIZE, &[("s-hanging", mirror_addr)])
        .unwrap();
    primary
        .wait_replicating(VOL, Duration::from_secs(10))
        .unwrap();
    *primary_slot.lock().unwrap() = Some(primary.clone());
    let mut good = Client::connect(primary.data_addr, PeerRole::Backend, "good");
    let mem = Memory::watch();

    // Plain writes are acknowledged by the mirror...
    for i in 0..8u64 {
        assert_eq!(
            good.op(Opcode::Write, 1, i * 4096, 4096, &[i as u8; 4096]),
            Status::Ok
        );
    }
    // ...the request it hangs on is not: answered MirrorUnavailable within
    // the mirror timeout (the backend holds it and retries), not held
    // forever.
    let request = match hang {
        Hang::Flush => Header::request(Opcode::Flush, 0, VOL, 1),
        Hang::Fua => Header {
            length: 4096,
            flags: Flags(Flags::FUA),
            ..Header::request(Opcode::Write, 0, VOL, 1)
        },
    };
    let payload = if hang == Hang::Fua {
        &[9u8; 4096][..]
    } else {
        &[]
    };
    let t = Instant::now();
    assert_eq!(
        good.call(request, payload).0.status,
        Status::MirrorUnavailable
    );
    let answered = t.elapsed();
    println!("{hang:?} answered MirrorUnavailable after {answered:?}");
    assert!(
        answered < mirror_timeout + Duration::from_secs(1),
        "answered late: {answered:?}"
    );
    // The overdue acknowledgement took the link down, and the mirror was
    // reported.
    let r = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), reports.recv()).await })
        .unwrap_or_else(|_| {
            panic!("the mirror hanging on {hang:?} was never reported to the control service")
        })
        .unwrap();
    println!("reported after {:?}", t.elapsed());
    assert_eq!(r.volume_id, VOL);
    assert_eq!(r.data_address, mirror_addr.to_string());
    wait_until(
        Duration::from_secs(10),
        "the layout without the mirror",
        || primary.epoch(VOL) == Some(2),
    );
    // Without the hung mirror, the volume works again.
    let mut retry = request;
    retry.epoch = 2;
    assert_eq!(good.call(retry, payload).0.status, Status::Ok);
    for round in 0..4 {
        serve_well(&mut good, 2, round);
    }
    mem.check(&format!("mirror that hangs on {hang:?}"), 64 * MIB);
    assert_eq!(
        SERVER_PANICS.load(Ordering::SeqCst),
        0,
        "the server panicked"
    );
    drop(good);
    *primary_slot.lock().unwrap() = None;
    drop(primary);
    drop(rt);
}

#[test]
fn a_mirror_that_hangs_on_flush_is_cut_off_and_reported() {
    mirror_hanging_on(Hang::Flush);
}

#[test]
fn a_mirror_that_hangs_on_fua_writes_is_cut_off_and_reported() {
    mirror_hanging_on(Hang::Fua);
}

/// A request gets exactly one response and the response echoes the opcode
/// and length the budget was computed from, whatever its status: a read
/// refused (out of range, stale epoch, wrong volume) still releases what
/// it reserved, so a connection sending only refused reads keeps working.
#[test]
fn refused_reads_release_their_budget() {
    count_server_panics();
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        "s1",
        Options {
            response_budget: 5 << 20,
            ..Options::default()
        },
    );
    s.create_primary(VOL, SIZE).unwrap();
    let mut c = Client::connect(s.data_addr, PeerRole::Backend, "b");
    // Many times the budget in refused 4 MiB reads, one at a time.
    for i in 0..64u64 {
        let (epoch, offset, volume) = match i % 3 {
            0 => (1, SIZE, VOL),  // past the end
            1 => (0, 0, VOL),     // stale epoch
            _ => (1, 0, VOL + 1), // another volume
        };
        let h = Header {
            offset,
            length: MAX_PAYLOAD,
            ..Header::request(Opcode::Read, 0, volume, epoch)
        };
        let (r, _) = c.call(h, &[]);
        assert_ne!(r.status, Status::Ok);
        assert_eq!((r.opcode, r.length), (Opcode::Read, MAX_PAYLOAD));
    }
    // Pipelined: 32 reads of 4 MiB against a 5 MiB budget, read in order.
    let mut batch = Vec::new();
    for i in 0..32u64 {
        let h = Header {
            request_id: 1000 + i,
            length: MAX_PAYLOAD,
            ..Header::request(Opcode::Read, 0, VOL, 1)
        };
        batch.extend_from_slice(&h.encode());
    }
    c.send_raw(&batch);
    c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    for _ in 0..32 {
        let r = basalt_proto::wire::read_frame(&mut c.r, &mut buf).unwrap();
        assert_eq!((r.status, buf.len()), (Status::Ok, MAX_PAYLOAD as usize));
    }
    serve_well(&mut c, 1, 0);
    assert_eq!(
        SERVER_PANICS.load(Ordering::SeqCst),
        0,
        "the server panicked"
    );
}
