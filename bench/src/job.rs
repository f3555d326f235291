//! One benchmark job against a vhost-user-blk socket, driven by libblkio.
//!
//! Each queue gets its own thread and its own slice of one shared memory
//! region (`qd` buffers of `bs` bytes). A thread keeps `qd` requests in
//! flight until the deadline (or its share of the op count), timing each
//! request from submission to completion.

use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use blkio::{Blkio, Blkioq, Completion, ReqFlags};
use serde::{Deserialize, Serialize};

use crate::procstat;

/// What the job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rw {
    Read,
    Write,
    /// Reads with this percentage, writes otherwise.
    Mix(u8),
}

impl std::str::FromStr for Rw {
    type Err = String;
    fn from_str(s: &str) -> Result<Rw, String> {
        match s {
            "read" => Ok(Rw::Read),
            "write" => Ok(Rw::Write),
            "mix" | "rw" => Ok(Rw::Mix(70)),
            s => match s.strip_prefix("mix") {
                Some(p) => p
                    .trim_start_matches([':', '='])
                    .parse()
                    .ok()
                    .filter(|p| *p <= 100)
                    .map(Rw::Mix)
                    .ok_or_else(|| format!("bad read percentage in {s:?}")),
                None => Err(format!("{s:?}: expected read, write, mix or mix:<read %>")),
            },
        }
    }
}

/// How long a job runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Limit {
    Time(Duration),
    /// Total requests over all queues.
    Ops(u64),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    /// Block size in bytes (multiple of 512).
    pub bs: usize,
    pub rw: Rw,
    pub random: bool,
    /// Requests in flight per queue.
    pub qd: usize,
    pub queues: usize,
    pub limit: Limit,
    /// Write a pattern naming each block and its generation, check it on reads.
    /// Every in-flight slot owns a disjoint set of blocks, so the expected
    /// contents of a block are always known.
    pub verify: bool,
    /// Bytes of the device to use from offset 0 (default: all of it).
    pub span: Option<u64>,
    /// Seed of the offset generator.
    pub seed: u64,
}

