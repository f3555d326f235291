//! A tiny synchronous block-device client for host-side tests: libblkio's
//! `virtio-blk-vhost-user` driver on one queue, one request at a time, through
//! one bounce buffer in a memory region shared with the backend.

use std::mem::MaybeUninit;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};

/// Largest request `write_at` / `read_at` send (smaller if the device says so).
const MAX_REQ: usize = 1 << 20;
/// How long `open` keeps trying to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take before it is reported as hung.
const REQ_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected, started vhost-user-blk device with one queue.
pub struct Blk {
    // Declared before `_b` so the queue is dropped before the instance.
    q: Blkioq,
    _b: Blkio,
    region: MemoryRegion,
    /// Bytes per request (≤ the bounce region).
    chunk: usize,
    size: u64,
    comps: Vec<MaybeUninit<Completion>>,
}

fn e(err: blkio::Error) -> anyhow::Error {
    anyhow!("blkio: {err}")
}

impl Blk {
    /// Connects to the vhost-user-blk socket `socket` and starts one queue.
    /// Retries for up to 10 s while the socket does not exist yet or refuses
    /// connections (a backend that is still starting).
    pub fn open(socket: &Path) -> Result<Blk> {
        let path = socket
            .to_str()
            .ok_or_else(|| anyhow!("socket path {} is not UTF-8", socket.display()))?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut b = loop {
            let attempt = if socket.exists() {
                connect(path)
            } else {
                Err(anyhow!("{} does not exist", socket.display()))
            };
            match attempt {
                Ok(b) => break b,
                Err(err) if Instant::now() >= deadline => {
                    return Err(err.context(format!(
                        "connecting to {} (gave up after {:?})",
                        socket.display(),
                        CONNECT_TIMEOUT
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        b.set_i32("num-queues", 1).map_err(e)?;
        let mut started = b.start().map_err(e).context("starting the device")?;
        let q = started
            .queues
            .pop()
            .ok_or_else(|| anyhow!("blkio started without a queue"))?;
        let size = b.get_u64("capacity").map_err(e)?;

        let mut chunk = MAX_REQ;
        for prop in ["max-transfer", "max-segment-len"] {
            let limit = b.get_i32(prop).map_err(e)?;
            if limit > 0 {
                chunk = chunk.min(limit as usize);
            }
        }
        chunk -= chunk % 512;
        if chunk == 0 {
            bail!("device limits requests to less than 512 bytes");
        }
        let align = (b.get_u64("mem-region-alignment").map_err(e)? as usize).max(1);
        let region_len = MAX_REQ.next_multiple_of(1 << 21).next_multiple_of(align);
        let region = b.alloc_mem_region(region_len).map_err(e)?;
        b.map_mem_region(&region).map_err(e)?;
        Ok(Blk {
            q,
            _b: b,
            region,
            chunk,
            size,
            comps: vec![MaybeUninit::uninit()],
        })
    }

    /// Capacity in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes `data` (a multiple of 512 bytes) at `offset`, in requests of at
    /// most 1 MiB, each waited for.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len())?;
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(self.chunk);
            // SAFETY: the region is mapped, at least `chunk` bytes long, and no
            // request is in flight (every request is waited for).
            let buf = unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, n) };
            buf.copy_from_slice(&data[done..done + n]);
            let off = offset + done as u64;
            self.q
                .write(off, self.region.addr as *const u8, n, 0, ReqFlags::empty());
            self.wait("write", off, n)?;
            done += n;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes (a multiple of 512) at `offset`, in requests of
    /// at most 1 MiB, each waited for.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(self.chunk);
            let off = offset + done as u64;
            self.q
                .read(off, self.region.addr as *mut u8, n, 0, ReqFlags::empty());
            self.wait("read", off, n)?;
            // SAFETY: the read into the region has completed.
            let src = unsafe { std::slice::from_raw_parts(self.region.addr as *const u8, n) };
            buf[done..done + n].copy_from_slice(src);
            done += n;
        }
        Ok(())
    }

    /// Sends a FLUSH and waits for it.
    pub fn flush(&mut self) -> Result<()> {
        self.q.flush(0, ReqFlags::empty());
        self.wait("flush", 0, 0)
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<()> {
        if !offset.is_multiple_of(512) || !len.is_multiple_of(512) {
            bail!("offset {offset} and length {len} must be multiples of 512");
        }
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => bail!(
                "{len} bytes at {offset} go past the end of the device ({} bytes)",
                self.size
            ),
        }
    }

    /// Waits for the one request in flight and checks its status.
    fn wait(&mut self, what: &str, offset: u64, len: usize) -> Result<()> {
        let mut timeout = REQ_TIMEOUT;
        let got = self
            .q
            .do_io(&mut self.comps, 1, Some(&mut timeout), None)
            .map_err(e)
            .with_context(|| format!("{what} of {len} bytes at {offset}"))?;
        if got == 0 {
            bail!("{what} of {len} bytes at {offset}: no completion within {REQ_TIMEOUT:?}");
        }
        // SAFETY: do_io initialised the first `got` (= 1) entries.
        let ret = unsafe { self.comps[0].assume_init_ref() }.ret;
        if ret != 0 {
            bail!(
                "{what} of {len} bytes at {offset} failed: {} ({ret})",
                std::io::Error::from_raw_os_error(-ret)
            );
        }
        Ok(())
    }
}

fn connect(path: &str) -> Result<Blkio> {
    let mut b = Blkio::new("virtio-blk-vhost-user").map_err(e)?;
    b.set_str("path", path).map_err(e)?;
    b.connect().map_err(e)?;
    Ok(b)
}
