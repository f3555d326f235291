//! The storage server over real TCP: replication to a mirror, fencing by
//! epoch, role checks, mirror loss, and hostile frames.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use basalt_proto::wire::{read_frame, write_frame, Flags, Header, Opcode, PeerRole, Status};
use basalt_storage::data_client::DataClient;
use basalt_storage::testing::LocalServer;
use common::{Client, SIZE, VOL};

fn pair() -> (tempfile::TempDir, LocalServer, LocalServer) {
    let dir = tempfile::tempdir().unwrap();
    let mirror = LocalServer::start(&dir.path().join("m"), "s-mirror").unwrap();
    let primary = LocalServer::start(&dir.path().join("p"), "s-primary").unwrap();
    mirror.create_mirror(VOL, SIZE, "s-primary").unwrap();
    primary
        .create_primary_with_mirrors(VOL, SIZE, &[("s-mirror", mirror.data_addr)])
        .unwrap();
    primary
        .wait_replicating(VOL, Duration::from_secs(10))
        .unwrap();
    (dir, primary, mirror)
}

#[test]
fn writes_reach_the_mirror_before_they_are_acknowledged() {
    let (_d, primary, mirror) = pair();
    let mut c = Client::connect(primary.data_addr, PeerRole::Backend, "b1");
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(c.op(Opcode::Write, 1, 4096, 65536, &data), Status::Ok);
    assert_eq!(c.op(Opcode::Discard, 1, 1 << 20, 8192, &[]), Status::Ok);
    assert_eq!(c.op(Opcode::WriteZeroes, 1, 4096, 512, &[]), Status::Ok);
    // A FUA write: synced on both copies before it is acknowledged.
    let fua = Header {
        offset: 2 << 20,
        length: 4096,
        flags: Flags(Flags::FUA),
        ..Header::request(Opcode::Write, 0, VOL, 1)
    };
    assert_eq!(c.call(fua, &[6; 4096]).0.status, Status::Ok);
    assert_eq!(c.op(Opcode::Flush, 1, 0, 0, &[]), Status::Ok);
    let (s, got) = c.read(1, 4096, 65536);
    assert_eq!(s, Status::Ok);
    assert_eq!(&got[..512], &[0u8; 512][..]);
    assert_eq!(&got[512..], &data[512..]);
    assert_eq!(
        primary.read_copy(VOL).unwrap(),
        mirror.read_copy(VOL).unwrap()
    );
    println!("primary and mirror copies identical ({SIZE} bytes compared)");
}

#[test]
fn fencing_roles_and_bounds() {
    let (_d, primary, mirror) = pair();
    let mut c = Client::connect(primary.data_addr, PeerRole::Backend, "b1");
    // The control service raises the epoch (mirrors first); older epochs
    // are refused from then on.
    mirror.raise(VOL, 5, 0).unwrap();
    primary.raise(VOL, 5, 0).unwrap();
    assert_eq!(c.op(Opcode::Write, 5, 0, 512, &[1; 512]), Status::Ok);
    let h = Header {
        length: 512,
        ..Header::request(Opcode::Write, 0, VOL, 4)
    };
    let (r, _) = c.call(h, &[2; 512]);
    assert_eq!(r.status, Status::StaleEpoch);
    assert_eq!(r.epoch, 5, "a StaleEpoch answer carries the copy's epoch");
    // Out of range, misaligned, unknown volume.
    assert_eq!(
        c.op(Opcode::Write, 5, SIZE - 512, 1024, &[0; 1024]),
        Status::OutOfRange
    );
    assert_eq!(
        c.op(Opcode::Read, 5, u64::MAX - 511, 512, &[]),
        Status::OutOfRange
    );
    assert_eq!(
        c.op(Opcode::Write, 5, 100, 512, &[0; 512]),
        Status::InvalidRequest
    );
    let h = Header {
        length: 512,
        ..Header::request(Opcode::Read, 0, 999, 5)
    };
    // Not the volume this backend connection named in its handshake...
    assert_eq!(c.call(h, &[]).0.status, Status::InvalidRequest);
    // ...and, named, not a volume this server holds.
    let mut other = Client::connect_as(primary.data_addr, PeerRole::Backend, "b999", 999, 0);
    assert_eq!(other.call(h, &[]).0.status, Status::NoSuchVolume);
    // A backend cannot write to a mirror; a stranger cannot replicate to it.
    let mut b = Client::connect(mirror.data_addr, PeerRole::Backend, "b2");
    assert_eq!(b.op(Opcode::Write, 5, 0, 512, &[3; 512]), Status::WrongRole);
    let mut r = Client::connect(mirror.data_addr, PeerRole::Replication, "s-intruder");
    let h = Header {
        length: 512,
        flags: Flags(Flags::REPLICA),
        ..Header::request(Opcode::Write, 0, VOL, 5)
    };
    assert_eq!(r.call(h, &[4; 512]).0.status, Status::WrongRole);
    // Nothing of the refused writes landed on the mirror.
    assert!(!mirror.read_copy(VOL).unwrap()[..512].contains(&3));
    assert!(!mirror.read_copy(VOL).unwrap()[..512].contains(&4));
}