impl JobSpec {
    pub fn new(bs: usize, rw: Rw, random: bool, qd: usize) -> JobSpec {
        JobSpec {
            bs,
            rw,
            random,
            qd,
            queues: 1,
            limit: Limit::Time(Duration::from_secs(5)),
            verify: false,
            span: None,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Short fio-like name: `4k-randread-qd32`.
    pub fn name(&self) -> String {
        let bs = if self.bs % (1 << 20) == 0 {
            format!("{}m", self.bs >> 20)
        } else if self.bs % 1024 == 0 {
            format!("{}k", self.bs >> 10)
        } else {
            format!("{}", self.bs)
        };
        let pat = if self.random { "rand" } else { "seq" };
        let rw = match self.rw {
            Rw::Read => "read".to_string(),
            Rw::Write => "write".to_string(),
            Rw::Mix(p) => format!("rw{p}"),
        };
        let q = if self.queues > 1 {
            format!("-{}q", self.queues)
        } else {
            String::new()
        };
        format!("{bs}-{pat}{rw}-qd{}{q}", self.qd)
    }
}

/// A process whose CPU time and memory are reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcUsage {
    pub name: String,
    pub pid: u32,
    /// CPU seconds used during the measured interval.
    pub cpu_s: f64,
    /// CPU microseconds per completed request.
    pub cpu_us_per_io: f64,
    pub mem: procstat::Mem,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResult {
    pub job: String,
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    pub bytes: u64,
    pub secs: f64,
    pub iops: f64,
    /// Decimal megabytes per second.
    pub mb_s: f64,
    pub lat_mean_us: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub lat_p999_us: f64,
    pub lat_max_us: f64,
    /// Blocks checked against the expected pattern (verify mode).
    pub verified: u64,
    pub procs: Vec<ProcUsage>,
    /// This frontend's own CPU seconds.
    pub frontend_cpu_s: f64,
}

impl JobResult {
    pub fn proc(&self, name: &str) -> Option<&ProcUsage> {
        self.procs.iter().find(|p| p.name == name)
    }
}

fn e(err: blkio::Error) -> anyhow::Error {
    anyhow!("blkio: {err}")
}

/// Capacity in bytes of the device behind `socket` (connects and disconnects).
pub fn capacity(socket: &Path) -> Result<u64> {
    let mut b = Blkio::new("virtio-blk-vhost-user").map_err(e)?;
    b.set_str("path", path_str(socket)?).map_err(e)?;
    b.connect().map_err(e)?;
    b.get_u64("capacity").map_err(e)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| anyhow!("socket path not UTF-8"))
}

struct Shared {
    spec: JobSpec,
    span: u64,
    /// Generation last written to each block (verify mode; 0 = unknown).
    gens: Vec<AtomicU32>,
}

#[derive(Default)]
struct QueueOut {
    lat_ns: Vec<u32>,
    reads: u64,
    writes: u64,
    verified: u64,
}

/// Runs `spec` against `socket`, reporting the usage of `watch`.
pub fn run(socket: &Path, spec: &JobSpec, watch: &[Watched]) -> Result<JobResult> {
    if spec.bs == 0 || spec.bs % 512 != 0 {
        bail!("block size {} is not a positive multiple of 512", spec.bs);
    }
    if spec.qd == 0 || spec.queues == 0 {
        bail!("queue depth and number of queues must be at least 1");
    }
    let mut b = Blkio::new("virtio-blk-vhost-user").map_err(e)?;
    b.set_str("path", path_str(socket)?).map_err(e)?;
    b.connect()
        .map_err(e)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    b.set_i32("num-queues", spec.queues as i32).map_err(e)?;
    let qsize = (spec.qd.next_power_of_two() * 2).clamp(64, 1024) as i32;
    b.set_i32("queue-size", qsize).map_err(e)?;
    let out = b.start().map_err(e)?;
    let cap = b.get_u64("capacity").map_err(e)?;
    let span = spec.span.unwrap_or(cap).min(cap) / spec.bs as u64 * spec.bs as u64;
    let blocks = span / spec.bs as u64;
    let slots = (spec.queues * spec.qd) as u64;
    if blocks < slots {
        bail!(
            "device too small: {span} bytes for {slots} buffers of {}",
            spec.bs
        );
    }
    let region_len = (spec.queues * spec.qd * spec.bs).next_multiple_of(1 << 21);
    let region = b.alloc_mem_region(region_len).map_err(e)?;
    b.map_mem_region(&region).map_err(e)?;
    // Non-zero, non-repeating write data (overwritten per write when verifying).
    // SAFETY: the region is mapped and nothing is in flight yet.
    let mem = unsafe { std::slice::from_raw_parts_mut(region.addr as *mut u8, region.len) };
    fill(mem, spec.seed, 0);

    let shared = Arc::new(Shared {
        spec: spec.clone(),
        span,
        gens: if spec.verify {
            (0..blocks).map(|_| AtomicU32::new(0)).collect()
        } else {
            Vec::new()
        },
    });
    let barrier = Arc::new(Barrier::new(spec.queues + 1));
    let mut handles = Vec::new();
    for (qi, q) in out.queues.into_iter().enumerate() {
        let sh = shared.clone();
        let bar = barrier.clone();
        let base = region.addr + qi * spec.qd * spec.bs;
        handles.push(std::thread::spawn(move || {
            bar.wait();
            run_queue(q, qi, base, &sh)
        }));
    }

    let t_cpu0: Vec<_> = watch.iter().map(|w| procstat::cpu_time(w.pid)).collect();
    let self_cpu0 = procstat::cpu_time(std::process::id());
    barrier.wait();
    let t0 = Instant::now();
    let mut outs = Vec::new();
    let mut err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(o)) => outs.push(o),
            Ok(Err(x)) => err = Some(x),
            Err(_) => err = Some(anyhow!("queue thread panicked")),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let self_cpu1 = procstat::cpu_time(std::process::id());
    let procs_usage: Vec<(Option<Duration>, Option<procstat::Mem>)> = watch
        .iter()
        .map(|w| (procstat::cpu_time(w.pid), procstat::mem(w.pid)))
        .collect();
    drop(b);
    if let Some(x) = err {
        return Err(x);
    }

