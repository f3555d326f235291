//! A small wrapper around libblkio's virtio-blk-vhost-user driver.

use std::mem::MaybeUninit;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail};
use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};

pub struct Blk {
    pub queues: Vec<Blkioq>,
    region: MemoryRegion,
    // Keep last: dropped after the queues.
    blkio: Blkio,
}

fn e(err: blkio::Error) -> anyhow::Error {
    anyhow!("blkio: {err}")
}

impl Blk {
    pub fn connect(socket: &Path, num_queues: i32, mem_len: usize) -> anyhow::Result<Blk> {
        let mut b = Blkio::new("virtio-blk-vhost-user").map_err(e)?;
        b.set_str(
            "path",
            socket
                .to_str()
                .ok_or_else(|| anyhow!("socket path not UTF-8"))?,
        )
        .map_err(e)?;
        b.connect().map_err(e)?;
        b.set_i32("num-queues", num_queues).map_err(e)?;
        let out = b.start().map_err(e)?;
        let region = b.alloc_mem_region(mem_len).map_err(e)?;
        b.map_mem_region(&region).map_err(e)?;
        Ok(Blk {
            queues: out.queues,
            region,
            blkio: b,
        })
    }

    pub fn capacity(&self) -> anyhow::Result<u64> {
        self.blkio.get_u64("capacity").map_err(e)
    }

    /// The whole shared buffer region.
    #[allow(clippy::mut_from_ref)]
    pub fn mem(&self) -> &mut [u8] {
        // SAFETY: the region is mapped for the lifetime of `self`; tests do
        // not touch a buffer while a request on it is in flight.
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) }
    }

    pub fn ptr(&self, off: usize) -> *mut u8 {
        (self.region.addr + off) as *mut u8
    }

    pub fn read(&mut self, q: usize, start: u64, buf_off: usize, len: usize, user: usize) {
        let p = self.ptr(buf_off);
        self.queues[q].read(start, p, len, user, ReqFlags::empty());
    }

    pub fn write(&mut self, q: usize, start: u64, buf_off: usize, len: usize, user: usize) {
        let p = self.ptr(buf_off);
        self.queues[q].write(start, p, len, user, ReqFlags::empty());
    }

    /// Waits for `n` completions on queue `q`; returns `(user_data, ret)`.
    pub fn wait(&mut self, q: usize, n: usize) -> anyhow::Result<Vec<(usize, i32)>> {
        let mut out = Vec::with_capacity(n);
        let mut comps: Vec<MaybeUninit<Completion>> =
            (0..n.max(1)).map(|_| MaybeUninit::uninit()).collect();
        while out.len() < n {
            let want = n - out.len();
            let mut timeout = Duration::from_secs(30);
            let got = self.queues[q]
                .do_io(&mut comps[..want], want, Some(&mut timeout), None)
                .map_err(e)?;
            if got == 0 {
                bail!("timed out waiting for {want} completions on queue {q}");
            }
            for c in &comps[..got] {
                // SAFETY: do_io initialised the first `got` entries.
                let c = unsafe { c.assume_init_ref() };
                out.push((c.user_data, c.ret));
            }
        }
        Ok(out)
    }

    /// Submits what is queued on `q` without waiting; returns completions
    /// that happened to be ready.
    pub fn kick(&mut self, q: usize) -> anyhow::Result<Vec<(usize, i32)>> {
        let mut comps: Vec<MaybeUninit<Completion>> =
            (0..64).map(|_| MaybeUninit::uninit()).collect();
        let mut timeout = Duration::ZERO;
        let got = self.queues[q]
            .do_io(&mut comps, 0, Some(&mut timeout), None)
            .map_err(e)?;
        // SAFETY: do_io initialised the first `got` entries.
        Ok(comps[..got]
            .iter()
            .map(|c| unsafe { c.assume_init_ref() })
            .map(|c| (c.user_data, c.ret))
            .collect())
    }

    /// Waits and checks that every completion succeeded.
    pub fn wait_ok(&mut self, q: usize, n: usize) -> anyhow::Result<()> {
        for (user, ret) in self.wait(q, n)? {
            if ret != 0 {
                bail!("request {user} on queue {q} failed: {ret}");
            }
        }
        Ok(())
    }
}
