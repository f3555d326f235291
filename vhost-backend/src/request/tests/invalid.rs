//! Chains that must be refused, and with which status.

use super::*;

#[test]
fn chain_without_usable_status() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    // No status descriptor at all: the last one is the readable header.
    assert_eq!(
        rejected(parse(&m, &[d(HDR, 16, R)]).1),
        (RequestError::StatusNotWritable, None)
    );
    // Status descriptor not writable.
    let r = parse(&m, &[d(HDR, 16, R), d(DATA, 512, W), d(STATUS, 1, R)]).1;
    assert_eq!(rejected(r), (RequestError::StatusNotWritable, None));
    // Wrong length (data and status merged, or garbage).
    let r = parse(&m, &[d(HDR, 16, R), d(DATA, 513, W)]).1;
    assert_eq!(rejected(r), (RequestError::StatusLength(513), None));
    let r = parse(&m, &[d(HDR, 16, R), d(STATUS, 0, W)]).1;
    assert_eq!(rejected(r), (RequestError::StatusLength(0), None));
    // Status outside guest memory.
    let r = parse(&m, &[d(HDR, 16, R), d(OUTSIDE, 1, W)]).1;
    assert_eq!(
        rejected(r),
        (RequestError::StatusOutsideMemory(OUTSIDE), None)
    );
    // Empty chain (invalid head index).
    let mut req = Request::default();
    let r = req.parse(std::iter::empty(), &m, &LIMITS);
    assert_eq!(rejected(r), (RequestError::EmptyChain, None));
}

#[test]
fn bad_header() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    let r = parse(&m, &[d(STATUS, 1, W)]).1;
    assert_eq!(rejected(r), (RequestError::MissingHeader, status_some()));
    let r = parse(&m, &[d(HDR, 16, W), d(DATA, 512, W), d(STATUS, 1, W)]).1;
    assert_eq!(rejected(r), (RequestError::HeaderWritable, status_some()));
    let r = parse(&m, &[d(HDR, 8, R), d(DATA, 512, W), d(STATUS, 1, W)]).1;
    assert_eq!(
        rejected(r),
        (RequestError::HeaderTooShort(8), status_some())
    );
    let r = parse(&m, &[d(0xF_FFF8, 16, R), d(DATA, 512, W), d(STATUS, 1, W)]).1;
    assert_eq!(
        rejected(r),
        (RequestError::HeaderUnreadable(0xF_FFF8), status_some())
    );
    let r = parse(&m, &[d(OUTSIDE, 16, R), d(DATA, 512, W), d(STATUS, 1, W)]).1;
    assert_eq!(
        rejected(r),
        (RequestError::HeaderUnreadable(OUTSIDE), status_some())
    );
}

#[test]
fn unknown_type_is_unsupported() {
    let m = mem();
    header(&m, 0xff, 0);
    let (_, r) = parse(&m, &[d(HDR, 16, R), d(DATA, 512, W), d(STATUS, 1, W)]);
    let rej = r.unwrap_err();
    assert_eq!(rej.error, RequestError::UnknownType(0xff));
    assert_eq!(rej.error.status(), STATUS_UNSUPP);
    assert_eq!(rej.status, status_some());
}

