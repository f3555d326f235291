//! Item 4 of `basalt-bench layouts`: 512 KiB reads of volumes restored from
//! a `duplicate` snapshot over two S3 servers, the first reached through a
//! fault proxy, while that server is healthy, slowed, then killed.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use basalt_snapshot::testing::S3Server;
use basalt_tests::blk::Blk;
use basalt_tests::faultproxy::FaultProxy;

use super::setup::{self, seed_of, u};
use super::{FallbackRound, LayoutOpts, Phase, Timed};
use crate::snapbench::cluster::Cluster;
use crate::snapbench::io::fill_random;
use crate::snapbench::steps::wait_snapshot;

/// Delay the proxy adds to every forwarded read while the first server is slow.
pub const DELAY_MS: u64 = 300;
/// `--hydration-rate-mib` of the control service here: reads are mostly on demand.
pub const RATE_MIB: u64 = 1;
const BLOCK: u64 = 512 << 10;

fn s3() -> Result<S3Server> {
    S3Server::start()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("starting an S3 server (s3s-fs)")
}

/// A restored volume, attached and open.
struct Restored {
    name: String,
    blk: Blk,
}

fn restore(cl: &Cluster, snap: &str, name: String) -> Result<Restored> {
    cl.cli_json(&["volume", "create", &name, "--from-snapshot", snap])?;
    let a = setup::attach(cl, &name)?;
    Ok(Restored {
        blk: Blk::open(&a.socket)?,
        name,
    })
}

fn hydration(cl: &Cluster, vol: &str) -> Result<serde_json::Value> {
    Ok(cl.cli_json(&["volume", "show", vol])?["hydration"].clone())
}

/// Reads blocks `first..first + n` (512 KiB each) of `v`, timing every read
/// and checking it against `data`.
fn read_phase(
    cl: &Cluster,
    v: &mut Restored,
    (name, new_volume): (&str, bool),
    first: u64,
    n: u64,
    data: &[u8],
) -> Result<Phase> {
    let before = hydration(cl, &v.name)?;
    let mut buf = vec![0u8; BLOCK as usize];
    let (mut lat_ms, mut data_ok) = (Vec::new(), true);
    for b in first..first + n {
        let off = b * BLOCK;
        let t = Instant::now();
        v.blk
            .read_at(off, &mut buf)
            .with_context(|| format!("{name}: read of block {b} of {}", v.name))?;
        lat_ms.push(t.elapsed().as_secs_f64() * 1e3);
        data_ok &= buf[..] == data[off as usize..(off + BLOCK) as usize];
    }
    let h = hydration(cl, &v.name)?;
    let mut sorted = lat_ms.clone();
    sorted.sort_by(f64::total_cmp);
    eprintln!(
        "{name} ({}): {n} reads of 512 KiB, median {:.1} ms, max {:.1} ms; data ok: {data_ok}; hedges {} → {}, fallbacks {} → {}",
        v.name,
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        before["hedges"],
        h["hedges"],
        before["fallbacks"],
        h["fallbacks"]
    );
    Ok(Phase {
        name: name.to_owned(),
        volume: v.name.clone(),
        new_volume,
        first_block: first,
        blocks: n,
        lat_ms,
        data_ok,
        blocks_present_before: u(&before["blocks_present"]),
        hydration_before: before,
        hydration: h,
    })
}

/// Creates a volume of random data, backs it up `duplicate` to `da` and
/// `db`, snapshots it, deletes it; returns the data and the snapshot's time.
fn source(cl: &Cluster, o: &LayoutOpts, tag: &str, da: &str, db: &str) -> Result<(Vec<u8>, Timed)> {
    let (vol, snap) = (format!("fsrc-{tag}"), format!("fsnap-{tag}"));
    let mut data = vec![0u8; o.data as usize];
    let mut state = seed_of(&vol);
    fill_random(&mut data, &mut state);
    cl.cli_json(&[
        "volume",
        "create",
        &vol,
        "--size",
        &format!("{}M", o.data >> 20),
    ])?;
    let att = setup::attach(cl, &vol)?;
    {
        let mut blk = Blk::open(&att.socket)?;
        blk.write_at(0, &data)?;
        blk.flush()?;
    }
    let (la, lb) = ("--destination", "--layout");
    cl.cli_json(&["volume", "backup", &vol, lb, "duplicate", la, da, la, db])?;
    let t0 = Instant::now();
    cl.cli_json(&["snapshot", "create", &vol, "--name", &snap])?;
    wait_snapshot(cl, &snap)?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("fallback: {snap} duplicate to {da} (through the proxy) and {db}: {secs:.2} s");
    cl.cli_json(&["volume", "detach", &vol])?;
    cl.cli_json(&["volume", "delete", &vol])?;
    let t = Timed {
        secs,
        server_secs: None,
        mb_s: o.data as f64 / secs / 1e6,
        cpu_s: Vec::new(),
    };
    Ok((data, t))
}

