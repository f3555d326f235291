//! virtio-blk device definition: feature bits, limits and the config space.

use std::sync::atomic::{AtomicU64, Ordering};

use basalt_proto::wire::MAX_PAYLOAD;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Request status bytes.
pub const STATUS_OK: u8 = VIRTIO_BLK_S_OK as u8;
pub const STATUS_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub const STATUS_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Logical block size presented to the guest.
pub const BLK_SIZE: u32 = 512;
/// Largest single data segment the driver should use (`size_max`).
pub const SIZE_MAX: u32 = 64 << 10;
/// Cap on `seg_max`, so that `seg_max * size_max` stays within [`MAX_REQUEST_BYTES`].
pub const SEG_MAX_CAP: u32 = 254;
/// Largest data transfer of one request we accept (4 wire requests of
/// [`MAX_PAYLOAD`]): a request's frames are staged whole in the queue's send
/// buffer, so this bounds that buffer. The driver is told at most
/// `seg_max * size_max` below it (Linux sends at most `max_sectors_kb`,
/// 1280 KiB by default).
pub const MAX_REQUEST_BYTES: u64 = 4 * MAX_PAYLOAD as u64;
/// Most descriptors one chain may have: a header, `seg_max` data buffers and
/// a status byte. Longer chains (an indirect table may hold 65535) are
/// refused without being stored.
pub const MAX_DESCRIPTORS: usize = SEG_MAX_CAP as usize + 2;
/// Largest discard / write-zeroes range of one request, in sectors (1 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Discard / write-zeroes ranges are sent to the primary in pieces of this size.
pub const ZERO_CHUNK_BYTES: u64 = 64 << 20;
/// Discard granularity hint, in sectors (4 KiB).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Size of the virtio_blk_config fields this device fills in.
pub const CONFIG_LEN: usize = 60;

const fn bit(b: u32) -> u64 {
    1u64 << b
}

/// Virtio features offered to the VMM.
pub fn device_features(read_only: bool) -> u64 {
    let mut f = bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VIRTIO_RING_F_INDIRECT_DESC)
        | bit(VIRTIO_BLK_F_SIZE_MAX)
        | bit(VIRTIO_BLK_F_SEG_MAX)
        | bit(VIRTIO_BLK_F_BLK_SIZE)
        | bit(VIRTIO_BLK_F_TOPOLOGY)
        | bit(VIRTIO_BLK_F_FLUSH)
        | bit(VIRTIO_BLK_F_MQ)
        | bit(VIRTIO_BLK_F_DISCARD)
        | bit(VIRTIO_BLK_F_WRITE_ZEROES)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    if read_only {
        f |= bit(VIRTIO_BLK_F_RO);
    }
    f
}

/// vhost-user protocol features offered: CONFIG (the config space), MQ,
/// BACKEND_REQ (the channel for config-change notifications after a resize),
/// and REPLY_ACK + CONFIGURE_MEM_SLOTS (required by libblkio, used by QEMU).
///
/// INFLIGHT_SHMFD goes here once the in-flight table is kept in the shared
/// region the VMM hands over (GET/SET_INFLIGHT_FD), so a restarted backend can
/// resubmit what its predecessor had in flight.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
}

/// The device's config space. Capacity is atomic so an online resize can
/// change it while the guest runs (and then send a config-change interrupt).
#[derive(Debug)]
pub struct BlkConfigSpace {
    capacity_sectors: AtomicU64,
    num_queues: u16,
    seg_max: u32,
}

impl BlkConfigSpace {
    pub fn new(size_bytes: u64, num_queues: u16, queue_size: u16) -> BlkConfigSpace {
        BlkConfigSpace {
            capacity_sectors: AtomicU64::new(size_bytes / u64::from(BLK_SIZE)),
            num_queues,
            // Header and status take two descriptors of a direct chain.
            seg_max: (u32::from(queue_size).saturating_sub(2)).clamp(1, SEG_MAX_CAP),
        }
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors.load(Ordering::Relaxed)
    }

    /// Changes the capacity (online resize, later).
    pub fn set_capacity_sectors(&self, sectors: u64) {
        self.capacity_sectors.store(sectors, Ordering::Relaxed);
    }