/// Epochs come only from the control service: a data request carrying a
/// newer epoch (one step ahead, or u64::MAX) is answered LayoutPending and
/// changes neither the copy's epoch nor its data, and the volume keeps
/// serving its real backend. (Before, one such read raised the persisted
/// epoch for good and fenced the real backend.)
#[test]
fn data_requests_never_raise_an_epoch() {
    let (_d, primary, mirror) = pair();
    let mut good = Client::connect(primary.data_addr, PeerRole::Backend, "b1");
    assert_eq!(good.op(Opcode::Write, 1, 0, 512, &[7; 512]), Status::Ok);
    let mut evil = Client::connect(primary.data_addr, PeerRole::Backend, "evil");
    for epoch in [2, u64::MAX] {
        for (op, len, payload) in [
            (Opcode::Read, 512, &[][..]),
            (Opcode::Write, 512, &[9; 512][..]),
            (Opcode::Flush, 0, &[][..]),
            (Opcode::Discard, 512, &[][..]),
            (Opcode::WriteZeroes, 512, &[][..]),
        ] {
            assert_eq!(
                evil.op(op, epoch, 0, len, payload),
                Status::LayoutPending,
                "{op:?} at epoch {epoch}"
            );
        }
    }
    // A replica frame from the real primary's id is no different.
    let mut r = Client::connect(mirror.data_addr, PeerRole::Replication, "s-primary");
    let h = Header {
        length: 512,
        flags: Flags(Flags::REPLICA),
        ..Header::request(Opcode::Write, 0, VOL, u64::MAX)
    };
    assert_eq!(r.call(h, &[9; 512]).0.status, Status::LayoutPending);
    for s in [&primary, &mirror] {
        assert_eq!(s.epoch(VOL), Some(1));
        assert_eq!(s.copy(VOL).unwrap().meta().epoch, 1, "persisted epoch");
        assert_eq!(&s.read_copy(VOL).unwrap()[..512], &[7; 512][..]);
    }
    // The real backend is still served.
    assert_eq!(good.op(Opcode::Write, 1, 512, 512, &[8; 512]), Status::Ok);
    assert_eq!(good.read(1, 0, 1024).1[512..], [8; 512]);
    assert_eq!(good.op(Opcode::Flush, 1, 0, 0, &[]), Status::Ok);
}