    let mut lat: Vec<u32> = Vec::with_capacity(outs.iter().map(|o| o.lat_ns.len()).sum());
    let (mut reads, mut writes, mut verified) = (0, 0, 0);
    for o in outs {
        lat.extend_from_slice(&o.lat_ns);
        reads += o.reads;
        writes += o.writes;
        verified += o.verified;
    }
    lat.sort_unstable();
    let ops = lat.len() as u64;
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let mean = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&x| x as f64).sum::<f64>() / lat.len() as f64 / 1000.0
    };
    let bytes = ops * spec.bs as u64;
    let procs = watch
        .iter()
        .zip(t_cpu0)
        .zip(procs_usage)
        .map(|((w, c0), (c1, m))| {
            let cpu = match (c0, c1) {
                (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64(),
                // The process is gone: reported as 0.
                _ => 0.0,
            };
            ProcUsage {
                name: w.name.clone(),
                pid: w.pid,
                cpu_s: cpu,
                cpu_us_per_io: cpu * 1e6 / ops.max(1) as f64,
                mem: m.unwrap_or_default(),
            }
        })
        .collect();
    let frontend_cpu_s = match (self_cpu0, self_cpu1) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64(),
        _ => 0.0,
    };
    Ok(JobResult {
        job: spec.name(),
        ops,
        reads,
        writes,
        bytes,
        secs,
        iops: ops as f64 / secs,
        mb_s: bytes as f64 / secs / 1e6,
        lat_mean_us: mean,
        lat_p50_us: pct(0.50),
        lat_p99_us: pct(0.99),
        lat_p999_us: pct(0.999),
        lat_max_us: lat.last().map(|&x| x as f64 / 1000.0).unwrap_or(0.0),
        verified,
        procs,
        frontend_cpu_s,
    })
}

/// xorshift64*
fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Fills `buf` with a pattern determined by `(block, gen)`.
fn fill(buf: &mut [u8], block: u64, gen: u32) {
    let mut x = block.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (u64::from(gen) << 32) ^ 0x5bd1_e995;
    for c in buf.chunks_exact_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        c.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
}

struct Slot {
    started: Instant,
    block: u64,
    write: bool,
    gen: u32,
}

