//! `basalt-bench snapshots`: what snapshots cost and what they buy, on one
//! cluster of real processes (control, two storage servers, a node manager;
//! two copies per volume), for two destinations: a directory on tmpfs and a
//! real S3 server (`s3s-fs`). See `docs/bench/snapshots.md` for the method.
//!
//! Per destination, on a volume whose first `data` bytes hold random data:
//! full and incremental snapshots (time, throughput, CPU), 4 KiB random
//! write IOPS while an upload runs, the write latency at the snapshot point,
//! the time to the first read of a volume created from the snapshot, random
//! reads on a cold restored volume against the warm source, and the
//! hydration throughput.

pub(crate) mod cluster;
pub(crate) mod io;
pub(crate) mod logs;
pub mod report;
pub(crate) mod steps;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use cluster::{Cluster, ControlKnobs};

pub struct SnapOpts {
    /// Where snapshots.json / snapshots.md / snapshots.png go.
    pub out: PathBuf,
    /// Size of the source volume.
    pub volume: u64,
    /// Bytes of random data written from offset 0.
    pub data: u64,
    /// Rounds of each repeated measurement (medians are reported).
    pub repeat: usize,
    /// Seconds of the 4 KiB write jobs (IOPS during an upload).
    pub job_secs: f64,
    /// Seconds of the 4 KiB read jobs (cold / warm).
    pub read_secs: f64,
    /// Seconds of the point-latency write job (the snapshot call in the middle).
    pub point_secs: f64,
    /// `--hydration-rate-mib` for the cold-volume phase.
    pub cold_rate_mib: u64,
    pub quick: bool,
    /// Skip the S3 destination.
    pub no_s3: bool,
}

/// One snapshot, timed from the CLI call to the COMPLETE state seen.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapRun {
    pub name: String,
    pub id: u64,
    pub parent_id: u64,
    pub state: String,
    pub change_source: String,
    /// `snapshot create` called → COMPLETE seen by polling `snapshot show`.
    pub secs: f64,
    /// The primary's log: "snapshot point taken" → "snapshot uploaded".
    pub server_secs: Option<f64>,
    /// Seconds the `snapshot create` call took (returns once the point is taken).
    pub create_call_secs: f64,
    pub point_micros: u64,
    pub blocks_total: u64,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
    pub data_bytes: u64,
    pub cow_blocks: u64,
    /// bytes_read / secs, MB/s (10^6).
    pub mb_s: f64,
    pub primary_cpu_s: f64,
    pub mirror_cpu_s: f64,
    pub control_cpu_s: f64,
    /// The S3 server's CPU (s3s-fs), when the destination is S3.
    pub dest_server_cpu_s: Option<f64>,
    /// The snapshot as `snapshot show --output json` gave it at the end.
    pub raw: serde_json::Value,
}

/// A 4 KiB job, in brief.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobBrief {
    pub job: String,
    pub ops: u64,
    pub secs: f64,
    pub iops: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub lat_max_us: f64,
    /// CPU seconds of the watched processes during the job (name, s).
    pub cpu_s: Vec<(String, f64)>,
}

/// Item 4: job A (no snapshot) and job B (while a full snapshot uploads).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IopsRound {
    /// `--snapshot-rate-mib` of the upload (0 = unlimited).
    pub snapshot_rate_mib: u64,
    pub a: JobBrief,
    pub b: JobBrief,
    /// b.iops / a.iops.
    pub ratio: f64,
    /// Fraction of job B's time during which the snapshot was uploading
    /// (from the primary's log; without it, up to the last poll that still
    /// saw it CREATING).
    pub overlap: f64,
    pub snap: SnapRun,
}