/// One writer per volume: a backend whose attachment was superseded gets
/// Fenced on every request, on the primary and on a promoted mirror, and
/// lands nothing; a backend of the new attachment is served; a backend
/// connection addresses only the volume its handshake named.
#[test]
fn superseded_attachments_are_fenced() {
    let (_d, primary, mirror) = pair();
    let backend =
        |addr, id, attachment| Client::connect_as(addr, PeerRole::Backend, id, VOL, attachment);
    mirror.raise(VOL, 1, 1).unwrap();
    primary.raise(VOL, 1, 1).unwrap();
    let mut old = backend(primary.data_addr, "node1", 1);
    assert_eq!(old.op(Opcode::Write, 1, 0, 512, &[1; 512]), Status::Ok);
    // Forced attach elsewhere: attachment 2 (with epoch 2), mirrors first.
    mirror.raise(VOL, 2, 2).unwrap();
    primary.raise(VOL, 2, 2).unwrap();
    let mut new = backend(primary.data_addr, "node2", 2);
    assert_eq!(new.op(Opcode::Write, 2, 0, 512, &[2; 512]), Status::Ok);
    // The old backend, even with the current epoch (learnt somehow).
    for epoch in [1, 2] {
        for (op, len, payload) in [
            (Opcode::Write, 512, &[6; 512][..]),
            (Opcode::Read, 512, &[][..]),
            (Opcode::Flush, 0, &[][..]),
            (Opcode::Discard, 512, &[][..]),
        ] {
            let s = old.op(op, epoch, 0, len, payload);
            let want = if epoch == 1 {
                Status::StaleEpoch
            } else {
                Status::Fenced
            };
            assert_eq!(s, want, "{op:?} at epoch {epoch}");
        }
    }
    // A fresh connection of the old attachment fares no better.
    let mut again = backend(primary.data_addr, "node1", 1);
    assert_eq!(
        again.op(Opcode::Write, 2, 0, 512, &[6; 512]),
        Status::Fenced
    );
    // An attachment the copy has not been told of yet: retry later.
    let mut ahead = backend(primary.data_addr, "node3", 3);
    assert_eq!(
        ahead.op(Opcode::Read, 2, 0, 512, &[]),
        Status::LayoutPending
    );
    // Another volume than the handshake named.
    let h = Header {
        length: 512,
        ..Header::request(Opcode::Read, 0, VOL + 1, 2)
    };
    assert_eq!(new.call(h, &[]).0.status, Status::InvalidRequest);
    assert_eq!(&primary.read_copy(VOL).unwrap()[..512], &[2; 512][..]);
    assert_eq!(&mirror.read_copy(VOL).unwrap()[..512], &[2; 512][..]);
    // The mirror, promoted, fences the old attachment too.
    mirror
        .set_layout(
            VOL,
            basalt_storage::store::Layout {
                role: basalt_storage::meta::Role::Primary,
                epoch: 3,
                mirrors: vec![],
                primary_server_id: String::new(),
                syncing: vec![],
                attachment: 2,
            },
        )
        .unwrap();
    let mut old_on_mirror = backend(mirror.data_addr, "node1", 1);
    assert_eq!(
        old_on_mirror.op(Opcode::Write, 3, 0, 512, &[6; 512]),
        Status::Fenced
    );
    let mut new_on_mirror = backend(mirror.data_addr, "node2", 2);
    assert_eq!(new_on_mirror.read(3, 0, 512), (Status::Ok, vec![2; 512]));
}

#[test]
fn a_lost_mirror_blocks_acknowledgements() {
    let (_d, primary, mirror) = pair();
    let mut c = Client::connect(primary.data_addr, PeerRole::Backend, "b1");
    assert_eq!(c.op(Opcode::Write, 1, 0, 512, &[1; 512]), Status::Ok);
    drop(mirror);
    for i in 0..5 {
        assert_eq!(
            c.op(Opcode::Write, 1, 512 * i, 512, &[9; 512]),
            Status::MirrorUnavailable
        );
        assert_eq!(c.op(Opcode::Flush, 1, 0, 0, &[]), Status::MirrorUnavailable);
    }
    // Reads are still served by the primary.
    assert_eq!(c.read(1, 0, 512).0, Status::Ok);
}

#[test]
fn hostile_frames_close_the_connection_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalServer::start(dir.path(), "s1").unwrap();
    s.create_primary(VOL, SIZE).unwrap();
    let garbage: [&[u8]; 3] = [b"GET / HTTP/1.1\r\n\r\n", &[0u8; 64], &[0xff; 200]];
    for g in garbage {
        // Sealed garbage (a peer that authenticated, then misbehaves).
        let mut c = Client::connect(s.data_addr, PeerRole::Backend, "evil");
        c.send_raw(g);
        // A short fragment is not a frame yet: end the stream so the server sees truncation.
        c.s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut buf = Vec::new();
        assert!(
            read_frame(&mut c.r, &mut buf).is_err(),
            "server must close after garbage"
        );
        // Unsealed bytes on an authenticated connection.
        let mut c = Client::connect(s.data_addr, PeerRole::Backend, "evil");
        c.s.write_all(g).unwrap();
        assert!(read_frame(&mut c.r, &mut buf).is_err());
    }
    // A frame whose payload checksum is wrong.
    let mut c = Client::connect(s.data_addr, PeerRole::Backend, "evil");
    let mut h = Header {
        length: 512,
        ..Header::request(Opcode::Write, 1, VOL, 1)
    }
    .with_payload(&[5; 512]);
    h.payload_crc ^= 1;
    write_frame(&mut c.w, &h, &[&[5; 512]]).unwrap();
    let mut buf = Vec::new();
    assert!(read_frame(&mut c.r, &mut buf).is_err());
    // No TLS at all: the server never gets to a frame.
    let mut raw = TcpStream::connect(s.data_addr).unwrap();
    write_frame(
        &mut raw,
        &Header {
            length: 512,
            ..Header::request(Opcode::Write, 1, VOL, 1)
        }
        .with_payload(&[5; 512]),
        &[&[5; 512]],
    )
    .unwrap();
    assert!(read_frame(&mut raw, &mut buf).is_err());
    // A grant for another volume, or a node's grant shown by another node.
    let pki = basalt_storage::testing::shared_pki();
    let (creds, mut hello) = basalt_storage::data_client::backend(&pki, "x", VOL + 1, 0);
    hello.volume_id = VOL;
    let e = DataClient::connect(s.data_addr, &creds, &hello)
        .err()
        .unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    let (_, hello) = basalt_storage::data_client::backend(&pki, "y", VOL, 0);
    assert!(DataClient::connect(s.data_addr, &creds, &hello).is_err());
    assert!(
        s.read_copy(VOL).unwrap().iter().all(|&b| b == 0),
        "no hostile byte was written"
    );
}

