//! The backend's virtio-blk request parser (`vhost-backend/src/request`),
//! driven through virtio-queue's real split-queue code: arbitrary guest
//! memory contents, an arbitrary descriptor table (addresses, lengths,
//! flags including NEXT / WRITE / INDIRECT, next indices), an optional
//! indirect table, and an arbitrary chain head.
//!
//! Invariants checked on top of "no panic" (what `Request::parse` promises):
//! - status: a parsed (or rejected-with-status) request's status address is
//!   the chain's last descriptor, which is device-writable, 1 byte, in memory;
//! - header: first descriptor device-readable, >= 16 bytes, readable, and the
//!   request kind matches its type field; read-only disks get no
//!   OUT / DISCARD / WRITE_ZEROES;
//! - data: the segments are exactly the non-empty middle descriptors, in
//!   order, each entirely inside guest memory, device-writable for IN and
//!   GET_ID, device-readable for OUT (and for DISCARD / WRITE_ZEROES, whose
//!   segment is consumed: `data` is empty afterwards); total <=
//!   `MAX_REQUEST_BYTES`;
//! - IN / OUT: offset = sector * 512, len = total data bytes, a multiple of
//!   512, offset + len <= capacity; GET_ID: len = total data bytes;
//!   DISCARD / WRITE_ZEROES: len <= 1 GiB, a multiple of 512, in capacity,
//!   unmap only for WRITE_ZEROES;
//! - parsing into a reused `Request` gives the same result as a fresh one.

#![no_main]

use std::cell::RefCell;

use arbitrary::Arbitrary;
use basalt_vhost_backend::request::{Limits, Request, RequestKind, Segment, HEADER_LEN};
use basalt_vhost_backend::virtio_blk::{MAX_DISCARD_SECTORS, MAX_REQUEST_BYTES};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory: the queue and some data at 0, a hole, then two adjacent
/// regions (a buffer may span them).
const REGIONS: [(u64, u64); 3] = [(0, 0x1_0000), (0x10_0000, 0x1_0000), (0x11_0000, 0x1000)];
/// Where the indirect descriptor table goes (in region 1).
const INDIRECT: u64 = 0x10_8000;
const EDGES: [u64; 7] = [
    0,
    0x1_0000,
    0x10_0000,
    0x11_0000,
    0x11_1000,
    INDIRECT,
    u64::MAX,
];
const MAX_INDIRECT: usize = 32;
const SECTOR: u64 = 512;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    R0(u16),
    R1(u16),
    Edge(u8, i16),
    Indirect(u8),
    Raw(u64),
}