/// Item 5: a write job with `snapshot create` called in the middle.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PointRun {
    pub snapshot: String,
    pub cmd_secs: f64,
    pub cmd_ok: bool,
    pub point_micros: u64,
    pub writes: u64,
    pub iops: f64,
    /// Writes submitted before the call ended and completed after it started.
    pub in_flight_during: u64,
    pub max_lat_during_us: f64,
    pub outside_writes: u64,
    pub outside_p50_us: f64,
    pub outside_p99_us: f64,
    pub outside_max_us: f64,
    /// Only the writes that completed before the call started.
    pub before_p99_us: f64,
    pub before_max_us: f64,
    /// Only the writes submitted after the call returned.
    pub after_p99_us: f64,
    pub after_max_us: f64,
    /// Blocks the primary copied aside (first write to a block not yet
    /// uploaded) during the upload.
    pub cow_blocks: u64,
}

/// Item 6: a new volume from the snapshot, up to its first read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FirstRead {
    pub volume: String,
    pub offset: u64,
    pub create_ms: f64,
    pub attach_ms: f64,
    pub connect_ms: f64,
    /// The first 4 KiB read alone.
    pub read_ms: f64,
    /// `volume create --from-snapshot` started → first read completed.
    pub total_ms: f64,
    /// The block read back was not all zeroes (it came from the snapshot).
    pub data_ok: bool,
}

/// Item 7: 4 KiB random reads on a cold restored volume and on the source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReadRound {
    pub cold: JobBrief,
    pub warm: JobBrief,
    pub cold_blocks_present_before: u64,
    pub cold_blocks_present_after: u64,
    pub blocks_total: u64,
}