#[test]
fn a_new_mirror_is_filled_while_writes_continue() {
    let (dir, primary, m1) = pair();
    let m2 = LocalServer::start(&dir.path().join("m2"), "s-new").unwrap();
    m2.create_mirror(VOL, SIZE, "s-primary").unwrap();
    let mut c = Client::connect(primary.data_addr, PeerRole::Backend, "b1");
    // Fill part of the volume (the rest stays holes), then keep writing.
    for i in 0..64u64 {
        let block: Vec<u8> = (0..65536u32).map(|j| (j as u64 * 31 + i) as u8).collect();
        assert_eq!(c.op(Opcode::Write, 1, i * 65536, 65536, &block), Status::Ok);
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let done = done.clone();
        let addr = primary.data_addr;
        std::thread::spawn(move || {
            let mut c = Client::connect(addr, PeerRole::Backend, "b2");
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let off = (n * 7919 % 2048) * 4096;
                let st = c.op(Opcode::Write, 1, off, 4096, &[(n % 251) as u8; 4096]);
                assert_eq!(
                    st,
                    Status::Ok,
                    "writes keep being acknowledged during the full copy"
                );
                n += 1;
                done.store(n, std::sync::atomic::Ordering::Relaxed);
            }
            n
        })
    };
    primary
        .set_primary_layout(
            VOL,
            &[("s-mirror", m1.data_addr)],
            &[("s-new", m2.data_addr)],
        )
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !primary.synced(VOL).contains(&"s-new".to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "full copy did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Writes after the copy finished still reach the new mirror, in order:
    // let a few hundred more be acknowledged before stopping.
    let after = done.load(std::sync::atomic::Ordering::Relaxed) + 300;
    while done.load(std::sync::atomic::Ordering::Relaxed) < after {
        assert!(!writer.is_finished(), "the writer stopped");
        std::thread::yield_now();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert_eq!(c.op(Opcode::Flush, 1, 0, 0, &[]), Status::Ok);
    let p = primary.read_copy(VOL).unwrap();
    assert_eq!(p, m1.read_copy(VOL).unwrap());
    assert!(
        p == m2.read_copy(VOL).unwrap(),
        "the new mirror differs from the primary"
    );
    println!("full copy with {writes} concurrent writes: three copies identical");
}

/// A write or discard far past the end of the volume, sent while the
/// primary keeps a dirty-region map for an absent mirror, is refused before
/// anything is marked. (Before, the map grew to cover the offset: an
/// allocation of exabytes that aborted the process, so any backend could
/// take down every server holding a copy in turn.)
#[test]
fn a_range_past_the_end_marks_nothing() {
    let (_d, primary, _mirror) = pair();
    // The mirror leaves the in-sync set: the primary now tracks it.
    primary.set_primary_layout(VOL, &[], &[]).unwrap();
    assert_eq!(
        primary.copy(VOL).unwrap().dirty.tracking(),
        vec!["s-mirror"]
    );
    let mut c = Client::connect(primary.data_addr, PeerRole::Backend, "evil");
    for offset in [1u64 << 62, u64::MAX - 511, SIZE] {
        assert_eq!(
            c.op(Opcode::Write, 1, offset, 512, &[1; 512]),
            Status::OutOfRange
        );
        assert_eq!(
            c.op(Opcode::Discard, 1, offset, 1 << 30, &[]),
            Status::OutOfRange
        );
        assert_eq!(
            c.op(Opcode::WriteZeroes, 1, offset, 512, &[]),
            Status::OutOfRange
        );
    }
    // Nothing was marked, and the volume is still served.
    let copy = primary.copy(VOL).unwrap();
    let map = copy.dirty.take("s-mirror").unwrap();
    assert!(map.is_empty(), "a refused request marked the map");
    assert_eq!(c.op(Opcode::Write, 1, 0, 512, &[2; 512]), Status::Ok);
    assert_eq!(c.read(1, 0, 512), (Status::Ok, vec![2; 512]));
}
