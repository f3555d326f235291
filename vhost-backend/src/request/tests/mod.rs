//! Unit tests of request parsing, with chains built by virtio-queue's mock
//! split queue.

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio_blk::{STATUS_IOERR, STATUS_UNSUPP};

mod invalid;

const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const HDR: u64 = 0x1000;
const DATA: u64 = 0x2000;
const STATUS: u64 = 0x9000;
const OUTSIDE: u64 = 0x2000_0000;
const LIMITS: Limits = Limits {
    capacity_sectors: 1024,
    read_only: false,
};
const RO: Limits = Limits {
    capacity_sectors: 1024,
    read_only: true,
};

fn mem() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn header(m: &GuestMemoryMmap<()>, req_type: u32, sector: u64) {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&req_type.to_le_bytes());
    b[8..16].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&b, GuestAddress(HDR)).unwrap();
}

fn segment(m: &GuestMemoryMmap<()>, sector: u64, sectors: u32, flags: u32) {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&sector.to_le_bytes());
    b[8..12].copy_from_slice(&sectors.to_le_bytes());
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    m.write_slice(&b, GuestAddress(DATA)).unwrap();
}

fn parse_with(
    m: &GuestMemoryMmap<()>,
    descs: &[RawDescriptor],
    limits: &Limits,
) -> (Request, Result<(), Rejected>) {
    let vq = MockSplitQueue::new(m, 16);
    let chain = vq.build_desc_chain(descs).unwrap();
    let mut req = Request::default();
    let r = req.parse(chain, m, limits);
    (req, r)
}

fn parse(m: &GuestMemoryMmap<()>, descs: &[RawDescriptor]) -> (Request, Result<(), Rejected>) {
    parse_with(m, descs, &LIMITS)
}

fn rejected(r: Result<(), Rejected>) -> (RequestError, Option<GuestAddress>) {
    let rej = r.expect_err("request should be rejected");
    (rej.error, rej.status)
}

fn status_some() -> Option<GuestAddress> {
    Some(GuestAddress(STATUS))
}

#[test]
fn read_with_two_segments() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 8);
    let (req, r) = parse(
        &m,
        &[
            d(HDR, 16, R),
            d(DATA, 512, W),
            d(DATA + 0x1000, 1024, W),
            d(STATUS, 1, W),
        ],
    );
    r.unwrap();
    assert_eq!(req.kind, RequestKind::In);
    assert_eq!((req.offset, req.len), (4096, 1536));
    assert_eq!(
        req.data,
        vec![
            Segment {
                addr: GuestAddress(DATA),
                len: 512
            },
            Segment {
                addr: GuestAddress(DATA + 0x1000),
                len: 1024
            },
        ]
    );
    assert_eq!(req.status, GuestAddress(STATUS));
}

#[test]
fn write_flush_get_id() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_OUT, 1023);
    let (req, r) = parse(&m, &[d(HDR, 16, R), d(DATA, 512, R), d(STATUS, 1, W)]);
    r.unwrap();
    assert_eq!(
        (req.kind, req.offset, req.len),
        (RequestKind::Out, 1023 * 512, 512)
    );

    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    let (req, r) = parse(&m, &[d(HDR, 16, R), d(STATUS, 1, W)]);
    r.unwrap();
    assert_eq!((req.kind, req.len), (RequestKind::Flush, 0));

    header(&m, VIRTIO_BLK_T_GET_ID, 0);
    let (req, r) = parse(&m, &[d(HDR, 16, R), d(DATA, 20, W), d(STATUS, 1, W)]);
    r.unwrap();
    assert_eq!((req.kind, req.len), (RequestKind::GetId, 20));
    // Reading is allowed on a read-only disk, and so is GET_ID.
    header(&m, VIRTIO_BLK_T_IN, 0);
    parse_with(&m, &[d(HDR, 16, R), d(DATA, 512, W), d(STATUS, 1, W)], &RO)
        .1
        .unwrap();
}

#[test]
fn discard_and_write_zeroes() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_DISCARD, 0);
    segment(&m, 16, 32, 0);
    let (req, r) = parse(&m, &[d(HDR, 16, R), d(DATA, 16, R), d(STATUS, 1, W)]);
    r.unwrap();
    assert_eq!(
        (req.kind, req.offset, req.len, req.unmap),
        (RequestKind::Discard, 8192, 16384, false)
    );
    assert!(req.data.is_empty());

    header(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&m, 1000, 24, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    let (req, r) = parse(
        &m,
        &[
            d(HDR, 16, R),
            d(DATA, 8, R),
            d(DATA + 8, 8, R),
            d(STATUS, 1, W),
        ],
    );
    r.unwrap();
    assert_eq!(
        (req.kind, req.offset, req.len, req.unmap),
        (RequestKind::WriteZeroes, 512_000, 12288, true)
    );
}

#[test]
fn request_is_reused_cleanly() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    let vq = MockSplitQueue::new(&m, 16);
    let mut req = Request::default();
    let chain = vq
        .build_desc_chain(&[d(HDR, 16, R), d(DATA, 4096, W), d(STATUS, 1, W)])
        .unwrap();
    req.parse(chain, &m, &LIMITS).unwrap();
    assert_eq!(req.data.len(), 1);
    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    let chain = vq
        .build_desc_chain(&[d(HDR, 16, R), d(STATUS + 1, 1, W)])
        .unwrap();
    req.parse(chain, &m, &LIMITS).unwrap();
    assert_eq!((req.kind, req.len, req.offset), (RequestKind::Flush, 0, 0));
    assert!(req.data.is_empty());
    assert_eq!(req.status, GuestAddress(STATUS + 1));
}

#[test]
fn indirect_chain() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_OUT, 2);
    let vq = MockSplitQueue::new(&m, 16);
    // An indirect table of three descriptors at 0x8000.
    let table = [d(HDR, 16, R), d(DATA, 1024, R), d(STATUS, 1, W)];
    for (i, desc) in table.iter().enumerate() {
        let mut sd = SplitDescriptor::from(*desc);
        if i < 2 {
            sd.set_flags(sd.flags() | virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16);
            sd.set_next(i as u16 + 1);
        }
        m.write_obj(
            RawDescriptor::from(sd),
            GuestAddress(0x8000 + 16 * i as u64),
        )
        .unwrap();
    }
    let head = d(
        0x8000,
        48,
        virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16,
    );
    let chain = vq.build_desc_chain(&[head]).unwrap();
    let mut req = Request::default();
    req.parse(chain, &m, &LIMITS).unwrap();
    assert_eq!(
        (req.kind, req.offset, req.len),
        (RequestKind::Out, 1024, 1024)
    );
}
