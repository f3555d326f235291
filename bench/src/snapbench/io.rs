//! Direct I/O through a vhost-user-blk socket for the snapshot benchmark:
//! writes of fresh random (incompressible, never repeated) data at given
//! offsets with several requests in flight, a flush, and single timed reads.

use std::mem::MaybeUninit;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQ_TIMEOUT: Duration = Duration::from_secs(30);

fn e(err: blkio::Error) -> anyhow::Error {
    anyhow!("blkio: {err}")
}

/// A started device with one queue and `slots` buffers of `buf_len` bytes.
pub struct Dev {
    // Declared before `b` so the queue is dropped before the instance.
    q: Blkioq,
    _b: Blkio,
    region: MemoryRegion,
    slots: usize,
    buf_len: usize,
    pub capacity: u64,
    comps: Vec<MaybeUninit<Completion>>,
}

impl Dev {
    /// Connects (retrying for up to 10 s while the backend is starting).
    pub fn open(socket: &Path, slots: usize, buf_len: usize) -> Result<Dev> {
        let path = socket
            .to_str()
            .ok_or_else(|| anyhow!("socket path {} is not UTF-8", socket.display()))?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut b = loop {
            let attempt = if socket.exists() {
                Blkio::new("virtio-blk-vhost-user")
                    .map_err(e)
                    .and_then(|mut b| {
                        b.set_str("path", path).map_err(e)?;
                        b.connect().map_err(e)?;
                        Ok(b)
                    })
            } else {
                Err(anyhow!("{} does not exist", socket.display()))
            };
            match attempt {
                Ok(b) => break b,
                Err(err) if Instant::now() >= deadline => {
                    return Err(err.context(format!("connecting to {}", socket.display())))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        b.set_i32("num-queues", 1).map_err(e)?;
        let qsize = (slots.next_power_of_two() * 2).clamp(64, 1024) as i32;
        b.set_i32("queue-size", qsize).map_err(e)?;
        let mut started = b.start().map_err(e).context("starting the device")?;
        let q = started
            .queues
            .pop()
            .ok_or_else(|| anyhow!("blkio started without a queue"))?;
        let capacity = b.get_u64("capacity").map_err(e)?;
        let align = (b.get_u64("mem-region-alignment").map_err(e)? as usize).max(1);
        let region_len = (slots * buf_len)
            .next_multiple_of(1 << 21)
            .next_multiple_of(align);
        let region = b.alloc_mem_region(region_len).map_err(e)?;
        b.map_mem_region(&region).map_err(e)?;
        Ok(Dev {
            q,
            _b: b,
            region,
            slots,
            buf_len,
            capacity,
            comps: (0..slots).map(|_| MaybeUninit::uninit()).collect(),
        })
    }

    fn buf(&self, slot: usize) -> *mut u8 {
        (self.region.addr + slot * self.buf_len) as *mut u8
    }

    /// Waits for at least one completion; returns the slots that completed.
    fn reap(&mut self, what: &str) -> Result<Vec<usize>> {
        let mut timeout = REQ_TIMEOUT;
        let got = self
            .q
            .do_io(&mut self.comps, 1, Some(&mut timeout), None)
            .map_err(e)?;
        if got == 0 {
            bail!("{what}: no completion within {REQ_TIMEOUT:?}");
        }
        let mut done = Vec::with_capacity(got);
        for c in &self.comps[..got] {
            // SAFETY: do_io initialised the first `got` entries.
            let c = unsafe { c.assume_init_ref() };
            if c.ret != 0 {
                bail!(
                    "{what} failed: {} ({})",
                    std::io::Error::from_raw_os_error(-c.ret),
                    c.ret
                );
            }
            done.push(c.user_data);
        }
        Ok(done)
    }

    /// Writes `buf_len` bytes of fresh random data at each offset, with up
    /// to `slots` writes in flight. Returns the seconds taken.
    pub fn write_random(&mut self, offsets: &[u64], seed: u64) -> Result<f64> {
        for &o in offsets {
            if o % 512 != 0 || o + self.buf_len as u64 > self.capacity {
                bail!("bad write offset {o} (device {} bytes)", self.capacity);
            }
        }
        let t0 = Instant::now();
        let mut free: Vec<usize> = (0..self.slots).rev().collect();
        let mut inflight = 0usize;
        let mut rng = seed ^ 0x6a09_e667_f3bc_c908;
        for &off in offsets {
            while free.is_empty() {
                let done = self.reap("write")?;
                inflight -= done.len();
                free.extend(done);
            }
            let Some(s) = free.pop() else {
                bail!("no free buffer");
            };
            let buf = self.buf(s);
            // SAFETY: slot `s` is free, so its buffer (inside the mapped
            // region) is not in flight.
            fill_random(
                unsafe { std::slice::from_raw_parts_mut(buf, self.buf_len) },
                &mut rng,
            );
            self.q.write(off, buf, self.buf_len, s, ReqFlags::empty());
            inflight += 1;
        }
        while inflight > 0 {
            inflight -= self.reap("write")?.len();
        }
        Ok(t0.elapsed().as_secs_f64())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.q.flush(0, ReqFlags::empty());
        self.reap("flush").map(|_| ())
    }

    /// Reads `len` (≤ `buf_len`) bytes at `offset` and waits; returns the latency.
    pub fn read_timed(&mut self, offset: u64, len: usize) -> Result<Duration> {
        if len > self.buf_len {
            bail!("read of {len} bytes > buffer {}", self.buf_len);
        }
        let t0 = Instant::now();
        self.q.read(offset, self.buf(0), len, 0, ReqFlags::empty());
        self.reap("read")?;
        Ok(t0.elapsed())
    }

    /// The first bytes of the buffer of slot 0 (after a read).
    pub fn head(&self, n: usize) -> Vec<u8> {
        // SAFETY: slot 0's buffer is mapped and nothing is in flight.
        unsafe { std::slice::from_raw_parts(self.buf(0) as *const u8, n.min(self.buf_len)) }
            .to_vec()
    }
}

/// splitmix64 stream: incompressible and different for every call.
pub fn fill_random(buf: &mut [u8], state: &mut u64) {
    for c in buf.chunks_exact_mut(8) {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        c.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
}

/// xorshift64* for offsets.
pub fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_fill_does_not_repeat() {
        let mut s = 1;
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        fill_random(&mut a, &mut s);
        fill_random(&mut b, &mut s);
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != 0));
    }
}
