//! Hostile guest requests, sent with a raw vhost-user frontend: each gets the
//! right status (when it has a status byte), its chain comes back, and the
//! queue keeps working.

mod common;

use std::time::Duration;

use basalt_vhost_backend::virtio_blk::{STATUS_IOERR, STATUS_OK, STATUS_UNSUPP};
use common::frontend::{TestFrontend, D};
use common::{pattern, Harness, Opts};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};

const HDR: u64 = 0x1_0000;
const STATUS: u64 = 0x2_0000;
const DATA: u64 = 0x3_0000;
const SEG: u64 = 0x4_0000;
const OUTSIDE: u64 = 0x4000_0000;
const UNTOUCHED: u8 = 0xEE;

fn header(f: &TestFrontend, t: u32, sector: u64) {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&t.to_le_bytes());
    b[8..16].copy_from_slice(&sector.to_le_bytes());
    f.write(HDR, &b);
}

fn segment(f: &TestFrontend, sector: u64, sectors: u32, flags: u32) {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&sector.to_le_bytes());
    b[8..12].copy_from_slice(&sectors.to_le_bytes());
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    f.write(SEG, &b);
}

/// Submits `chain` and returns (used len, status byte).
fn run(f: &mut TestFrontend, chain: &[D]) -> anyhow::Result<(u32, u8)> {
    f.write(STATUS, &[UNTOUCHED]);
    f.submit(chain)?;
    let (id, len) = f.wait_used()?;
    assert_eq!(id, 0, "the chain's head comes back");
    Ok((len, f.read(STATUS, 1)[0]))
}

fn st() -> D {
    D(STATUS, 1, true)
}

