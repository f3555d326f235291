//! Host-side I/O through libblkio against the backend and a real storage
//! server: data integrity at many offsets and sizes, splitting of large
//! requests, flush/discard/write-zeroes, two queues at QD>1, and serving a
//! second frontend after the first one disconnects.

mod common;

use std::time::{Duration, Instant};

use blkio::ReqFlags;
use common::blk::Blk;
use common::{pattern, Harness, Opts};

const MIB: usize = 1 << 20;

/// (offset, length) of the writes: 512 B to 8 MiB, aligned and not.
const WRITES: &[(u64, usize)] = &[
    (0, 512),
    (512 * 7, 4096),
    (MIB as u64 + 512, 64 << 10),
    (3 * MIB as u64, MIB),
    (5 * MIB as u64 - 1024, 5 * 512),
    (8 * MIB as u64, 4 * MIB),
    (16 * MIB as u64 + 4096, 8 * MIB),
    (40 * MIB as u64 + 512 * 3, 4 * MIB + 512),
    (64 * MIB as u64 - 512, 512),
];

#[test]
fn io_roundtrip_two_queues() -> anyhow::Result<()> {
    let h = Harness::start(Opts::default())?;
    let size = h.opts.size as usize;
    let mut model = vec![0u8; size];
    let mut blk = Blk::connect(&h.backend.socket, 2, 64 * MIB)?;
    assert_eq!(blk.capacity()?, h.opts.size);

    // Writes, spread over both queues, all in flight at once.
    let mut buf_off = 0usize;
    let mut per_q = [0usize; 2];
    for (i, &(off, len)) in WRITES.iter().enumerate() {
        let data = &mut blk.mem()[buf_off..buf_off + len];
        pattern(off, data);
        model[off as usize..off as usize + len].copy_from_slice(data);
        blk.write(i % 2, off, buf_off, len, i);
        per_q[i % 2] += 1;
        buf_off += len.next_multiple_of(4096);
    }
    blk.wait_ok(0, per_q[0])?;
    blk.wait_ok(1, per_q[1])?;
    blk.queues[0].flush(100, ReqFlags::empty());
    blk.wait_ok(0, 1)?;

    // Read everything back, again at QD>1 on both queues.
    read_and_compare(&mut blk, &model, WRITES)?;

    // Discard and write-zeroes read back as zeroes.
    let (d_off, d_len) = (16 * MIB as u64 + 4096, 2 * MIB as u64);
    let (z_off, z_len) = (3 * MIB as u64 + 4096, 64 << 10);
    blk.queues[0].discard(d_off, d_len, 1, ReqFlags::empty());
    blk.queues[1].write_zeroes(z_off, z_len, 2, ReqFlags::empty());
    blk.wait_ok(0, 1)?;
    blk.wait_ok(1, 1)?;
    model[d_off as usize..(d_off + d_len) as usize].fill(0);
    model[z_off as usize..(z_off + z_len) as usize].fill(0);
    read_and_compare(
        &mut blk,
        &model,
        &[
            (d_off - 4096, d_len as usize + 8192),
            (z_off - 512, z_len as usize + 1024),
        ],
    )?;
    read_and_compare(&mut blk, &model, WRITES)?;

    // Reads past the end fail (and the queue keeps working).
    blk.read(0, h.opts.size, 0, 4096, 7);
    let r = blk.wait(0, 1)?;
    assert!(r[0].1 < 0, "read past the end must fail, got {r:?}");

    drop(blk);
    let stats = h.backend.stats.total();
    assert!(
        stats.writes >= WRITES.len() as u64 && stats.reads >= 2 * WRITES.len() as u64,
        "{stats:?}"
    );
    assert!(
        stats.flushes >= 1 && stats.discards == 1 && stats.write_zeroes == 1,
        "{stats:?}"
    );
    assert_eq!(stats.retries, 0);

    // The primary's copy holds exactly what the guest wrote.
    let copy = h.storage().read_copy(h.opts.volume_id)?;
    assert!(copy.len() >= size);
    assert!(
        copy[..size] == model[..],
        "storage copy differs from what was written"
    );
    Ok(())
}