    /// The config space as the guest reads it (little-endian `virtio_blk_config`).
    pub fn encode(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        let put32 = |b: &mut [u8; CONFIG_LEN], at: usize, v: u32| {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        b[0..8].copy_from_slice(&self.capacity_sectors().to_le_bytes());
        put32(&mut b, 8, SIZE_MAX);
        put32(&mut b, 12, self.seg_max);
        // 16..20 geometry: not offered.
        put32(&mut b, 20, BLK_SIZE);
        // 24 physical_block_exp = 0, 25 alignment_offset = 0,
        // 26 min_io_size = 1 block, 28 opt_io_size = 0 (no preference).
        b[26..28].copy_from_slice(&1u16.to_le_bytes());
        // 32 writeback = 0 (CONFIG_WCE not offered), 33 unused.
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        put32(&mut b, 36, MAX_DISCARD_SECTORS);
        put32(&mut b, 40, 1); // max_discard_seg
        put32(&mut b, 44, DISCARD_SECTOR_ALIGNMENT);
        put32(&mut b, 48, MAX_DISCARD_SECTORS); // max_write_zeroes_sectors
        put32(&mut b, 52, 1); // max_write_zeroes_seg
        b[56] = 1; // write_zeroes_may_unmap
        b
    }

    /// `size` bytes of config space from `offset`, zero beyond the fields we
    /// define (a VMM may ask for a newer, longer struct). `None` if the
    /// window is absurd (the vhost-user layer bounds it to 4 KiB already).
    pub fn read(&self, offset: u32, size: u32) -> Option<Vec<u8>> {
        let end = offset.checked_add(size)?;
        if end > 4096 {
            return None;
        }
        let cfg = self.encode();
        let mut out = vec![0u8; size as usize];
        let (start, end) = (offset as usize, end as usize);
        if start < CONFIG_LEN {
            let n = end.min(CONFIG_LEN) - start;
            out[..n].copy_from_slice(&cfg[start..start + n]);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn config_layout() {
        let c = BlkConfigSpace::new(1 << 30, 4, 256);
        let b = c.encode();
        assert_eq!(
            u64::from_le_bytes(b[0..8].try_into().unwrap()),
            2 * 1024 * 1024
        );
        assert_eq!(u32_at(&b, 8), SIZE_MAX);
        assert_eq!(u32_at(&b, 12), 254);
        assert_eq!(u32_at(&b, 20), 512);
        assert_eq!(u16::from_le_bytes([b[34], b[35]]), 4);
        assert_eq!(u32_at(&b, 36), MAX_DISCARD_SECTORS);
        assert_eq!(u32_at(&b, 40), 1);
        assert_eq!(u32_at(&b, 44), DISCARD_SECTOR_ALIGNMENT);
        assert_eq!(u32_at(&b, 48), MAX_DISCARD_SECTORS);
        assert_eq!(u32_at(&b, 52), 1);
        assert_eq!(b[56], 1);
        assert!(u64::from(SEG_MAX_CAP) * u64::from(SIZE_MAX) <= MAX_REQUEST_BYTES);
    }

    #[test]
    fn small_queue_seg_max_and_resize() {
        let c = BlkConfigSpace::new(4096, 1, 2);
        assert_eq!(u32_at(&c.encode(), 12), 1);
        c.set_capacity_sectors(100);
        assert_eq!(c.capacity_sectors(), 100);
        assert_eq!(c.read(0, 8).unwrap(), 100u64.to_le_bytes());
    }

    #[test]
    fn config_windows() {
        let c = BlkConfigSpace::new(1 << 20, 2, 128);
        let full = c.encode();
        assert_eq!(c.read(0, 60).unwrap(), full);
        assert_eq!(c.read(34, 2).unwrap(), 2u16.to_le_bytes());
        let long = c.read(0, 96).unwrap();
        assert_eq!(&long[..60], &full[..]);
        assert!(long[60..].iter().all(|&x| x == 0));
        assert_eq!(c.read(200, 4).unwrap(), vec![0; 4]);
        assert!(c.read(4090, 10).is_none());
        assert!(c.read(u32::MAX, 2).is_none());
    }

    #[test]
    fn features() {
        let f = device_features(false);
        assert!(f & bit(VIRTIO_BLK_F_RO) == 0);
        assert!(f & bit(VIRTIO_F_VERSION_1) != 0);
        assert!(f & (1 << 30) != 0, "VHOST_USER_F_PROTOCOL_FEATURES");
        assert!(device_features(true) & bit(VIRTIO_BLK_F_RO) != 0);
        let p = protocol_features();
        assert!(p.contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ));
    }
}
