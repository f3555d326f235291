use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use basalt_bench::compare::{self, CompareOpts};
use basalt_bench::job::{self, parse_size, JobSpec, Limit, Rw, Watched};
use basalt_bench::layoutbench::{self, LayoutsArgs};
use basalt_bench::report;
use basalt_bench::snapbench::{self, SnapOpts};
use basalt_bench::stamp::{self, StampLog, WriteOpts};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "basalt-bench",
    about = "Host-side vhost-user-blk benchmark",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one job against a vhost-user-blk socket (any backend: Basalt, qemu-storage-daemon, …).
    Run(RunArgs),
    /// Start qemu-storage-daemon and Basalt with one and two copies, run the
    /// same jobs against each, write docs/bench/README.md and results.json.
    Compare(CompareArgs),
    /// Rewrite README.md from a results.json written by `compare`.
    Report {
        /// results.json of a compare run.
        #[arg(long, default_value = "docs/bench/results.json")]
        results: PathBuf,
    },
    /// Point-in-time check of a snapshot, part 1: write stamped 4 KiB blocks
    /// at random offsets and run a command (the snapshot) part-way through
    /// without pausing the writes; log every write and the command's times.
    StampWrite(StampWriteArgs),
    /// Point-in-time check of a snapshot, part 2: read a volume restored from
    /// the snapshot and check every block against the log of `stamp-write`.
    /// Exits non-zero on any violation.
    StampCheck(StampCheckArgs),
    /// Snapshot benchmark: start a cluster (control, two storage servers, a
    /// node manager) with a tmpfs and an S3 (s3s-fs) destination; time full
    /// and incremental snapshots, IOPS during an upload, the write latency at
    /// the snapshot point, the first read and cold reads of a restored
    /// volume, and hydration; write snapshots.{json,md,png}.
    Snapshots(SnapshotsArgs),
    /// Rewrite snapshots.md (and the chart) from a snapshots.json.
    SnapshotsReport {
        /// snapshots.json of a `snapshots` run.
        #[arg(long, default_value = "docs/bench/snapshots.json")]
        results: PathBuf,
    },
    /// Backup layouts benchmark: full snapshots to single, duplicate and
    /// striped destination sets (tmpfs and S3), their restores, import and
    /// export, and read latency while one of two S3 servers is slowed then
    /// killed; write layouts.{json,md,png}.
    Layouts(LayoutsArgs),
    /// Rewrite layouts.md (and the chart) from a layouts.json.
    LayoutsReport {
        /// layouts.json of a `layouts` run.
        #[arg(long, default_value = "docs/bench/layouts.json")]
        results: PathBuf,
    },
}

#[derive(clap::Args)]
struct SnapshotsArgs {
    /// Directory for snapshots.json, snapshots.md and snapshots.png
    /// (default: docs/bench, or target/snapbench-quick with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Size of the source volume (default 4G, 256M with --quick).
    #[arg(long, value_parser = parse_size)]
    volume: Option<u64>,
    /// Random data written from offset 0, a multiple of 1 MiB (default 1G,
    /// 64M with --quick).
    #[arg(long, value_parser = parse_size)]
    data: Option<u64>,
    /// Smoke run: 256 MiB volume, 64 MiB of data, short jobs, one round
    /// (unless --volume / --data / --repeat say otherwise).
    #[arg(long)]
    quick: bool,
    /// Rounds of each repeated measurement (default 3, 1 with --quick).
    #[arg(long)]
    repeat: Option<usize>,
    /// Seconds of each 4 KiB write job of the IOPS-during-upload test
    /// (default 10, 3 with --quick).
    #[arg(long)]
    job_secs: Option<f64>,
    /// Background hydration rate (MiB/s) while cold volumes are measured.
    #[arg(long, default_value_t = 1)]
    cold_rate_mib: u64,
    /// Only the tmpfs destination (no s3s-fs).
    #[arg(long)]
    no_s3: bool,
}