fn run_queue(mut q: Blkioq, qi: usize, base: usize, sh: &Shared) -> Result<QueueOut> {
    let spec = &sh.spec;
    let bs = spec.bs;
    let blocks = sh.span / bs as u64;
    let nslots = (spec.queues * spec.qd) as u64;
    let deadline = match spec.limit {
        Limit::Time(d) => Some(Instant::now() + d),
        Limit::Ops(_) => None,
    };
    let my_ops = match spec.limit {
        Limit::Ops(n) => {
            let per = n / spec.queues as u64;
            let extra = u64::from((qi as u64) < n % spec.queues as u64);
            per + extra
        }
        Limit::Time(_) => u64::MAX,
    };
    let mut rng = spec.seed ^ (qi as u64 + 1).wrapping_mul(0xd6e8_feb8_6659_fd93);
    let _ = next(&mut rng);
    // Sequential: each queue walks its own contiguous share of the span.
    let share = blocks / spec.queues as u64;
    let seq_base = qi as u64 * share;
    let mut seq_next = 0u64;
    // Verify: per-slot cursor over the blocks the slot owns.
    let mut slot_cursor = vec![0u64; spec.qd];

    let mut out = QueueOut {
        lat_ns: Vec::with_capacity(1 << 16),
        ..QueueOut::default()
    };
    let mut slots: Vec<Slot> = (0..spec.qd)
        .map(|_| Slot {
            started: Instant::now(),
            block: 0,
            write: false,
            gen: 0,
        })
        .collect();
    let mut comps: Vec<MaybeUninit<Completion>> =
        (0..spec.qd).map(|_| MaybeUninit::uninit()).collect();
    let mut submitted = 0u64;
    let mut inflight = 0usize;

    let mut pick = |s: usize, rng: &mut u64| -> (u64, bool) {
        let write = match spec.rw {
            Rw::Read => false,
            Rw::Write => true,
            Rw::Mix(p) => next(rng) % 100 >= u64::from(p),
        };
        let block = if spec.verify {
            let owner = (qi * spec.qd + s) as u64;
            let owned = (blocks - owner).div_ceil(nslots);
            let k = if spec.random {
                next(rng) % owned
            } else {
                let k = slot_cursor[s] % owned;
                slot_cursor[s] += 1;
                k
            };
            owner + k * nslots
        } else if spec.random {
            next(rng) % blocks
        } else {
            let b = seq_base + seq_next % share.max(1);
            seq_next += 1;
            b
        };
        (block, write)
    };

    let submit = |q: &mut Blkioq, slot: &mut Slot, s: usize, block: u64, write: bool| {
        let buf = (base + s * bs) as *mut u8;
        slot.block = block;
        slot.write = write;
        if spec.verify && write {
            let g = sh.gens[block as usize]
                .load(Ordering::Relaxed)
                .wrapping_add(1)
                .max(1);
            slot.gen = g;
            // SAFETY: this slot's buffer is not in flight.
            let b = unsafe { std::slice::from_raw_parts_mut(buf, bs) };
            fill(b, block, g);
        }
        slot.started = Instant::now();
        let off = block * bs as u64;
        if write {
            q.write(off, buf, bs, s, ReqFlags::empty());
        } else {
            q.read(off, buf, bs, s, ReqFlags::empty());
        }
    };

    for (s, slot) in slots.iter_mut().enumerate() {
        if submitted >= my_ops {
            break;
        }
        let (block, write) = pick(s, &mut rng);
        submit(&mut q, slot, s, block, write);
        submitted += 1;
        inflight += 1;
    }
    let mut expect = vec![0u8; if spec.verify { bs } else { 0 }];
    let mut stopping = false;
    while inflight > 0 {
        let mut timeout = Duration::from_secs(30);
        let got = q
            .do_io(&mut comps, 1, Some(&mut timeout), None)
            .map_err(e)?;
        if got == 0 {
            bail!("queue {qi}: no completion within 30 s ({inflight} in flight)");
        }
        let now = Instant::now();
        if !stopping && deadline.is_some_and(|d| now >= d) {
            stopping = true;
        }
        for c in &comps[..got] {
            // SAFETY: do_io initialised the first `got` entries.
            let c = unsafe { c.assume_init_ref() };
            let s = c.user_data;
            let slot = &mut slots[s];
            if c.ret != 0 {
                bail!(
                    "queue {qi}: {} of block {} failed: {}",
                    if slot.write { "write" } else { "read" },
                    slot.block,
                    c.ret
                );
            }
            out.lat_ns.push(
                now.duration_since(slot.started)
                    .as_nanos()
                    .min(u32::MAX as u128) as u32,
            );
            inflight -= 1;
            if slot.write {
                out.writes += 1;
                if spec.verify {
                    sh.gens[slot.block as usize].store(slot.gen, Ordering::Relaxed);
                }
            } else {
                out.reads += 1;
                if spec.verify {
                    let g = sh.gens[slot.block as usize].load(Ordering::Relaxed);
                    if g != 0 {
                        fill(&mut expect, slot.block, g);
                        // SAFETY: the read into this buffer has completed.
                        let got =
                            unsafe { std::slice::from_raw_parts((base + s * bs) as *const u8, bs) };
                        if got != &expect[..] {
                            let i = got.iter().zip(&expect).position(|(a, b)| a != b);
                            bail!(
                                "verify failed: block {} (offset {}) differs at byte {:?} from generation {g}",
                                slot.block,
                                slot.block * bs as u64,
                                i
                            );
                        }
                        out.verified += 1;
                    }
                }
            }
            if !stopping && submitted < my_ops {
                let (block, write) = pick(s, &mut rng);
                submit(&mut q, &mut slots[s], s, block, write);
                submitted += 1;
                inflight += 1;
            }
        }
    }
    Ok(out)
}

/// Parses sizes like `4096`, `4k`, `1M`, `2G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let unit = s[i..].to_ascii_lowercase();
            let m = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                _ => return Err(format!("unknown unit in {s:?}")),
            };
            (&s[..i], m)
        }
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("bad size {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("4x").is_err());
    }

    #[test]
    fn rw_and_names() {
        assert_eq!("mix:70".parse::<Rw>(), Ok(Rw::Mix(70)));
        assert_eq!("read".parse::<Rw>(), Ok(Rw::Read));
        assert!("mix:170".parse::<Rw>().is_err());
        let mut j = JobSpec::new(4096, Rw::Read, true, 32);
        assert_eq!(j.name(), "4k-randread-qd32");
        j.bs = 1 << 20;
        j.random = false;
        j.rw = Rw::Mix(70);
        assert_eq!(j.name(), "1m-seqrw70-qd32");
    }

    #[test]
    fn pattern_depends_on_block_and_gen() {
        let (mut a, mut b, mut c) = (vec![0u8; 64], vec![0u8; 64], vec![0u8; 64]);
        fill(&mut a, 1, 1);
        fill(&mut b, 1, 2);
        fill(&mut c, 2, 1);
        assert_ne!(a, b);
        assert_ne!(a, c);
        fill(&mut b, 1, 1);
        assert_eq!(a, b);
    }
}