#[test]
fn data_problems() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    let cases: Vec<(Vec<RawDescriptor>, RequestError)> = vec![
        (
            vec![d(HDR, 16, R), d(STATUS, 1, W)],
            RequestError::MissingData(RequestKind::In),
        ),
        (
            vec![d(HDR, 16, R), d(DATA, 0, W), d(STATUS, 1, W)],
            RequestError::MissingData(RequestKind::In),
        ),
        (
            vec![d(HDR, 16, R), d(DATA, 512, R), d(STATUS, 1, W)],
            RequestError::DataDirection(RequestKind::In),
        ),
        (
            vec![d(HDR, 16, R), d(DATA, 100, W), d(STATUS, 1, W)],
            RequestError::Unaligned(100),
        ),
        (
            vec![d(HDR, 16, R), d(OUTSIDE, 512, W), d(STATUS, 1, W)],
            RequestError::DataOutsideMemory {
                addr: OUTSIDE,
                len: 512,
            },
        ),
        (
            vec![d(HDR, 16, R), d(0xF_FE00, 1024, W), d(STATUS, 1, W)],
            RequestError::DataOutsideMemory {
                addr: 0xF_FE00,
                len: 1024,
            },
        ),
    ];
    for (descs, want) in cases {
        let (e, s) = rejected(parse(&m, &descs).1);
        assert_eq!(e, want);
        assert_eq!(e.status(), STATUS_IOERR);
        assert_eq!(s, status_some());
    }
    header(&m, VIRTIO_BLK_T_OUT, 0);
    let r = parse(&m, &[d(HDR, 16, R), d(DATA, 512, W), d(STATUS, 1, W)]).1;
    assert_eq!(rejected(r).0, RequestError::DataDirection(RequestKind::Out));
    header(&m, VIRTIO_BLK_T_GET_ID, 0);
    let r = parse(&m, &[d(HDR, 16, R), d(DATA, 20, R), d(STATUS, 1, W)]).1;
    assert_eq!(
        rejected(r).0,
        RequestError::DataDirection(RequestKind::GetId)
    );
}

#[test]
fn too_large_is_refused_before_touching_memory() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    let big = (MAX_REQUEST_BYTES / 2 + 512) as u32;
    let r = parse(
        &m,
        &[
            d(HDR, 16, R),
            d(OUTSIDE, big, W),
            d(OUTSIDE, big, W),
            d(STATUS, 1, W),
        ],
    )
    .1;
    assert!(matches!(rejected(r).0, RequestError::TooLarge { .. }));
}

#[test]
fn out_of_range() {
    let m = mem();
    for (sector, len) in [
        (1024u64, 512u32),
        (1023, 1024),
        (u64::MAX, 512),
        (u64::MAX / 512, 512),
    ] {
        header(&m, VIRTIO_BLK_T_IN, sector);
        let r = parse(&m, &[d(HDR, 16, R), d(DATA, len, W), d(STATUS, 1, W)]).1;
        assert!(
            matches!(rejected(r).0, RequestError::OutOfRange { .. }),
            "sector {sector}"
        );
    }
    header(&m, VIRTIO_BLK_T_DISCARD, 0);
    segment(&m, 1000, 25, 0);
    let r = parse(&m, &[d(HDR, 16, R), d(DATA, 16, R), d(STATUS, 1, W)]).1;
    assert!(matches!(rejected(r).0, RequestError::OutOfRange { .. }));
    segment(&m, u64::MAX, 1, 0);
    let r = parse(&m, &[d(HDR, 16, R), d(DATA, 16, R), d(STATUS, 1, W)]).1;
    assert!(matches!(rejected(r).0, RequestError::OutOfRange { .. }));
}

#[test]
fn read_only_disk_refuses_modifications() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_OUT, 0);
    let r = parse_with(&m, &[d(HDR, 16, R), d(DATA, 512, R), d(STATUS, 1, W)], &RO).1;
    assert_eq!(rejected(r), (RequestError::ReadOnly, status_some()));
    segment(&m, 0, 8, 0);
    for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        header(&m, t, 0);
        let r = parse_with(&m, &[d(HDR, 16, R), d(DATA, 16, R), d(STATUS, 1, W)], &RO).1;
        assert_eq!(rejected(r).0, RequestError::ReadOnly);
    }
}

