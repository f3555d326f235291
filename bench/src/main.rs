use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use basalt_bench::compare::{self, CompareOpts};
use basalt_bench::job::{self, parse_size, JobSpec, Limit, Rw, Watched};
use basalt_bench::report;
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
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(a) => run(a),
        Cmd::Compare(a) => compare_cmd(a),
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
    };
    let r = compare::run(&o)?;
    std::fs::create_dir_all(&o.out)?;
    std::fs::write(
        o.out.join("results.json"),
        serde_json::to_string_pretty(&r)?,
    )?;
    std::fs::write(o.out.join("README.md"), report::readme(&r))?;
    println!("{}", report::tables(&r));
    let _ = std::fs::remove_dir_all(&o.work);
    Ok(())
}
