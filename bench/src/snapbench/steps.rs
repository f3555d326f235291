//! The measurements of `basalt-bench snapshots`, one function per item.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::cluster::{Cluster, ControlKnobs};
use super::io::{next, Dev};
use super::{
    logs, DestResult, Fill, FirstRead, HydrationRun, IopsRound, JobBrief, PointRun, ReadRound,
    SnapOpts, SnapRun, POLL_MS,
};
use crate::job::{self, JobResult, JobSpec, Limit, Rw, Watched};
use crate::procstat;
use crate::stamp;

const MIB: u64 = 1 << 20;
/// Longest a snapshot upload or a hydration may take.
const WAIT_LIMIT: Duration = Duration::from_secs(1800);
/// How often the CLI is polled while a write job runs (jobs A and B alike).
const JOB_POLL: Duration = Duration::from_millis(200);

/// State of one destination's source volume.
pub struct Ctx {
    pub key: String,
    pub volume: String,
    pub dest_pid: Option<u32>,
    pub socket: PathBuf,
    pub primary: String,
    pub mirror: String,
}

fn seed_of(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn cpu(pid: Option<u32>) -> f64 {
    pid.and_then(procstat::cpu_time)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Pids whose CPU is reported: primary, mirror, control, destination server.
fn pids(cl: &Cluster, c: &Ctx) -> Result<[Option<u32>; 4]> {
    Ok([
        Some(cl.server_pid(&c.primary)?),
        Some(cl.server_pid(&c.mirror)?),
        cl.control.pid(),
        c.dest_pid,
    ])
}

fn watch(cl: &Cluster, c: &Ctx) -> Result<Vec<Watched>> {
    let p = pids(cl, c)?;
    let mut w = Vec::new();
    for (name, pid) in ["primary", "mirror", "control", "dest"].iter().zip(p) {
        if let Some(pid) = pid {
            w.push(Watched {
                name: (*name).into(),
                pid,
            });
        }
    }
    Ok(w)
}

pub fn brief(r: &JobResult) -> JobBrief {
    JobBrief {
        job: r.job.clone(),
        ops: r.ops,
        secs: r.secs,
        iops: r.iops,
        lat_p50_us: r.lat_p50_us,
        lat_p99_us: r.lat_p99_us,
        lat_max_us: r.lat_max_us,
        cpu_s: r.procs.iter().map(|p| (p.name.clone(), p.cpu_s)).collect(),
    }
}

/// Creates the source volume, attaches it and writes `data` bytes of
/// random data from offset 0 in 1 MiB sequential writes (8 in flight).
pub fn setup_volume(cl: &Cluster, o: &SnapOpts, c: &mut Ctx, r: &mut DestResult) -> Result<()> {
    let size = format!("{}M", o.volume / MIB);
    cl.cli_json(&["volume", "create", &c.volume, "--size", &size])?;
    let a = cl.cli_json(&["volume", "attach", &c.volume, "--node", "node1"])?;
    c.socket = PathBuf::from(
        a["attachment"]["socket_path"]
            .as_str()
            .context("attach gave no socket_path")?,
    );
    c.primary = a["primary"]["server_id"]
        .as_str()
        .context("no primary")?
        .to_owned();
    c.mirror = a["mirrors"][0]["server_id"]
        .as_str()
        .context("no mirror (two copies expected)")?
        .to_owned();
    let mut dev = Dev::open(&c.socket, 8, MIB as usize)?;
    let offsets: Vec<u64> = (0..o.data / MIB).map(|i| i * MIB).collect();
    let t0 = Instant::now();
    dev.write_random(&offsets, seed_of(&c.key))?;
    dev.flush()?;
    let secs = t0.elapsed().as_secs_f64();
    r.fill = Fill {
        bytes: o.data,
        secs,
        mb_s: o.data as f64 / secs / 1e6,
    };
    eprintln!(
        "{}: wrote {} MiB of random data in {:.2} s ({:.0} MB/s); primary {}, mirror {}",
        c.key,
        o.data / MIB,
        secs,
        r.fill.mb_s,
        c.primary,
        c.mirror
    );
    Ok(())
}

/// Polls `snapshot show` until the snapshot leaves CREATING.
pub(crate) fn wait_snapshot(cl: &Cluster, name: &str) -> Result<Value> {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let s = cl.cli_json(&["snapshot", "show", name])?;
        if s["state"] != "CREATING" {
            if s["state"] != "COMPLETE" {
                bail!("snapshot {name} ended {}: {}", s["state"], s["failure"]);
            }
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("snapshot {name} still CREATING after {WAIT_LIMIT:?}: {s}");
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
}

fn snap_run(name: &str, s: &Value) -> SnapRun {
    let p = &s["progress"];
    SnapRun {
        name: name.to_owned(),
        id: u(&s["id"]),
        parent_id: u(&s["parent_id"]),
        state: s["state"].as_str().unwrap_or("").to_owned(),
        change_source: p["change_source"].as_str().unwrap_or("").to_owned(),
        point_micros: u(&p["point_micros"]),
        blocks_total: u(&p["blocks_total"]),
        bytes_read: u(&p["bytes_read"]),
        bytes_uploaded: u(&p["bytes_uploaded"]),
        chunks_new: u(&p["chunks_new"]),
        chunks_reused: u(&p["chunks_reused"]),
        data_bytes: u(&p["data_bytes"]),
        cow_blocks: u(&p["cow_blocks"]),
        raw: s.clone(),
        ..SnapRun::default()
    }
}

/// A snapshot of the source volume, timed from the `snapshot create` call
/// to the COMPLETE state, with the CPU of the processes involved.
fn snapshot_timed(cl: &Cluster, c: &Ctx, name: &str) -> Result<SnapRun> {
    let p = pids(cl, c)?;
    let cpu0: Vec<f64> = p.iter().map(|&x| cpu(x)).collect();
    let t0 = Instant::now();
    cl.cli_json(&[
        "snapshot",
        "create",
        &c.volume,
        "--name",
        name,
        "--destination",
        &c.key,
    ])?;
    let call = t0.elapsed();
    let s = wait_snapshot(cl, name)?;
    let secs = t0.elapsed().as_secs_f64();
    let d: Vec<f64> = p.iter().zip(&cpu0).map(|(&x, c0)| cpu(x) - c0).collect();
    let mut r = snap_run(name, &s);
    r.secs = secs;
    r.create_call_secs = call.as_secs_f64();
    r.mb_s = r.bytes_read as f64 / secs / 1e6;
    r.primary_cpu_s = d[0];
    r.mirror_cpu_s = d[1];
    r.control_cpu_s = d[2];
    r.dest_server_cpu_s = c.dest_pid.map(|_| d[3]);
    r.server_secs = logs::upload_secs(&cl.server_log(&c.primary)?, r.id);
    eprintln!(
        "{}: snapshot {name} ({}): {:.2} s (server {:.2} s), read {:.1} MB, uploaded {:.1} MB, {:.0} MB/s; CPU primary {:.2} s, control {:.2} s",
        c.key,
        r.change_source,
        r.secs,
        r.server_secs.unwrap_or(f64::NAN),
        r.bytes_read as f64 / 1e6,
        r.bytes_uploaded as f64 / 1e6,
        r.mb_s,
        r.primary_cpu_s,
        r.control_cpu_s
    );
    Ok(r)
}

/// Item 2: `repeat` full snapshots; all but the last are deleted (so the
/// next one has no parent and its chunks are swept from the destination).
pub fn full_snapshots(cl: &Cluster, o: &SnapOpts, c: &Ctx, r: &mut DestResult) -> Result<()> {
    for i in 0..o.repeat {
        let name = format!("{}-full{}", c.key, i + 1);
        let s = snapshot_timed(cl, c, &name)?;
        if s.change_source != "FULL" || s.chunks_reused != 0 {
            r.notes.push(format!(
                "{name}: change source {}, {} chunks reused (expected FULL, 0)",
                s.change_source, s.chunks_reused
            ));
        }
        r.full.push(s);
        if i + 1 < o.repeat {
            cl.cli_json(&["snapshot", "delete", &name])?;
        }
    }
    Ok(())
}

/// `n` distinct 1 MiB extents at random 512 KiB-aligned offsets of the volume.
fn change_offsets(volume: u64, n: u64, rng: &mut u64) -> Vec<u64> {
    let half = 512 << 10;
    let slots = (volume - MIB) / half + 1;
    let mut used = std::collections::HashSet::new();
    let mut out = Vec::new();
    while (out.len() as u64) < n {
        let k = next(rng) % slots;
        if used.contains(&k) || used.contains(&(k + 1)) {
            continue;
        }
        used.insert(k);
        used.insert(k + 1);
        out.push(k * half);
    }
    out
}

/// Item 3: after each change of 1 % of the volume, an incremental snapshot.
pub fn incrementals(cl: &Cluster, o: &SnapOpts, c: &Ctx, r: &mut DestResult) -> Result<()> {
    let n = (o.volume / 100).div_ceil(MIB).max(1);
    r.change_writes = n;
    r.change_bytes = n * MIB;
    let mut rng = seed_of(&c.key) | 1;
    for i in 0..o.repeat {
        let offs = change_offsets(o.volume, n, &mut rng);
        let mut dev = Dev::open(&c.socket, 8, MIB as usize)?;
        dev.write_random(&offs, seed_of(&c.key) ^ (i as u64 + 1) << 40)?;
        dev.flush()?;
        drop(dev);
        let name = format!("{}-inc{}", c.key, i + 1);
        r.incremental.push(snapshot_timed(cl, c, &name)?);
    }
    r.restore_from = r
        .incremental
        .last()
        .or(r.full.last())
        .map(|s| s.name.clone())
        .unwrap_or_default();
    Ok(())
}

fn read_spec(o: &SnapOpts) -> JobSpec {
    let mut s = JobSpec::new(4096, Rw::Read, true, 32);
    s.span = Some(o.data);
    s.limit = Limit::Time(Duration::from_secs_f64(o.read_secs));
    s
}

fn blocks_present(v: &Value) -> (u64, u64) {
    let h = &v["hydration"];
    (u(&h["blocks_present"]), u(&h["blocks_total"]))
}

/// Items 6 and 7 (background hydration at `cold_rate_mib`): a new volume
/// from the snapshot until its first read; then 4 KiB random reads on it
/// (cold) and on the source volume (warm).
pub fn first_reads(cl: &Cluster, o: &SnapOpts, c: &Ctx, r: &mut DestResult) -> Result<()> {
    let src = r.restore_from.clone();
    let mut rng = seed_of(&c.key) ^ 0x5555;
    for i in 0..o.repeat {
        let vol = format!("{}-r{}", c.key, i + 1);
        let offset = (next(&mut rng) % (o.data / 4096)) * 4096;
        let t0 = Instant::now();
        cl.cli_json(&["volume", "create", &vol, "--from-snapshot", &src])?;
        let t1 = Instant::now();
        let a = cl.cli_json(&["volume", "attach", &vol, "--node", "node1"])?;
        let t2 = Instant::now();
        let socket = PathBuf::from(
            a["attachment"]["socket_path"]
                .as_str()
                .context("attach gave no socket_path")?,
        );
        let mut dev = Dev::open(&socket, 1, 4096)?;
        let t3 = Instant::now();
        let read = dev.read_timed(offset, 4096)?;
        let t4 = Instant::now();
        let data_ok = dev.head(4096).iter().any(|&b| b != 0);
        drop(dev);
        let f = FirstRead {
            volume: vol.clone(),
            offset,
            create_ms: ms(t1 - t0),
            attach_ms: ms(t2 - t1),
            connect_ms: ms(t3 - t2),
            read_ms: ms(read),
            total_ms: ms(t4 - t0),
            data_ok,
        };
        eprintln!(
            "{}: {vol}: first read after {:.1} ms (create {:.1}, attach {:.1}, connect {:.1}, read {:.1}){}",
            c.key,
            f.total_ms,
            f.create_ms,
            f.attach_ms,
            f.connect_ms,
            f.read_ms,
            if data_ok { "" } else { " — READ ZEROES" }
        );
        if !data_ok {
            r.notes.push(format!(
                "{vol}: the first read at offset {offset} returned zeroes, not the snapshot's data"
            ));
        }
        r.first_read.push(f);

        let before = blocks_present(&cl.cli_json(&["volume", "show", &vol])?);
        let cold = job::run(&socket, &read_spec(o), &[])
            .with_context(|| format!("cold reads on {vol}"))?;
        let after = blocks_present(&cl.cli_json(&["volume", "show", &vol])?);
        let warm = job::run(&c.socket, &read_spec(o), &watch(cl, c)?)
            .with_context(|| format!("warm reads on {}", c.volume))?;
        eprintln!(
            "{}: 4k randread QD32: cold {:.0} IOPS (p50 {:.0} us, {} → {} of {} blocks present), warm {:.0} IOPS (p50 {:.0} us)",
            c.key, cold.iops, cold.lat_p50_us, before.0, after.0, after.1, warm.iops, warm.lat_p50_us
        );
        r.reads.push(ReadRound {
            cold: brief(&cold),
            warm: brief(&warm),
            cold_blocks_present_before: before.0,
            cold_blocks_present_after: after.0,
            blocks_total: after.1,
        });
        cl.cli_json(&["volume", "detach", &vol])?;
        cl.cli_json(&["volume", "delete", &vol])?;
    }
    Ok(())
}

/// Item 8 (background hydration unlimited): a new volume from the
/// snapshot, timed until its hydration completes.
pub fn hydrations(cl: &Cluster, o: &SnapOpts, c: &Ctx, r: &mut DestResult) -> Result<()> {
    let src = r.restore_from.clone();
    let data_bytes = u(&cl.cli_json(&["snapshot", "show", &src])?["progress"]["data_bytes"]);
    for i in 0..o.repeat {
        let vol = format!("{}-h{}", c.key, i + 1);
        let t0 = Instant::now();
        let v = cl.cli_json(&["volume", "create", &vol, "--from-snapshot", &src])?;
        let id = u(&v["id"]);
        let primary = v["primary"]["server_id"]
            .as_str()
            .context("no primary")?
            .to_owned();
        let deadline = Instant::now() + WAIT_LIMIT;
        let mut fetched = 0;
        loop {
            let v = cl.cli_json(&["volume", "show", &vol])?;
            let h = &v["hydration"];
            fetched = fetched.max(u(&h["bytes_fetched"]));
            if h.is_null() || h["complete"] == true {
                break;
            }
            if Instant::now() > deadline {
                bail!("{vol} still hydrating after {WAIT_LIMIT:?}: {v}");
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
        let secs = t0.elapsed().as_secs_f64();
        let h = HydrationRun {
            volume: vol.clone(),
            secs,
            server_secs: logs::hydration_secs(&cl.server_log(&primary)?, id),
            data_bytes,
            bytes_fetched: fetched,
            mb_s: data_bytes as f64 / secs / 1e6,
        };
        eprintln!(
            "{}: {vol}: hydrated {:.1} MB of data in {:.2} s (server {:.2} s): {:.0} MB/s",
            c.key,
            data_bytes as f64 / 1e6,
            secs,
            h.server_secs.unwrap_or(f64::NAN),
            h.mb_s
        );
        r.hydration.push(h);
        cl.cli_json(&["volume", "delete", &vol])?;
    }
    Ok(())
}

/// Deletes every snapshot of the source volume (the next one is then full).
pub fn delete_snapshots(cl: &Cluster, c: &Ctx) -> Result<()> {
    let l = cl.cli_json(&["snapshot", "list", "--volume", &c.volume])?;
    for s in l.as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or_default();
        if s["state"] == "CREATING" {
            wait_snapshot(cl, name)?;
        }
        cl.cli_json(&["snapshot", "delete", name])?;
    }
    Ok(())
}

/// Runs `f` while another thread polls the CLI with `args` every
/// [`JOB_POLL`]; returns f's result and the (time, state) samples.
fn with_poller<T>(
    cl: &Cluster,
    args: &[&str],
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, Vec<(Instant, String)>)> {
    let stop = AtomicBool::new(false);
    let samples = Mutex::new(Vec::new());
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(v) = cl.cli_json(args) {
                    let state = v["state"].as_str().unwrap_or("").to_owned();
                    samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((Instant::now(), state));
                }
                std::thread::sleep(JOB_POLL);
            }
        });
        let out = f();
        stop.store(true, Ordering::Relaxed);
        out
    })?;
    Ok((out, samples.into_inner().unwrap_or_else(|e| e.into_inner())))
}