#[test]
fn hostile_chains_get_the_right_status() -> anyhow::Result<()> {
    let h = Harness::start(Opts::default())?;
    let capacity = h.opts.size / 512;
    let mut f = TestFrontend::connect(&h.backend.socket, 1 << 20)?;

    let cfg = f.config()?;
    assert_eq!(u64::from_le_bytes(cfg[0..8].try_into()?), capacity);
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into()?), 512);
    assert_eq!(u16::from_le_bytes(cfg[34..36].try_into()?), 2);

    // No status descriptor: nothing can be written back, not even into the
    // writable data buffer; the chain is still returned.
    header(&f, VIRTIO_BLK_T_IN, 0);
    f.write(DATA, &[0xAB; 512]);
    assert_eq!(
        run(&mut f, &[D(HDR, 16, false), D(DATA, 512, true)])?,
        (0, UNTOUCHED)
    );
    assert_eq!(f.read(DATA, 512), vec![0xAB; 512]);
    assert_eq!(run(&mut f, &[D(HDR, 16, false)])?, (0, UNTOUCHED));
    // Read-only status descriptor.
    assert_eq!(
        run(
            &mut f,
            &[D(HDR, 16, false), D(DATA, 512, true), D(STATUS, 1, false)]
        )?,
        (0, UNTOUCHED)
    );
    // Data of 100 bytes.
    assert_eq!(
        run(&mut f, &[D(HDR, 16, false), D(DATA, 100, true), st()])?,
        (1, STATUS_IOERR)
    );
    // Zero data descriptors for a read.
    assert_eq!(run(&mut f, &[D(HDR, 16, false), st()])?, (1, STATUS_IOERR));
    // Device-writable header.
    assert_eq!(
        run(&mut f, &[D(HDR, 16, true), D(DATA, 512, true), st()])?,
        (1, STATUS_IOERR)
    );
    // Sector past the end, and a range that runs over it.
    header(&f, VIRTIO_BLK_T_IN, capacity);
    assert_eq!(
        run(&mut f, &[D(HDR, 16, false), D(DATA, 512, true), st()])?,
        (1, STATUS_IOERR)
    );
    header(&f, VIRTIO_BLK_T_OUT, capacity - 1);
    assert_eq!(
        run(&mut f, &[D(HDR, 16, false), D(DATA, 1024, false), st()])?,
        (1, STATUS_IOERR)
    );
    // Unknown request type.
    header(&f, 0xff, 0);
    assert_eq!(
        run(&mut f, &[D(HDR, 16, false), D(DATA, 512, true), st()])?,
        (1, STATUS_UNSUPP)
    );
    // Discard with flags 0xffff.
    header(&f, VIRTIO_BLK_T_DISCARD, 0);
    segment(&f, 0, 8, 0xffff);
    assert_eq!(
        run(&mut f, &[D(HDR, 16, false), D(SEG, 16, false), st()])?,
        (1, STATUS_UNSUPP)
    );
    // Data descriptor outside guest memory (and one straddling its end).
    header(&f, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        run(&mut f, &[D(HDR, 16, false), D(OUTSIDE, 4096, true), st()])?,
        (1, STATUS_IOERR)
    );
    assert_eq!(
        run(
            &mut f,
            &[D(HDR, 16, false), D((1 << 20) - 512, 1024, true), st()]
        )?,
        (1, STATUS_IOERR)
    );
    // A descriptor loop (0 -> 0): bounded by the ring size, no status.
    header(&f, VIRTIO_BLK_T_IN, 0);
    f.write(STATUS, &[UNTOUCHED]);
    f.submit_raw(&[(HDR, 16, VRING_DESC_F_NEXT as u16, 0)])?;
    assert_eq!(f.wait_used()?, (0, 0));
    // An indirect table of a bogus size, and one outside guest memory.
    f.submit_raw(&[(HDR, 17, VRING_DESC_F_INDIRECT as u16, 0)])?;
    assert_eq!(f.wait_used()?, (0, 0));
    f.submit_raw(&[(OUTSIDE, 48, VRING_DESC_F_INDIRECT as u16, 0)])?;
    assert_eq!(f.wait_used()?, (0, 0));
    assert_eq!(f.read(STATUS, 1)[0], UNTOUCHED);
    // A head index outside the ring cannot even be returned; the queue goes on.
    f.submit_head(999)?;
    assert_eq!(f.next_used(Duration::from_millis(300))?, None);

    // GET_ID.
    header(&f, VIRTIO_BLK_T_GET_ID, 0);
    f.write(DATA, &[0xAB; 20]);
    assert_eq!(
        run(&mut f, &[D(HDR, 16, false), D(DATA, 20, true), st()])?,
        (21, STATUS_OK)
    );
    let mut want = b"basalt-42".to_vec();
    want.resize(20, 0);
    assert_eq!(f.read(DATA, 20), want);

    // After all that, normal I/O works.
    let mut data = vec![0u8; 8192];
    pattern(99, &mut data);
    f.write(DATA, &data);
    header(&f, VIRTIO_BLK_T_OUT, 16);
    assert_eq!(
        run(
            &mut f,
            &[
                D(HDR, 16, false),
                D(DATA, 4096, false),
                D(DATA + 4096, 4096, false),
                st()
            ]
        )?,
        (1, STATUS_OK)
    );
    header(&f, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(run(&mut f, &[D(HDR, 16, false), st()])?, (1, STATUS_OK));
    f.write(DATA + 0x1_0000, &[0u8; 8192]);
    header(&f, VIRTIO_BLK_T_IN, 16);
    assert_eq!(
        run(
            &mut f,
            &[D(HDR, 16, false), D(DATA + 0x1_0000, 8192, true), st()]
        )?,
        (8193, STATUS_OK)
    );
    assert!(f.read(DATA + 0x1_0000, 8192) == data);
    // Write-zeroes with unmap, then the range reads back as zeroes.
    header(&f, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&f, 16, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    assert_eq!(
        run(&mut f, &[D(HDR, 16, false), D(SEG, 16, false), st()])?,
        (1, STATUS_OK)
    );
    header(&f, VIRTIO_BLK_T_IN, 16);
    assert_eq!(
        run(
            &mut f,
            &[D(HDR, 16, false), D(DATA + 0x1_0000, 8192, true), st()]
        )?,
        (8193, STATUS_OK)
    );
    assert!(f.read(DATA + 0x1_0000, 4096).iter().all(|&b| b == 0));
    assert!(f.read(DATA + 0x1_1000, 4096) == data[4096..]);

    let stats = h.backend.stats.total();
    assert!(stats.errors >= 12, "{stats:?}");
    Ok(())
}

#[test]
fn read_only_device_refuses_modifications() -> anyhow::Result<()> {
    let h = Harness::start(Opts {
        read_only: true,
        ..Opts::default()
    })?;
    let mut f = TestFrontend::connect(&h.backend.socket, 1 << 20)?;
    let features = vhost::VhostBackend::get_features(&f.fe)?;
    assert!(features & (1 << VIRTIO_BLK_F_RO) != 0);

    header(&f, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        run(&mut f, &[D(HDR, 16, false), D(DATA, 512, false), st()])?,
        (1, STATUS_IOERR)
    );
    segment(&f, 0, 8, 0);
    for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        header(&f, t, 0);
        assert_eq!(
            run(&mut f, &[D(HDR, 16, false), D(SEG, 16, false), st()])?,
            (1, STATUS_IOERR)
        );
    }
    header(&f, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        run(&mut f, &[D(HDR, 16, false), D(DATA, 512, true), st()])?,
        (513, STATUS_OK)
    );
    // Nothing reached the copy.
    assert!(h
        .storage()
        .read_copy(h.opts.volume_id)?
        .iter()
        .all(|&b| b == 0));
    Ok(())
}