#[derive(clap::Args)]
struct StampWriteArgs {
    /// vhost-user-blk socket of the volume to snapshot.
    #[arg(long)]
    socket: PathBuf,
    /// Bytes from offset 0 to fill and write (multiple of 4k).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    span: u64,
    /// Writes in flight (one queue).
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Seconds of random writes after the initial fill.
    #[arg(long, default_value_t = 6.0)]
    seconds: f64,
    /// Start the command this many seconds into the random writes.
    #[arg(long, default_value_t = 3.0)]
    at_secs: f64,
    /// Command run with `sh -c` (e.g. "basalt snapshot create vol1 --name s1 --wait").
    #[arg(long)]
    cmd: String,
    /// Where to write the JSON log.
    #[arg(long)]
    log: PathBuf,
    /// Seed of the offset generator.
    #[arg(long, default_value_t = 0x9e37_79b9_7f4a_7c15)]
    seed: u64,
}

#[derive(clap::Args)]
struct StampCheckArgs {
    /// vhost-user-blk socket of the volume restored from the snapshot.
    #[arg(long)]
    socket: PathBuf,
    /// Bytes from offset 0 to check (default: the span of the log).
    #[arg(long, value_parser = parse_size)]
    span: Option<u64>,
    /// The log written by `stamp-write`.
    #[arg(long)]
    log: PathBuf,
    /// Also write the JSON result here.
    #[arg(long)]
    result: Option<PathBuf>,
    /// Skip the causality rule (a block must hold every write acknowledged
    /// before the submission of any write the image holds).
    #[arg(long)]
    no_causal: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// vhost-user-blk socket.
    #[arg(long)]
    socket: PathBuf,
    /// Block size (512, 4k, 1M, …).
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    bs: u64,
    /// read, write, or mix:<read %> (mix = mix:70).
    #[arg(long, default_value = "read")]
    rw: Rw,
    /// Sequential instead of random offsets.
    #[arg(long)]
    seq: bool,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 1)]
    qd: usize,
    /// Virtqueues (one thread each).
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    runtime: f64,
    /// Run this many requests instead of a fixed time.
    #[arg(long)]
    ops: Option<u64>,
    /// Write a per-block pattern and check it on every read.
    #[arg(long)]
    verify: bool,
    /// Use only the first SIZE bytes of the device.
    #[arg(long, value_parser = parse_size)]
    span: Option<u64>,
    /// Report CPU and memory of this process: NAME=PID (repeatable).
    #[arg(long = "pid", value_name = "NAME=PID")]
    pids: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Directory for README.md and results.json.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Scratch directory on tmpfs (removed and recreated).
    #[arg(long, default_value = "/dev/shm/basalt-bench")]
    work: PathBuf,
    /// Volume / image size.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Seconds per run.
    #[arg(long, default_value_t = 3.0)]
    runtime: f64,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Frontend virtqueues per job.
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Skip the fio run inside the TCG guest.
    #[arg(long)]
    no_guest: bool,
    /// Seconds per fio job in the guest.
    #[arg(long, default_value_t = 8)]
    guest_runtime: u32,
    /// Only these jobs (e.g. 4k-randread-qd32); repeatable.
    #[arg(long)]
    only: Vec<String>,
    /// Compare the data plane encrypted (default) against
    /// `--data-encryption off` instead (two copies each); writes
    /// security.md and security.json in --out.
    #[arg(long)]
    security: bool,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(a) => run(a),
        Cmd::Compare(a) => compare_cmd(a),
        Cmd::StampWrite(a) => stamp_write(a),
        Cmd::StampCheck(a) => stamp_check(a),
        Cmd::Snapshots(a) => snapshots(a),
        Cmd::Layouts(a) => layoutbench::main_run(a),
        Cmd::LayoutsReport { results } => layoutbench::main_report(&results),
        Cmd::SnapshotsReport { results } => {
            let r: snapbench::SnapResults = serde_json::from_slice(
                &std::fs::read(&results).with_context(|| results.display().to_string())?,
            )?;
            let dir = results.parent().unwrap_or(std::path::Path::new("."));
            snapshots_write(dir, &r, false)
        }
        Cmd::Report { results } => {
            let r: compare::Results = serde_json::from_slice(
                &std::fs::read(&results).with_context(|| results.display().to_string())?,
            )?;
            let dir = results.parent().unwrap_or(std::path::Path::new("."));
            std::fs::write(dir.join("README.md"), report::readme(&r))?;
            println!("{}", report::tables(&r));
            Ok(())
        }
    }
}