/// 4 KiB random writes at QD32 over the data. `verify` makes every write
/// carry its own pattern (block and generation), so the data stays
/// incompressible, as the fill was; nothing is read back.
fn write_spec(o: &SnapOpts) -> JobSpec {
    let mut s = JobSpec::new(4096, Rw::Write, true, 32);
    s.verify = true;
    s.span = Some(o.data);
    s.limit = Limit::Time(Duration::from_secs_f64(o.job_secs));
    s
}

/// One round of item 4: job A without a snapshot, then job B while a full
/// snapshot uploads.
fn iops_round(cl: &Cluster, o: &SnapOpts, c: &Ctx, name: &str, rate: u64) -> Result<IopsRound> {
    let w = watch(cl, c)?;
    let (a, _) = with_poller(cl, &["volume", "show", &c.volume], || {
        job::run(&c.socket, &write_spec(o), &w)
    })?;
    let p = pids(cl, c)?;
    let cpu0: Vec<f64> = p.iter().map(|&x| cpu(x)).collect();
    let t0 = Instant::now();
    cl.cli_json(&[
        "snapshot",
        "create",
        &c.volume,
        "--name",
        name,
        "--destination",
        &c.key,
    ])?;
    let call = t0.elapsed();
    let ((b, jb0, jb1, wall0, wall1), samples) =
        with_poller(cl, &["snapshot", "show", name], || {
            let (start, wall0) = (Instant::now(), logs::wall_now());
            let b = job::run(&c.socket, &write_spec(o), &w)?;
            Ok((b, start, Instant::now(), wall0, logs::wall_now()))
        })?;
    let s = wait_snapshot(cl, name)?;
    // COMPLETE as first seen by the poll during job B, else now.
    let secs = samples
        .iter()
        .find(|(_, st)| st != "CREATING")
        .map(|(t, _)| *t - t0)
        .unwrap_or_else(|| t0.elapsed())
        .as_secs_f64();
    let d: Vec<f64> = p.iter().zip(&cpu0).map(|(&x, c0)| cpu(x) - c0).collect();
    let mut snap = snap_run(name, &s);
    // The upload's end from the primary's log (same clock as wall0/wall1);
    // without it, up to the last poll that still saw CREATING (a lower bound).
    let span = logs::upload_span(&cl.server_log(&c.primary)?, snap.id);
    let creating_until = samples
        .iter()
        .filter(|(_, st)| st == "CREATING")
        .map(|(t, _)| *t)
        .max()
        .unwrap_or(jb0);
    let still = samples.last().is_some_and(|(_, st)| st == "CREATING");
    let job_len = (jb1 - jb0).as_secs_f64();
    let overlap = match span {
        Some((_, end)) => (end.min(wall1) - wall0) / (wall1 - wall0),
        None if still => 1.0,
        None => (creating_until.min(jb1).saturating_duration_since(jb0)).as_secs_f64() / job_len,
    };
    snap.secs = secs;
    snap.create_call_secs = call.as_secs_f64();
    snap.mb_s = snap.bytes_read as f64 / secs / 1e6;
    snap.primary_cpu_s = d[0];
    snap.mirror_cpu_s = d[1];
    snap.control_cpu_s = d[2];
    snap.dest_server_cpu_s = c.dest_pid.map(|_| d[3]);
    snap.server_secs = span.map(|(a, b)| b - a);
    let round = IopsRound {
        snapshot_rate_mib: rate,
        ratio: b.iops / a.iops,
        a: brief(&a),
        b: brief(&b),
        overlap: overlap.clamp(0.0, 1.0),
        snap,
    };
    eprintln!(
        "{}: 4k randwrite QD32: A {:.0} IOPS, B {:.0} IOPS during {name} ({}, rate {}): {:.0} %, overlap {:.0} %, upload {:.2} s",
        c.key,
        round.a.iops,
        round.b.iops,
        round.snap.change_source,
        if rate == 0 { "unlimited".to_string() } else { format!("{rate} MiB/s") },
        100.0 * round.ratio,
        100.0 * round.overlap,
        round.snap.server_secs.unwrap_or(f64::NAN)
    );
    cl.cli_json(&["snapshot", "delete", name])?;
    Ok(round)
}