/// One round: two fresh S3 servers (the first behind a proxy) and a
/// `duplicate` snapshot over both. Volume A, restored at the start, is read
/// through the three conditions in turn (healthy, the first server slowed,
/// killed), each on its own block range, from the top of the volume down
/// (the background hydration, at [`RATE_MIB`], walks up from block 0).
/// Volumes B and C are restored once the first server is slowed, and once
/// it is dead, and read on the same ranges: their destination ranking
/// starts afresh, so their reads try the first server first.
pub fn round(cl: &Cluster, o: &LayoutOpts, round: usize, creds: &Path) -> Result<FallbackRound> {
    let (a, b) = (s3()?, s3()?);
    let proxy = FaultProxy::start(
        a.endpoint
            .trim_start_matches("http://")
            .parse()
            .context("S3 server address")?,
    )?;
    let tag = format!("r{}", round + 1);
    let (da, db) = (format!("fa{}", round + 1), format!("fb{}", round + 1));
    setup::add_s3(
        cl,
        &da,
        &format!("http://{}", proxy.addr()),
        &a.bucket,
        creds,
    )?;
    setup::add_s3(cl, &db, &b.endpoint, &b.bucket, creds)?;
    let (data, snap_t) = source(cl, o, &tag, &da, &db)?;
    let snap = format!("fsnap-{tag}");

    let (blocks, n) = (o.data / BLOCK, o.phase_blocks as u64);
    let range = |i: u64| blocks - (i + 1) * n;
    let mut va = restore(cl, &snap, format!("frst-a-{tag}"))?;
    let mut phases = vec![read_phase(
        cl,
        &mut va,
        ("healthy", true),
        range(0),
        n,
        &data,
    )?];
    proxy.set_delay(Duration::from_millis(DELAY_MS));
    phases.push(read_phase(
        cl,
        &mut va,
        ("slowed", false),
        range(1),
        n,
        &data,
    )?);
    let mut vb = restore(cl, &snap, format!("frst-b-{tag}"))?;
    phases.push(read_phase(
        cl,
        &mut vb,
        ("slowed, new volume", true),
        range(1),
        n,
        &data,
    )?);
    proxy.set_delay(Duration::ZERO);
    drop(a);
    phases.push(read_phase(
        cl,
        &mut va,
        ("killed", false),
        range(2),
        n,
        &data,
    )?);
    let mut vc = restore(cl, &snap, format!("frst-c-{tag}"))?;
    phases.push(read_phase(
        cl,
        &mut vc,
        ("killed, new volume", true),
        range(2),
        n,
        &data,
    )?);
    for v in [va, vb, vc] {
        drop(v.blk);
        cl.cli_json(&["volume", "detach", &v.name])?;
        cl.cli_json(&["volume", "delete", &v.name])?;
    }
    drop(proxy);
    drop(b);
    Ok(FallbackRound {
        round: round + 1,
        destinations: vec![da, db],
        snap: snap_t,
        phases,
    })
}

/// Notes for the report: reads that returned wrong data; phases whose
/// range the background hydration may already have reached (present
/// blocks, less those read on demand before, reach the range's start).
pub fn check(f: &FallbackRound) -> Vec<String> {
    let mut notes = Vec::new();
    for (i, p) in f.phases.iter().enumerate() {
        if !p.data_ok {
            notes.push(format!(
                "fallback round {}, phase {} ({}): a read returned data that differs from the snapshot's",
                f.round, p.name, p.volume
            ));
        }
        let read_before: u64 = f.phases[..i]
            .iter()
            .filter(|q| q.volume == p.volume)
            .map(|q| q.blocks)
            .sum();
        if p.blocks_present_before.saturating_sub(read_before) >= p.first_block {
            notes.push(format!(
                "fallback round {}, phase {} ({}): the background hydration may have reached its blocks ({} present before it)",
                f.round, p.name, p.volume, p.blocks_present_before
            ));
        }
    }
    notes
}
