//! A deliberately low-level vhost-user-blk frontend (rust-vmm `vhost`
//! crate) with one split virtqueue in memfd-backed shared memory, able to
//! send chains no well-behaved driver would.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};
use vmm_sys_util::eventfd::EventFd;

pub const QSIZE: u16 = 16;
/// Ring layout in guest memory (well apart, so nothing overlaps).
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;

type Mem = GuestMemoryMmap<()>;

/// One descriptor: guest address, length, device-writable.
#[derive(Debug, Clone, Copy)]
pub struct D(pub u64, pub u32, pub bool);

pub struct TestFrontend {
    pub fe: Frontend,
    pub mem: &'static Mem,
    avail_idx: u16,
    kick: EventFd,
    call: EventFd,
    last_used: u16,
}

fn memfd(len: usize) -> anyhow::Result<File> {
    // SAFETY: plain syscall with a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"basalt-test-guest".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len as u64)?;
    Ok(f)
}

impl TestFrontend {
    pub fn connect(socket: &Path, mem_len: usize) -> anyhow::Result<TestFrontend> {
        let region = MmapRegion::<()>::from_file(FileOffset::new(memfd(mem_len)?, 0), mem_len)?;
        let region = GuestRegionMmap::new(region, GuestAddress(0)).context("guest region")?;
        let info = VhostUserMemoryRegionInfo::from_guest_region(&region)?;
        let mem: &'static Mem = Box::leak(Box::new(GuestMemoryMmap::from_regions(vec![region])?));

        let mut fe = Frontend::connect(socket, 1)?;
        fe.set_owner()?;
        let features = fe.get_features()?;
        // Without EVENT_IDX the backend signals every completion batch.
        fe.set_features(features & !(1 << VIRTIO_RING_F_EVENT_IDX))?;
        let pf = fe.get_protocol_features()?;
        fe.set_protocol_features(
            pf & (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ),
        )?;
        fe.set_mem_table(&[info])?;
        let host = |a: GuestAddress| -> anyhow::Result<u64> { Ok(mem.get_host_address(a)? as u64) };
        fe.set_vring_num(0, QSIZE)?;
        fe.set_vring_addr(
            0,
            &VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: host(GuestAddress(DESC))?,
                used_ring_addr: host(GuestAddress(USED))?,
                avail_ring_addr: host(GuestAddress(AVAIL))?,
                log_addr: None,
            },
        )?;
        fe.set_vring_base(0, 0)?;
        let (kick, call) = (EventFd::new(0)?, EventFd::new(libc::EFD_NONBLOCK)?);
        fe.set_vring_call(0, &call)?;
        fe.set_vring_kick(0, &kick)?;
        fe.set_vring_enable(0, true)?;
        Ok(TestFrontend {
            fe,
            mem,
            avail_idx: 0,
            kick,
            call,
            last_used: 0,
        })
    }

    /// The device's config space (first 60 bytes).
    pub fn config(&mut self) -> anyhow::Result<Vec<u8>> {
        let (_, payload) = self
            .fe
            .get_config(0, 60, VhostUserConfigFlags::empty(), &[0u8; 60])?;
        Ok(payload)
    }

    /// Puts one chain (descriptors 0..n) in the avail ring and kicks.
    pub fn submit(&mut self, chain: &[D]) -> anyhow::Result<()> {
        for (i, d) in chain.iter().enumerate() {
            let mut flags = if d.2 { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < chain.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let raw = RawDescriptor::from(SplitDescriptor::new(d.0, d.1, flags, i as u16 + 1));
            self.mem
                .write_obj(raw, GuestAddress(DESC + 16 * i as u64))?;
        }
        self.submit_head(0)
    }

    /// Writes raw descriptors (flags and next as given) at indices 0.. and
    /// submits index 0.
    pub fn submit_raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> anyhow::Result<()> {
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            self.mem
                .write_obj(raw, GuestAddress(DESC + 16 * i as u64))?;
        }
        self.submit_head(0)
    }

    /// Puts a head index (possibly invalid) in the avail ring and kicks.
    pub fn submit_head(&mut self, head: u16) -> anyhow::Result<()> {
        let slot = u64::from(self.avail_idx % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))?;
        self.kick.write(1)?;
        Ok(())
    }

    /// Next used element `(id, len)`, or `None` after `timeout`.
    pub fn next_used(&mut self, timeout: Duration) -> anyhow::Result<Option<(u32, u32)>> {
        let deadline = Instant::now() + timeout;
        loop {
            let idx: u16 = self.mem.read_obj(GuestAddress(USED + 2))?;
            if idx != self.last_used {
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                let at = USED + 4 + 8 * u64::from(self.last_used % QSIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(at))?;
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4))?;
                self.last_used = self.last_used.wrapping_add(1);
                return Ok(Some((id, len)));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut p = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&self.call),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, left.as_millis().clamp(1, 100) as i32) };
            let _ = self.call.read();
        }
    }

    pub fn wait_used(&mut self) -> anyhow::Result<(u32, u32)> {
        match self.next_used(Duration::from_secs(10))? {
            Some(u) => Ok(u),
            None => bail!("no used element within 10 s"),
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .expect("test address in guest memory");
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("test address in guest memory");
        v
    }
}