fn read_and_compare(blk: &mut Blk, model: &[u8], ranges: &[(u64, usize)]) -> anyhow::Result<()> {
    let mut buf_off = 0usize;
    let mut per_q = [0usize; 2];
    let mut spans = Vec::new();
    for (i, &(off, len)) in ranges.iter().enumerate() {
        blk.mem()[buf_off..buf_off + len].fill(0xEE);
        blk.read(i % 2, off, buf_off, len, i);
        per_q[i % 2] += 1;
        spans.push((buf_off, off as usize, len));
        buf_off += len.next_multiple_of(4096);
    }
    blk.wait_ok(0, per_q[0])?;
    blk.wait_ok(1, per_q[1])?;
    for (b, off, len) in spans {
        assert!(
            blk.mem()[b..b + len] == model[off..off + len],
            "data mismatch at offset {off} (+{len})"
        );
    }
    Ok(())
}

#[test]
fn serves_again_after_frontend_disconnects() -> anyhow::Result<()> {
    let h = Harness::start(Opts {
        size: 16 << 20,
        ..Opts::default()
    })?;
    let mut expected = vec![0u8; 256 << 10];
    pattern(7, &mut expected);
    {
        let mut blk = Blk::connect(&h.backend.socket, 2, 4 * MIB)?;
        blk.mem()[..expected.len()].copy_from_slice(&expected);
        blk.write(1, MIB as u64, 0, expected.len(), 1);
        blk.wait_ok(1, 1)?;
        // Leave a request in flight when the frontend goes away.
        blk.write(0, 2 * MIB as u64, 0, expected.len(), 2);
    }
    for round in 0..3 {
        let mut blk = Blk::connect(&h.backend.socket, 1, 4 * MIB)?;
        blk.read(0, MIB as u64, MIB, expected.len(), 1);
        blk.wait_ok(0, 1)?;
        assert!(
            blk.mem()[MIB..MIB + expected.len()] == expected[..],
            "round {round}"
        );
        blk.write(0, (4 + round) * MIB as u64, 0, 4096, 2);
        blk.wait_ok(0, 1)?;
    }
    Ok(())
}

/// Rough IOPS of 4 KiB random I/O at QD1 and QD32 (debug builds are slow:
/// run with `--release -- --nocapture` for meaningful figures).
#[test]
fn measure_iops() -> anyhow::Result<()> {
    let h = Harness::start(Opts {
        size: 256 << 20,
        queues: 1,
        queue_size: 256,
        ..Opts::default()
    })?;
    let mut blk = Blk::connect(&h.backend.socket, 1, 32 * 4096)?;
    pattern(1, blk.mem());
    let secs = std::env::var("BASALT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.5);
    for (write, qd) in [(true, 1), (true, 32), (false, 1), (false, 32)] {
        let (iops, p50) = run_qd(
            &mut blk,
            write,
            qd,
            Duration::from_secs_f64(secs),
            h.opts.size,
        )?;
        eprintln!(
            "4 KiB random {} QD{qd}: {iops:.0} IOPS, p50 {:.1} us",
            if write { "write" } else { "read" },
            p50.as_secs_f64() * 1e6
        );
    }
    Ok(())
}

fn run_qd(
    blk: &mut Blk,
    write: bool,
    qd: usize,
    dur: Duration,
    size: u64,
) -> anyhow::Result<(f64, Duration)> {
    let blocks = size / 4096;
    let mut rng = 0x1234_5678_9abc_def1u64;
    let next = |rng: &mut u64| {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        (*rng % blocks) * 4096
    };
    let mut started = vec![Instant::now(); qd];
    let mut lat = Vec::new();
    let submit = |blk: &mut Blk, slot: usize, off: u64| {
        if write {
            blk.write(0, off, slot * 4096, 4096, slot)
        } else {
            blk.read(0, off, slot * 4096, 4096, slot)
        }
    };
    let t0 = Instant::now();
    for (slot, s) in started.iter_mut().enumerate() {
        *s = Instant::now();
        submit(blk, slot, next(&mut rng));
    }
    let mut done = 0u64;
    while t0.elapsed() < dur {
        for (slot, ret) in blk.wait(0, 1)? {
            anyhow::ensure!(ret == 0, "I/O failed: {ret}");
            lat.push(started[slot].elapsed());
            done += 1;
            started[slot] = Instant::now();
            submit(blk, slot, next(&mut rng));
        }
    }
    let elapsed = t0.elapsed();
    blk.wait_ok(0, qd)?;
    lat.sort();
    Ok((
        done as f64 / elapsed.as_secs_f64(),
        lat.get(lat.len() / 2).copied().unwrap_or_default(),
    ))
}