#[test]
fn discard_segment_problems() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_DISCARD, 0);
    segment(&m, 0, 8, 0xffff);
    let (e, s) = rejected(parse(&m, &[d(HDR, 16, R), d(DATA, 16, R), d(STATUS, 1, W)]).1);
    assert_eq!(
        (e.clone(), s),
        (RequestError::UnsupportedFlags(0xffff), status_some())
    );
    assert_eq!(e.status(), STATUS_UNSUPP);
    // Unmap is only meaningful for write-zeroes.
    segment(&m, 0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    let r = parse(&m, &[d(HDR, 16, R), d(DATA, 16, R), d(STATUS, 1, W)]).1;
    assert_eq!(rejected(r).0, RequestError::UnsupportedFlags(1));
    header(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&m, 0, 8, 2);
    let r = parse(&m, &[d(HDR, 16, R), d(DATA, 16, R), d(STATUS, 1, W)]).1;
    assert_eq!(rejected(r).0, RequestError::UnsupportedFlags(2));

    let r = parse(&m, &[d(HDR, 16, R), d(DATA, 32, R), d(STATUS, 1, W)]).1;
    let (e, _) = rejected(r);
    assert_eq!(
        (e.clone(), e.status()),
        (RequestError::TooManySegments(2), STATUS_UNSUPP)
    );
    let r = parse(&m, &[d(HDR, 16, R), d(DATA, 8, R), d(STATUS, 1, W)]).1;
    assert_eq!(rejected(r).0, RequestError::SegmentLength(8));
    let r = parse(&m, &[d(HDR, 16, R), d(DATA, 16, W), d(STATUS, 1, W)]).1;
    assert_eq!(
        rejected(r).0,
        RequestError::DataDirection(RequestKind::WriteZeroes)
    );
    segment(&m, 0, MAX_DISCARD_SECTORS + 1, 0);
    let r = Limits {
        capacity_sectors: u64::MAX,
        read_only: false,
    };
    let r = parse_with(&m, &[d(HDR, 16, R), d(DATA, 16, R), d(STATUS, 1, W)], &r).1;
    assert!(matches!(rejected(r).0, RequestError::TooLarge { .. }));
}

/// An indirect table of 4000 descriptors (a real driver sends at most
/// seg_max + 2): refused with IOERR in the status byte, and the request's
/// vectors keep no more than MAX_DESCRIPTORS entries (before, every chain
/// grew its slot's vectors to the chain's length, for good).
#[test]
fn long_chains_are_refused_without_being_stored() {
    use crate::virtio_blk::MAX_DESCRIPTORS;
    let m = mem();
    header(&m, VIRTIO_BLK_T_OUT, 0);
    const TABLE: u64 = 0x2_0000;
    let n = 4000usize;
    for i in 0..n {
        let desc = match i {
            0 => d(HDR, 16, R),
            _ if i == n - 1 => d(STATUS, 1, W),
            _ => d(DATA, 512, R),
        };
        let mut sd = SplitDescriptor::from(desc);
        if i + 1 < n {
            sd.set_flags(sd.flags() | virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16);
            sd.set_next(i as u16 + 1);
        }
        m.write_obj(RawDescriptor::from(sd), GuestAddress(TABLE + 16 * i as u64))
            .unwrap();
    }
    let vq = MockSplitQueue::new(&m, 16);
    let head = d(
        TABLE,
        16 * n as u32,
        virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16,
    );
    let mut req = Request::default();
    for _ in 0..3 {
        let chain = vq.build_desc_chain(&[head]).unwrap();
        let (error, status) = rejected(req.parse(chain, &m, &LIMITS));
        assert_eq!(
            error,
            RequestError::TooManyDescriptors {
                count: n,
                max: MAX_DESCRIPTORS
            }
        );
        assert_eq!(error.status(), STATUS_IOERR);
        assert_eq!(status, status_some());
        assert!(req.descs.capacity() <= MAX_DESCRIPTORS);
        assert!(req.data.capacity() <= MAX_DESCRIPTORS);
    }
    // The same request is still usable for a normal chain.
    let (_, r) = parse(&m, &[d(HDR, 16, R), d(DATA, 512, R), d(STATUS, 1, W)]);
    r.unwrap();
}