impl Addr {
    fn resolve(self) -> u64 {
        match self {
            Addr::R0(o) => u64::from(o),
            Addr::R1(o) => REGIONS[1].0 + u64::from(o),
            Addr::Edge(i, d) => {
                EDGES[usize::from(i) % EDGES.len()].wrapping_add_signed(i64::from(d))
            }
            Addr::Indirect(i) => INDIRECT + 16 * u64::from(i),
            Addr::Raw(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    /// 1: a status descriptor.
    One,
    /// 16: a request header or a discard segment.
    Sixteen,
    Sectors(u8),
    Small(u8),
    /// A whole number of descriptors (for indirect tables).
    Descs(u8),
    Raw(u32),
}

impl Len {
    fn resolve(self) -> u32 {
        match self {
            Len::One => 1,
            Len::Sixteen => 16,
            Len::Sectors(n) => u32::from(n) * 512,
            Len::Small(n) => u32::from(n),
            Len::Descs(n) => u32::from(n) * 16,
            Len::Raw(n) => n,
        }
    }
}

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Desc {
    addr: Addr,
    len: Len,
    /// bit 0 NEXT, bit 1 WRITE; INDIRECT when bits 2..5 are all set (1 in 8,
    /// as it ends most chains); when bits 5..8 are all set, the high byte
    /// also goes into the flags (bits a device must ignore).
    flags: u8,
    next: u8,
}

impl Desc {
    /// The descriptor at index `i`; in a `linked` table NEXT and `next` are
    /// set to make one chain of `n` descriptors, like a driver would.
    fn raw(self, i: usize, n: usize, linked: bool) -> RawDescriptor {
        let f = u16::from(self.flags);
        let mut flags = f & (F_NEXT | F_WRITE);
        if f & 0x1c == 0x1c {
            flags |= F_INDIRECT;
        }
        if f & 0xe0 == 0xe0 {
            flags |= (f << 8) & 0xfff8;
        }
        let mut next = u16::from(self.next);
        if linked {
            if i + 1 < n {
                flags |= F_NEXT;
                next = i as u16 + 1;
            } else {
                flags &= !F_NEXT;
            }
        }
        RawDescriptor::from(SplitDescriptor::new(
            self.addr.resolve(),
            self.len.resolve(),
            flags,
            next,
        ))
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sector {
    Small(u16),
    Raw(u64),
}

impl Sector {
    fn resolve(self) -> u64 {
        match self {
            Sector::Small(s) => u64::from(s),
            Sector::Raw(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Payload {
    BlkHeader {
        ty: u8,
        sector: Sector,
    },
    Segment {
        sector: Sector,
        sectors: u32,
        flags: u32,
    },
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Target {
    Desc(u8),
    IndirectDesc(u8),
    At(Addr),
}

#[derive(Arbitrary, Debug)]
struct Write {
    at: Target,
    data: Payload,
}

#[derive(Arbitrary, Debug)]
enum Capacity {
    Small(u16),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: Capacity,
    read_only: bool,
    queue_log2: u8,
    /// Descriptor tables are one chain from index 0 in order (as drivers
    /// build them); otherwise flags, next indices and the head are raw.
    linked: bool,
    head: u8,
    descs: Vec<Desc>,
    indirect: Vec<Desc>,
    writes: Vec<Write>,
}

fn blk_type(t: u8) -> u32 {
    match t % 8 {
        0 => VIRTIO_BLK_T_IN,
        1 => VIRTIO_BLK_T_OUT,
        2 => VIRTIO_BLK_T_FLUSH,
        3 => VIRTIO_BLK_T_GET_ID,
        4 => VIRTIO_BLK_T_DISCARD,
        5 => VIRTIO_BLK_T_WRITE_ZEROES,
        _ => u32::from(t),
    }
}

fn payload_bytes(p: &Payload) -> Vec<u8> {
    match p {
        Payload::BlkHeader { ty, sector } => {
            let mut b = vec![0u8; 16];
            b[0..4].copy_from_slice(&blk_type(*ty).to_le_bytes());
            b[8..16].copy_from_slice(&sector.resolve().to_le_bytes());
            b
        }
        Payload::Segment {
            sector,
            sectors,
            flags,
        } => {
            let mut b = vec![0u8; 16];
            b[0..8].copy_from_slice(&sector.resolve().to_le_bytes());
            b[8..12].copy_from_slice(&sectors.to_le_bytes());
            b[12..16].copy_from_slice(&flags.to_le_bytes());
            b
        }
        Payload::Bytes(b) => b.iter().copied().take(64).collect(),
    }
}

/// Independent of vm-memory: is `[addr, addr+len)` covered by the regions?
fn in_memory(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let mut cur = addr;
    while cur < end {
        match REGIONS.iter().find(|(b, s)| cur >= *b && cur < b + s) {
            Some((b, s)) => cur = b + s,
            None => return false,
        }
    }
    true
}

/// `BASALT_FUZZ_SHOW=1`: print what each input parsed to (to pick seeds).
fn show() -> bool {
    static S: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *S.get_or_init(|| std::env::var_os("BASALT_FUZZ_SHOW").is_some())
}

thread_local! {
    static REUSED: RefCell<Request> = RefCell::new(Request::default());
}

fn same(a: &Request, b: &Request) -> bool {
    a.kind == b.kind
        && a.offset == b.offset
        && a.len == b.len
        && a.unmap == b.unmap
        && a.data == b.data
        && a.status == b.status
}

fuzz_target!(|input: Input| {
    let qsize: u16 = 1 << (input.queue_log2 % 9); // 1..=256
    let capacity_sectors = match input.capacity {
        Capacity::Small(s) => u64::from(s),
        // A disk's size in bytes fits a u64.
        Capacity::Raw(s) => s >> 9,
    };
    let limits = Limits {
        capacity_sectors,
        read_only: input.read_only,
    };
    let ranges: Vec<(GuestAddress, usize)> = REGIONS
        .iter()
        .map(|&(b, s)| (GuestAddress(b), s as usize))
        .collect();
    let mem: GuestMemoryMmap<()> = GuestMemoryMmap::from_ranges(&ranges).unwrap();

    let vq = MockSplitQueue::create(&mem, GuestAddress(0), qsize);
    let descs: Vec<Desc> = input
        .descs
        .iter()
        .copied()
        .take(usize::from(qsize))
        .collect();
    for (i, d) in descs.iter().enumerate() {
        let raw = d.raw(i, descs.len(), input.linked);
        vq.desc_table().store(i as u16, raw).unwrap();
    }
    let indirect: Vec<Desc> = input.indirect.iter().copied().take(MAX_INDIRECT).collect();
    for (i, d) in indirect.iter().enumerate() {
        let raw = d.raw(i, indirect.len(), input.linked);
        mem.write_obj(raw, GuestAddress(INDIRECT + 16 * i as u64))
            .unwrap();
    }
    for w in input.writes.iter().take(16) {
        let at = match w.at {
            Target::Desc(i) if !descs.is_empty() => {
                descs[usize::from(i) % descs.len()].addr.resolve()
            }
            Target::IndirectDesc(i) if !indirect.is_empty() => {
                indirect[usize::from(i) % indirect.len()].addr.resolve()
            }
            Target::At(a) => a.resolve(),
            _ => continue,
        };
        // Partial or failed writes are fine: the guest wrote what it could.
        let _ = mem.write_slice(&payload_bytes(&w.data), GuestAddress(at));
    }
    // Publish one chain.
    vq.avail().ring().ref_at(0).unwrap().store(if input.linked {
        0
    } else {
        u16::from(input.head)
    });
    vq.avail().idx().store(1);

    let mut q: Queue = vq.create_queue().unwrap();
    let Some(chain) = q.iter(&mem).unwrap().next() else {
        return;
    };
    // What the device sees, for the oracle.
    let seen: Vec<SplitDescriptor> = chain.clone().collect();

    let mut req = Request::default();
    let r = req.parse(chain.clone(), &mem, &limits);
    if show() {
        match &r {
            Ok(()) => eprintln!(
                "parsed: {:?} offset {} len {} segments {}",
                req.kind,
                req.offset,
                req.len,
                req.data.len()
            ),
            Err(rej) => eprintln!("rejected: {}", rej.error),
        }
    }
    // The same chain into a reused request must give the same answer.
    REUSED.with(|reused| {
        let mut reused = reused.borrow_mut();
        let r2 = reused.parse(chain, &mem, &limits);
        assert_eq!(r, r2, "reused request parsed differently");
        if r.is_ok() {
            assert!(same(&req, &reused), "reused request parsed differently");
        }
    });

    let status_ok =
        |d: &SplitDescriptor| d.flags() & F_WRITE != 0 && d.len() == 1 && in_memory(d.addr().0, 1);
    match r {
        Err(rej) => {
            if let Some(st) = rej.status {
                let last = seen.last().expect("a status without descriptors");
                assert_eq!(st, last.addr());
                assert!(status_ok(last), "status given for a bad status descriptor");
            }
        }
        Ok(()) => {
            let n = seen.len();
            assert!(n >= 2, "request parsed from {n} descriptors");
            let (hdr, last) = (&seen[0], &seen[n - 1]);
            assert_eq!(req.status, last.addr());
            assert!(status_ok(last));
            assert_eq!(hdr.flags() & F_WRITE, 0, "header is device-writable");
            assert!(hdr.len() >= HEADER_LEN);
            assert!(in_memory(hdr.addr().0, u64::from(HEADER_LEN)));
            let mut hb = [0u8; 16];
            mem.read_slice(&mut hb, hdr.addr()).unwrap();
            let ty = u32::from_le_bytes(hb[0..4].try_into().unwrap());
            let sector = u64::from_le_bytes(hb[8..16].try_into().unwrap());
            let want_kind = match ty {
                VIRTIO_BLK_T_IN => RequestKind::In,
                VIRTIO_BLK_T_OUT => RequestKind::Out,
                VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
                VIRTIO_BLK_T_GET_ID => RequestKind::GetId,
                VIRTIO_BLK_T_DISCARD => RequestKind::Discard,
                VIRTIO_BLK_T_WRITE_ZEROES => RequestKind::WriteZeroes,
                other => panic!("unknown type {other} accepted"),
            };
            assert_eq!(req.kind, want_kind);
            if req.kind == RequestKind::Flush {
                assert!(req.data.is_empty());
                return;
            }
            if limits.read_only {
                assert!(matches!(req.kind, RequestKind::In | RequestKind::GetId));
            }
            let middle = &seen[1..n - 1];
            let device_writes = matches!(req.kind, RequestKind::In | RequestKind::GetId);
            let mut total = 0u64;
            for d in middle {
                assert_eq!(
                    d.flags() & F_WRITE != 0,
                    device_writes,
                    "{:?} data descriptor with the wrong direction",
                    req.kind
                );
                assert!(
                    in_memory(d.addr().0, u64::from(d.len())),
                    "data descriptor {:#x}+{} outside guest memory",
                    d.addr().0,
                    d.len()
                );
                total += u64::from(d.len());
            }
            assert!(total > 0 && total <= MAX_REQUEST_BYTES);
            let segs: Vec<Segment> = middle
                .iter()
                .filter(|d| d.len() > 0)
                .map(|d| Segment {
                    addr: d.addr(),
                    len: d.len(),
                })
                .collect();
            let cap_bytes = u128::from(capacity_sectors) * u128::from(SECTOR);
            match req.kind {
                RequestKind::In | RequestKind::Out => {
                    assert_eq!(req.data, segs);
                    assert_eq!(req.len, total);
                    assert_eq!(req.len % SECTOR, 0);
                    assert_eq!(u128::from(req.offset), u128::from(sector) * 512);
                    assert!(u128::from(req.offset) + u128::from(req.len) <= cap_bytes);
                }
                RequestKind::GetId => {
                    assert_eq!(req.data, segs);
                    assert_eq!(req.len, total);
                }
                RequestKind::Discard | RequestKind::WriteZeroes => {
                    assert!(req.data.is_empty());
                    assert_eq!(total, 16);
                    assert!(req.len <= u64::from(MAX_DISCARD_SECTORS) * SECTOR);
                    assert_eq!(req.len % SECTOR, 0);
                    assert_eq!(req.offset % SECTOR, 0);
                    assert!(u128::from(req.offset) + u128::from(req.len) <= cap_bytes);
                    if req.kind == RequestKind::Discard {
                        assert!(!req.unmap);
                    }
                }
                RequestKind::Flush => unreachable!(),
            }
        }
    }
});