/// Item 4: rounds of jobs A and B. The first round uploads at full speed;
/// if that upload ended before job B did (overlap < 95 %), the control
/// service is restarted with `--snapshot-rate-mib` so the upload lasts
/// 1.5 × the job, and the rounds are run again at that rate.
pub fn iops_during_upload(
    cl: &mut Cluster,
    o: &SnapOpts,
    c: &Ctx,
    r: &mut DestResult,
) -> Result<()> {
    let probe = iops_round(cl, o, c, &format!("{}-up1", c.key), 0)?;
    let covered = probe.overlap >= 0.95;
    r.iops.push(probe);
    let rate = if covered {
        0
    } else {
        let rate = ((o.data / MIB) as f64 / (1.5 * o.job_secs))
            .floor()
            .max(1.0) as u64;
        r.notes.push(format!(
            "IOPS during an upload: the unlimited upload covered only {:.0} % of job B, so the rounds were run again with --snapshot-rate-mib {rate} (upload ≥ 1.5 × the job)",
            100.0 * r.iops[0].overlap
        ));
        cl.restart_control(ControlKnobs {
            snapshot_rate_mib: rate,
            ..cl.knobs
        })?;
        rate
    };
    let more = if covered { o.repeat - 1 } else { o.repeat };
    for i in 0..more {
        let name = format!("{}-up{}", c.key, i + 2);
        r.iops.push(iops_round(cl, o, c, &name, rate)?);
    }
    Ok(())
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// Item 5: 4 KiB random writes at QD32 with `snapshot create` called in
/// the middle (`stamp-write`'s writer, which logs every write).
pub fn point_latency(cl: &Cluster, o: &SnapOpts, c: &Ctx, r: &mut DestResult) -> Result<()> {
    let span = o.data.min(256 * MIB) / 4096 * 4096;
    for i in 0..o.repeat {
        let name = format!("{}-pt{}", c.key, i + 1);
        let cmd = cl.cli_cmdline(&[
            "snapshot",
            "create",
            &c.volume,
            "--name",
            &name,
            "--destination",
            &c.key,
        ]);
        let log = stamp::write(&stamp::WriteOpts {
            socket: c.socket.clone(),
            span,
            qd: 32,
            seconds: o.point_secs,
            at_secs: o.point_secs / 2.0,
            cmd,
            seed: 0x9e37_79b9_7f4a_7c15 ^ i as u64,
        })?;
        if !log.cmd_success {
            bail!(
                "snapshot create during the write job failed: {}",
                log.cmd_stderr.trim()
            );
        }
        let timed = &log.writes[log.figures.fill_writes as usize..];
        let during = |w: &[u64; 4]| w[2] < log.cmd_end_ns && w[3] > log.cmd_start_ns;
        let lat = |w: &[u64; 4]| w[3].saturating_sub(w[2]);
        let mut outside: Vec<u64> = timed.iter().filter(|w| !during(w)).map(lat).collect();
        outside.sort_unstable();
        let mut before: Vec<u64> = timed
            .iter()
            .filter(|w| w[3] <= log.cmd_start_ns)
            .map(lat)
            .collect();
        before.sort_unstable();
        let mut after: Vec<u64> = timed
            .iter()
            .filter(|w| w[2] >= log.cmd_end_ns)
            .map(lat)
            .collect();
        after.sort_unstable();
        let s = wait_snapshot(cl, &name)?;
        let f = &log.figures;
        let p = PointRun {
            snapshot: name.clone(),
            cmd_secs: f.cmd_secs,
            cmd_ok: log.cmd_success,
            point_micros: u(&s["progress"]["point_micros"]),
            writes: f.writes,
            iops: f.iops,
            in_flight_during: f.in_flight_during_cmd,
            max_lat_during_us: f.max_lat_during_cmd_us,
            outside_writes: outside.len() as u64,
            outside_p50_us: pct(&outside, 0.5),
            outside_p99_us: pct(&outside, 0.99),
            outside_max_us: pct(&outside, 1.0),
            before_p99_us: pct(&before, 0.99),
            before_max_us: pct(&before, 1.0),
            after_p99_us: pct(&after, 0.99),
            after_max_us: pct(&after, 1.0),
            cow_blocks: u(&s["progress"]["cow_blocks"]),
        };
        eprintln!(
            "{}: {name}: call {:.0} ms (point {} us); {} writes in flight during it, longest {:.0} us; outside p50 {:.0} / p99 {:.0} / max {:.0} us",
            c.key,
            p.cmd_secs * 1e3,
            p.point_micros,
            p.in_flight_during,
            p.max_lat_during_us,
            p.outside_p50_us,
            p.outside_p99_us,
            p.outside_max_us
        );
        r.point.push(p);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_extents_are_distinct_and_aligned() {
        let mut rng = 7;
        let v = change_offsets(64 * MIB, 20, &mut rng);
        assert_eq!(v.len(), 20);
        let mut blocks = std::collections::HashSet::new();
        for &o in &v {
            assert_eq!(o % (512 << 10), 0);
            assert!(o + MIB <= 64 * MIB);
            assert!(blocks.insert(o / (512 << 10)));
            assert!(blocks.insert(o / (512 << 10) + 1));
        }
    }
}