fn run(a: RunArgs) -> Result<()> {
    let mut spec = JobSpec::new(a.bs as usize, a.rw, !a.seq, a.qd);
    spec.queues = a.queues;
    spec.verify = a.verify;
    spec.span = a.span;
    spec.limit = match a.ops {
        Some(n) => Limit::Ops(n),
        None => Limit::Time(Duration::from_secs_f64(a.runtime)),
    };
    let mut watch = Vec::new();
    for p in &a.pids {
        let Some((name, pid)) = p.split_once('=') else {
            bail!("--pid wants NAME=PID, got {p:?}");
        };
        watch.push(Watched {
            name: name.to_string(),
            pid: pid.parse().with_context(|| format!("bad pid in {p:?}"))?,
        });
    }
    let r = job::run(&a.socket, &spec, &watch)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{}: {:.0} IOPS, {:.1} MB/s, latency µs p50 {:.1} p99 {:.1} p99.9 {:.1} (mean {:.1}, max {:.0}), {} ops in {:.2} s",
        r.job, r.iops, r.mb_s, r.lat_p50_us, r.lat_p99_us, r.lat_p999_us, r.lat_mean_us, r.lat_max_us, r.ops, r.secs
    );
    if spec.verify {
        println!(
            "verify: {} reads checked against the expected pattern",
            r.verified
        );
    }
    for p in &r.procs {
        println!(
            "  {} (pid {}): {:.2} CPU s, {:.2} µs CPU per I/O, RSS {} KiB (peak {} KiB)",
            p.name, p.pid, p.cpu_s, p.cpu_us_per_io, p.mem.rss_kib, p.mem.hwm_kib
        );
    }
    println!("  frontend: {:.2} CPU s", r.frontend_cpu_s);
    Ok(())
}

fn compare_cmd(a: CompareArgs) -> Result<()> {
    let o = CompareOpts {
        out: a.out,
        work: a.work,
        size: a.size,
        runtime: Duration::from_secs_f64(a.runtime),
        repeat: a.repeat.max(1),
        queues: a.queues,
        guest: !a.no_guest,
        guest_runtime: a.guest_runtime,
        only: a.only,
        security: a.security,
    };
    let r = compare::run(&o)?;
    std::fs::create_dir_all(&o.out)?;
    if o.security {
        std::fs::write(
            o.out.join("security.json"),
            serde_json::to_string_pretty(&r)?,
        )?;
        let md = basalt_bench::secreport::markdown(&r);
        std::fs::write(o.out.join("security.md"), &md)?;
        println!("{md}");
        let _ = std::fs::remove_dir_all(&o.work);
        return Ok(());
    }
    std::fs::write(
        o.out.join("results.json"),
        serde_json::to_string_pretty(&r)?,
    )?;
    std::fs::write(o.out.join("README.md"), report::readme(&r))?;
    println!("{}", report::tables(&r));
    let _ = std::fs::remove_dir_all(&o.work);
    Ok(())
}

fn stamp_write(a: StampWriteArgs) -> Result<()> {
    let log = stamp::write(&WriteOpts {
        socket: a.socket,
        span: a.span,
        qd: a.qd,
        seconds: a.seconds,
        at_secs: a.at_secs,
        cmd: a.cmd,
        seed: a.seed,
    })?;
    log.save(&a.log)?;
    let f = &log.figures;
    println!(
        "stamp-write: fill {} writes in {:.2} s; {} writes in {:.2} s ({:.0} IOPS, latency µs p50 {:.1} p99 {:.1} max {:.0})",
        f.fill_writes, f.fill_secs, f.writes, f.secs, f.iops, f.lat_p50_us, f.lat_p99_us, f.lat_max_us
    );
    println!(
        "  command: {:.3} s, exit {:?}; {} writes in flight during it (longest {:.0} µs), {} submitted during it",
        f.cmd_secs, log.cmd_status, f.in_flight_during_cmd, f.max_lat_during_cmd_us, f.submitted_during_cmd
    );
    if log.cmd_end_ns > log.run_end_ns {
        eprintln!("warning: the command ended after the writes stopped; raise --seconds");
    }
    println!("  log: {}", a.log.display());
    if !log.cmd_success {
        bail!(
            "command {:?} failed (exit {:?}): {}",
            log.cmd,
            log.cmd_status,
            log.cmd_stderr.trim()
        );
    }
    Ok(())
}