/// Item 8: hydration at an unlimited rate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HydrationRun {
    pub volume: String,
    /// `volume create --from-snapshot` started → hydration complete seen.
    pub secs: f64,
    /// The primary's log ("hydration complete secs=…").
    pub server_secs: Option<f64>,
    pub data_bytes: u64,
    pub bytes_fetched: u64,
    /// data_bytes / secs, MB/s.
    pub mb_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Fill {
    pub bytes: u64,
    pub secs: f64,
    pub mb_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DestResult {
    pub key: String,
    pub label: String,
    pub fill: Fill,
    pub full: Vec<SnapRun>,
    /// Bytes written before each incremental.
    pub change_bytes: u64,
    pub change_writes: u64,
    pub incremental: Vec<SnapRun>,
    /// The snapshot the restores use.
    pub restore_from: String,
    pub first_read: Vec<FirstRead>,
    pub reads: Vec<ReadRound>,
    pub hydration: Vec<HydrationRun>,
    pub iops: Vec<IopsRound>,
    pub point: Vec<PointRun>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapResults {
    pub meta: Vec<(String, String)>,
    pub volume: u64,
    pub data: u64,
    pub quick: bool,
    pub repeat: usize,
    pub job_secs: f64,
    pub read_secs: f64,
    pub point_secs: f64,
    pub cold_rate_mib: u64,
    pub poll_ms: u64,
    pub dests: Vec<DestResult>,
    pub notes: Vec<String>,
}

/// One destination of the run.
struct Dest {
    key: String,
    label: String,
    volume: String,
    /// Pid of the destination's server (s3s-fs), if any.
    server_pid: Option<u32>,
}

/// Scratch directory on tmpfs; removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn write_credentials(path: &std::path::Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| path.display().to_string())?;
    writeln!(
        f,
        "access_key_id = {}\nsecret_access_key = {}",
        basalt_snapshot::testing::ACCESS_KEY_ID,
        basalt_snapshot::testing::SECRET_ACCESS_KEY
    )?;
    Ok(())
}

/// Control polls uploads and hydrations this often (ms).
pub(crate) const POLL_MS: u64 = 100;

pub fn run(o: &SnapOpts) -> Result<SnapResults> {
    let scratch = Scratch(PathBuf::from(format!(
        "/dev/shm/basalt-bench-{}",
        std::process::id()
    )));
    if scratch.0.exists() {
        std::fs::remove_dir_all(&scratch.0)?;
    }
    std::fs::create_dir_all(scratch.0.join("dest"))?;
    let mut destinations = vec![format!("shm=file://{}/dest", scratch.0.display())];
    let mut dests = vec![Dest {
        key: "shm".into(),
        label: "directory on tmpfs (file://)".into(),
        volume: "v-shm".into(),
        server_pid: None,
    }];
    let s3 = if o.no_s3 {
        None
    } else {
        let s = basalt_snapshot::testing::S3Server::start()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("starting the S3 server (s3s-fs)")?;
        let creds = scratch.0.join("s3.credentials");
        write_credentials(&creds)?;
        destinations.push(format!(
            "s3=s3://{}/basalt,endpoint={},allow-http,credentials-file={}",
            s.bucket,
            s.endpoint,
            creds.display()
        ));
        dests.push(Dest {
            key: "s3".into(),
            label: "S3 API (s3s-fs on loopback; its objects under /tmp)".into(),
            volume: "v-s3".into(),
            server_pid: Some(s.pid()),
        });
        Some(s)
    };

    let cold = ControlKnobs {
        hydration_rate_mib: o.cold_rate_mib,
        snapshot_rate_mib: 0,
    };
    let unlimited = ControlKnobs {
        hydration_rate_mib: 0,
        snapshot_rate_mib: 0,
    };
    eprintln!("starting the cluster under {}", scratch.0.display());
    let mut cl = Cluster::start(
        &scratch.0.join("cluster"),
        2,
        destinations.clone(),
        cold,
        POLL_MS,
    )?;
    let mut res = SnapResults {
        meta: report::meta(),
        volume: o.volume,
        data: o.data,
        quick: o.quick,
        repeat: o.repeat,
        job_secs: o.job_secs,
        read_secs: o.read_secs,
        point_secs: o.point_secs,
        cold_rate_mib: o.cold_rate_mib,
        poll_ms: POLL_MS,
        dests: Vec::new(),
        notes: Vec::new(),
    };
    let mut ctx: Vec<steps::Ctx> = dests
        .iter()
        .map(|d| steps::Ctx {
            key: d.key.clone(),
            volume: d.volume.clone(),
            dest_pid: d.server_pid,
            socket: PathBuf::new(),
            primary: String::new(),
            mirror: String::new(),
        })
        .collect();
    for d in &dests {
        res.dests.push(DestResult {
            key: d.key.clone(),
            label: d.label.clone(),
            ..Default::default()
        });
    }

    // Phase 1 (background hydration at `cold_rate_mib`): fill, full and
    // incremental snapshots, first reads and cold reads.
    for (c, r) in ctx.iter_mut().zip(res.dests.iter_mut()) {
        eprintln!("== {}: fill, snapshots, restores", c.key);
        steps::setup_volume(&cl, o, c, r)?;
        steps::full_snapshots(&cl, o, c, r)?;
        steps::incrementals(&cl, o, c, r)?;
        steps::first_reads(&cl, o, c, r)?;
    }
    // Phase 2: hydration at an unlimited rate.
    cl.restart_control(unlimited)?;
    for (c, r) in ctx.iter_mut().zip(res.dests.iter_mut()) {
        eprintln!("== {}: hydration", c.key);
        steps::hydrations(&cl, o, c, r)?;
    }
    // Phase 3: writes during an upload and at the snapshot point (they
    // overwrite the data, so they come last).
    for (c, r) in ctx.iter_mut().zip(res.dests.iter_mut()) {
        eprintln!("== {}: IOPS during an upload, latency at the point", c.key);
        steps::delete_snapshots(&cl, c)?;
        steps::iops_during_upload(&mut cl, o, c, r)?;
        cl.restart_control(unlimited)?;
        steps::point_latency(&cl, o, c, r)?;
    }
    for c in &ctx {
        let _ = cl.cli(&["volume", "detach", &c.volume]);
    }
    drop(cl);
    drop(s3);
    std::thread::sleep(Duration::from_millis(100));
    Ok(res)
}