fn stamp_check(a: StampCheckArgs) -> Result<()> {
    let log = StampLog::load(&a.log)?;
    let span = a.span.unwrap_or(log.span);
    if span > log.span {
        bail!(
            "--span {span} is larger than the span of the log ({})",
            log.span
        );
    }
    if !log.cmd_success {
        eprintln!(
            "warning: the command of the log failed (exit {:?})",
            log.cmd_status
        );
    }
    let image = stamp::read_image(&a.socket, span)?;
    let r = stamp::check(&log, &image, !a.no_causal)?;
    eprintln!(
        "stamp-check: {} blocks, {} ok, {} violations; {} hold the last write acknowledged before the command, {} a write in flight during it ({} blocks had one)",
        r.blocks, r.ok, r.violations, r.latest_acked_before_start, r.in_flight, r.blocks_with_in_flight_writes
    );
    for v in &r.examples {
        eprintln!("  {}: {}", v.rule.name(), v.detail);
    }
    let json = serde_json::to_string_pretty(&r)?;
    println!("{json}");
    if let Some(p) = &a.result {
        std::fs::write(p, format!("{json}\n")).with_context(|| p.display().to_string())?;
    }
    if r.violations > 0 {
        bail!(
            "{} of {} blocks break the point-in-time rules",
            r.violations,
            r.blocks
        );
    }
    Ok(())
}

fn snapshots(a: SnapshotsArgs) -> Result<()> {
    let quick = a.quick;
    let o = SnapOpts {
        out: a.out.unwrap_or_else(|| {
            PathBuf::from(if quick {
                "target/snapbench-quick"
            } else {
                "docs/bench"
            })
        }),
        volume: a.volume.unwrap_or(if quick { 256 << 20 } else { 4 << 30 }),
        data: a.data.unwrap_or(if quick { 64 << 20 } else { 1 << 30 }),
        repeat: a.repeat.unwrap_or(if quick { 1 } else { 3 }).max(1),
        job_secs: a.job_secs.unwrap_or(if quick { 3.0 } else { 10.0 }),
        read_secs: if quick { 2.0 } else { 5.0 },
        point_secs: if quick { 3.0 } else { 6.0 },
        cold_rate_mib: a.cold_rate_mib,
        quick,
        no_s3: a.no_s3,
    };
    if o.data == 0 || o.data % (1 << 20) != 0 || o.data > o.volume || o.volume < (4 << 20) {
        bail!("--data must be a positive multiple of 1 MiB, at most --volume (at least 4 MiB)");
    }
    let r = snapbench::run(&o)?;
    std::fs::create_dir_all(&o.out)?;
    snapshots_write(&o.out, &r, true)
}

/// Writes snapshots.json (when `json`), snapshots.md and the chart.
fn snapshots_write(dir: &std::path::Path, r: &snapbench::SnapResults, json: bool) -> Result<()> {
    let jpath = dir.join("snapshots.json");
    if json {
        std::fs::write(&jpath, serde_json::to_string_pretty(r)? + "\n")?;
    }
    let notes = std::fs::read_to_string(dir.join(snapbench::report::NOTES_FILE)).ok();
    std::fs::write(
        dir.join("snapshots.md"),
        snapbench::report::markdown(r, notes.as_deref()),
    )?;
    println!("{}", snapbench::report::table(r));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots_chart.py");
    match std::process::Command::new("python3")
        .arg(&script)
        .arg(&jpath)
        .arg(dir.join("snapshots.png"))
        .status()
    {
        Ok(s) if s.success() => {}
        other => eprintln!(
            "warning: the chart was not drawn ({other:?}); run python3 {} {} {} (needs matplotlib)",
            script.display(),
            jpath.display(),
            dir.join("snapshots.png").display()
        ),
    }
    eprintln!("wrote {}", dir.join("snapshots.md").display());
    Ok(())
}
