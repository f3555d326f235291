//! The report of `basalt-bench snapshots`: medians, the figures table and
//! `snapshots.md`.

use std::fmt::Write as _;
use std::process::Command;

use super::{DestResult, IopsRound, SnapResults, SnapRun};

const MB: f64 = 1e6;
/// Hand-written discussion of a run, kept next to the results and included
/// in `snapshots.md` when present.
pub const NOTES_FILE: &str = "snapshots-notes.md";

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

pub fn meta() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "?".into());
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / (1 << 20) as f64))
        .unwrap_or_else(|| "?".into());
    let tmp_fs = cmd_out("df", &["--output=fstype", "/tmp"])
        .lines()
        .last()
        .unwrap_or("?")
        .to_string();
    vec![
        (
            "date".into(),
            cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        ),
        (
            "commit".into(),
            cmd_out("git", &["rev-parse", "--short", "HEAD"]),
        ),
        ("kernel".into(), cmd_out("uname", &["-r"])),
        ("cpu".into(), format!("{ncpu} × {cpu}")),
        ("memory".into(), mem),
        ("/tmp (s3s-fs data)".into(), tmp_fs),
    ]
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn med<T>(xs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(xs.iter().map(f).collect())
}

fn maxf<T>(xs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    xs.iter().map(f).fold(f64::NAN, f64::max)
}

/// Per-MB CPU (ms of CPU per MB read).
fn cpu_ms_per_mb(s: &SnapRun, cpu: f64) -> f64 {
    if s.bytes_read == 0 {
        return f64::NAN;
    }
    cpu * 1e3 / (s.bytes_read as f64 / MB)
}

/// The rounds of item 4 that count: those at the last rate used.
pub fn iops_rounds(d: &DestResult) -> Vec<&IopsRound> {
    let Some(last) = d.iops.last() else {
        return Vec::new();
    };
    d.iops
        .iter()
        .filter(|r| r.snapshot_rate_mib == last.snapshot_rate_mib)
        .collect()
}

/// The figures of one destination, as reported.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Figures {
    pub fill_mb_s: f64,
    pub full_secs: f64,
    pub full_server_secs: f64,
    pub full_mb_s: f64,
    pub full_bytes_read: f64,
    pub full_bytes_uploaded: f64,
    pub full_primary_cpu_ms_per_mb: f64,
    pub full_control_cpu_ms_per_mb: f64,
    pub full_dest_cpu_ms_per_mb: f64,
    pub inc_secs: f64,
    pub inc_bytes_read: f64,
    pub inc_bytes_uploaded: f64,
    pub inc_time_ratio: f64,
    pub inc_read_ratio: f64,
    pub inc_upload_ratio: f64,
    pub iops_a: f64,
    pub iops_b: f64,
    pub iops_ratio: f64,
    pub iops_overlap: f64,
    pub iops_rate_mib: u64,
    pub probe_ratio: f64,
    pub probe_overlap: f64,
    pub point_call_ms: f64,
    pub point_micros: f64,
    pub point_max_during_us: f64,
    pub point_max_during_us_median: f64,
    pub point_outside_p50_us: f64,
    pub point_outside_p99_us: f64,
    pub point_outside_max_us: f64,
    pub point_before_max_us: f64,
    pub ttfr_ms: f64,
    pub ttfr_create_ms: f64,
    pub ttfr_attach_ms: f64,
    pub ttfr_connect_ms: f64,
    pub first_read_ms: f64,
    pub cold_iops: f64,
    pub warm_iops: f64,
    pub cold_p50_us: f64,
    pub warm_p50_us: f64,
    pub hydration_mb_s: f64,
    pub hydration_secs: f64,
    pub hydration_server_secs: f64,
    pub data_bytes: f64,
    pub longhorn_restore_secs: f64,
}

pub fn figures(d: &DestResult) -> Figures {
    let rounds = iops_rounds(d);
    let probe = d.iops.first();
    let hyd_mb_s = med(&d.hydration, |h| h.mb_s);
    let data_bytes = med(&d.hydration, |h| h.data_bytes as f64);
    let full_read = med(&d.full, |s| s.bytes_read as f64);
    let full_up = med(&d.full, |s| s.bytes_uploaded as f64);
    let full_secs = med(&d.full, |s| s.secs);
    let inc_secs = med(&d.incremental, |s| s.secs);
    let inc_read = med(&d.incremental, |s| s.bytes_read as f64);
    let inc_up = med(&d.incremental, |s| s.bytes_uploaded as f64);
    Figures {
        fill_mb_s: d.fill.mb_s,
        full_secs,
        full_server_secs: med(&d.full, |s| s.server_secs.unwrap_or(f64::NAN)),
        full_mb_s: med(&d.full, |s| s.mb_s),
        full_bytes_read: full_read,
        full_bytes_uploaded: full_up,
        full_primary_cpu_ms_per_mb: med(&d.full, |s| cpu_ms_per_mb(s, s.primary_cpu_s)),
        full_control_cpu_ms_per_mb: med(&d.full, |s| cpu_ms_per_mb(s, s.control_cpu_s)),
        full_dest_cpu_ms_per_mb: med(&d.full, |s| {
            s.dest_server_cpu_s
                .map(|c| cpu_ms_per_mb(s, c))
                .unwrap_or(f64::NAN)
        }),
        inc_secs,
        inc_bytes_read: inc_read,
        inc_bytes_uploaded: inc_up,
        inc_time_ratio: inc_secs / full_secs,
        inc_read_ratio: inc_read / full_read,
        inc_upload_ratio: inc_up / full_up,
        iops_a: med(&rounds, |r| r.a.iops),
        iops_b: med(&rounds, |r| r.b.iops),
        iops_ratio: med(&rounds, |r| r.ratio),
        iops_overlap: med(&rounds, |r| r.overlap),
        iops_rate_mib: rounds.first().map(|r| r.snapshot_rate_mib).unwrap_or(0),
        probe_ratio: probe.map(|r| r.ratio).unwrap_or(f64::NAN),
        probe_overlap: probe.map(|r| r.overlap).unwrap_or(f64::NAN),
        point_call_ms: med(&d.point, |p| p.cmd_secs * 1e3),
        point_micros: med(&d.point, |p| p.point_micros as f64),
        point_max_during_us: maxf(&d.point, |p| p.max_lat_during_us),
        point_max_during_us_median: med(&d.point, |p| p.max_lat_during_us),
        point_outside_p50_us: med(&d.point, |p| p.outside_p50_us),
        point_outside_p99_us: med(&d.point, |p| p.outside_p99_us),
        point_outside_max_us: maxf(&d.point, |p| p.outside_max_us),
        point_before_max_us: maxf(&d.point, |p| p.before_max_us),
        ttfr_ms: med(&d.first_read, |f| f.total_ms),
        ttfr_create_ms: med(&d.first_read, |f| f.create_ms),
        ttfr_attach_ms: med(&d.first_read, |f| f.attach_ms),
        ttfr_connect_ms: med(&d.first_read, |f| f.connect_ms),
        first_read_ms: med(&d.first_read, |f| f.read_ms),
        cold_iops: med(&d.reads, |r| r.cold.iops),
        warm_iops: med(&d.reads, |r| r.warm.iops),
        cold_p50_us: med(&d.reads, |r| r.cold.lat_p50_us),
        warm_p50_us: med(&d.reads, |r| r.warm.lat_p50_us),
        hydration_mb_s: hyd_mb_s,
        hydration_secs: med(&d.hydration, |h| h.secs),
        hydration_server_secs: med(&d.hydration, |h| h.server_secs.unwrap_or(f64::NAN)),
        data_bytes,
        longhorn_restore_secs: data_bytes / MB / hyd_mb_s,
    }
}

fn f0(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.0}")
    } else {
        "–".into()
    }
}

fn f1(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "–".into()
    }
}

fn f2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "–".into()
    }
}

fn pc(x: f64) -> String {
    if x.is_finite() {
        format!("{:.0} %", 100.0 * x)
    } else {
        "–".into()
    }
}

fn pc1(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1} %", 100.0 * x)
    } else {
        "–".into()
    }
}

fn mib(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1} MiB", x / (1 << 20) as f64)
    } else {
        "–".into()
    }
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

/// The figures table (Markdown), one column per destination.
pub fn table(r: &SnapResults) -> String {
    let figs: Vec<Figures> = r.dests.iter().map(figures).collect();
    let n = r.repeat;
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: String, f: &dyn Fn(&Figures) -> String| {
        rows.push((name, figs.iter().map(f).collect()));
    };
    row(
        format!(
            "1. fill {} MiB, 1 MiB sequential writes QD8 (MB/s)",
            r.data >> 20
        ),
        &|f| f0(f.fill_mb_s),
    );
    row(format!("2. full snapshot: time, s (median of {n})"), &|f| {
        format!("{} (server {})", f2(f.full_secs), f2(f.full_server_secs))
    });
    row(
        "2. full snapshot: throughput, MB/s (bytes_read / time)".into(),
        &|f| f0(f.full_mb_s),
    );
    row("2. full snapshot: read / uploaded".into(), &|f| {
        format!(
            "{} / {}",
            mib(f.full_bytes_read),
            mib(f.full_bytes_uploaded)
        )
    });
    row(
        "2. full: CPU ms per MB read — primary storage server".into(),
        &|f| f2(f.full_primary_cpu_ms_per_mb),
    );
    row(
        "2. full: CPU ms per MB read — control service".into(),
        &|f| f2(f.full_control_cpu_ms_per_mb),
    );
    row("2. full: CPU ms per MB read — s3s-fs".into(), &|f| {
        f2(f.full_dest_cpu_ms_per_mb)
    });
    row(
        format!("3. incremental after 1 % changed: time, s (median of {n})"),
        &|f| f2(f.inc_secs),
    );
    row("3. incremental: read / uploaded".into(), &|f| {
        format!("{} / {}", mib(f.inc_bytes_read), mib(f.inc_bytes_uploaded))
    });
    row(
        "3. incremental ÷ full: time / read / uploaded".into(),
        &|f| {
            format!(
                "{} / {} / {}",
                pc1(f.inc_time_ratio),
                pc1(f.inc_read_ratio),
                pc1(f.inc_upload_ratio)
            )
        },
    );
    row(
        "4. 4k randwrite QD32: IOPS without (A) / during an upload (B)".into(),
        &|f| format!("{} / {}", f0(f.iops_a), f0(f.iops_b)),
    );
    row(
        "4. B ÷ A (target ≥ 80 %); overlap; upload rate limit".into(),
        &|f| {
            format!(
                "{} ({}); {}; {}",
                pc(f.iops_ratio),
                if f.iops_ratio >= 0.8 {
                    "met"
                } else {
                    "**missed**"
                },
                pc(f.iops_overlap),
                if f.iops_rate_mib == 0 {
                    "none".to_string()
                } else {
                    format!("{} MiB/s", f.iops_rate_mib)
                }
            )
        },
    );
    row(
        "4. unlimited upload (first round): B ÷ A; overlap".into(),
        &|f| format!("{}; {}", pc(f.probe_ratio), pc(f.probe_overlap)),
    );
    row(
        "5. snapshot create call, ms; point on the primary, µs".into(),
        &|f| format!("{}; {}", f0(f.point_call_ms), f0(f.point_micros)),
    );
    row(
        "5. longest write in flight during the call, µs (max; median of runs)".into(),
        &|f| {
            format!(
                "{}; {}",
                f0(f.point_max_during_us),
                f0(f.point_max_during_us_median)
            )
        },
    );
    row(
        "5. other writes of the job: p50 / p99 / max, µs".into(),
        &|f| {
            format!(
                "{} / {} / {}",
                f0(f.point_outside_p50_us),
                f0(f.point_outside_p99_us),
                f0(f.point_outside_max_us)
            )
        },
    );
    row(
        "6. time to first read (create + attach + connect + read), ms; target < 200".into(),
        &|f| {
            format!(
                "{} ({}) = {} + {} + {} + {}",
                f0(f.ttfr_ms),
                if f.ttfr_ms < 200.0 {
                    "met"
                } else {
                    "**missed**"
                },
                f0(f.ttfr_create_ms),
                f0(f.ttfr_attach_ms),
                f1(f.ttfr_connect_ms),
                f1(f.first_read_ms)
            )
        },
    );
    row("6. first 4 KiB read alone, ms".into(), &|f| {
        f1(f.first_read_ms)
    });
    row(
        format!(
            "7. 4k randread QD32 {} s: IOPS cold / warm source (cold ÷ warm)",
            r.read_secs
        ),
        &|f| {
            format!(
                "{} / {} ({})",
                f0(f.cold_iops),
                f0(f.warm_iops),
                pc(f.cold_iops / f.warm_iops)
            )
        },
    );
    row("7. p50 latency cold / warm, µs".into(), &|f| {
        format!("{} / {}", f0(f.cold_p50_us), f0(f.warm_p50_us))
    });
    row("8. hydration, unlimited: MB/s (time, s)".into(), &|f| {
        format!(
            "{} ({}; server {})",
            f0(f.hydration_mb_s),
            f2(f.hydration_secs),
            f2(f.hydration_server_secs)
        )
    });
    row(
        "9. Longhorn-style full restore before first use: est. s (data ÷ hydration MB/s) vs time to first read".into(),
        &|f| {
            format!(
                "{} s vs {} s ({}×)",
                f1(f.longhorn_restore_secs),
                f2(f.ttfr_ms / 1e3),
                f0(f.longhorn_restore_secs / (f.ttfr_ms / 1e3))
            )
        },
    );
    let mut s = String::from("| figure |");
    for d in &r.dests {
        let _ = write!(s, " {} |", d.key);
    }
    s.push_str("\n|---|");
    for _ in &r.dests {
        s.push_str("---:|");
    }
    s.push('\n');
    for (name, cells) in rows {
        let _ = write!(s, "| {name} |");
        for c in cells {
            let _ = write!(s, " {c} |");
        }
        s.push('\n');
    }
    s
}

/// `snapshots.md`.
pub fn markdown(r: &SnapResults, notes: Option<&str>) -> String {
    let mut s = String::new();
    let vol = r.volume >> 20;
    let data = r.data >> 20;
    let n = r.repeat;
    let _ = writeln!(s, "# Snapshot benchmark\n");
    let _ = writeln!(
        s,
        "Generated by `basalt-bench snapshots` (`cargo build --release --bins && target/release/basalt-bench snapshots{}`); \
         the tables are rewritten on every run, the discussion at the end is kept in [`{NOTES_FILE}`]({NOTES_FILE}). \
         Raw per-round results: [`snapshots.json`](snapshots.json).{}\n",
        if r.quick { " --quick" } else { "" },
        if r.quick {
            " **This is a `--quick` smoke run with a small volume: its figures are not the benchmark's.**"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "![snapshot figures](snapshots.png)\n");
    let _ = writeln!(s, "## Method\n");
    let _ = writeln!(
        s,
        "One cluster of real processes on loopback, started from the release binaries: `basalt-control`, two \
         `basalt-storage` servers and one `basalt-node`; every volume has two copies (primary + mirror). Storage \
         servers keep their data on tmpfs (`/dev/shm`). Two snapshot destinations are configured on the control \
         service and measured in turn: `shm`, a `file://` directory on tmpfs, and `s3`, a real S3 server \
         (`s3s-fs`, started by `basalt_snapshot::testing::S3Server`, on loopback with `allow-http` and a \
         credentials file; it stores objects under `/tmp`). I/O goes through the attached volume's vhost-user-blk \
         socket, driven from the host by libblkio (no VM). The control service polls uploads and hydrations every \
         {} ms (`--snapshot-poll-ms`); the benchmark polls the CLI every {} ms. Timed figures are medians of {n} rounds.\n",
        r.poll_ms, r.poll_ms
    );
    let _ = writeln!(
        s,
        "1. **Data.** A {vol} MiB volume is created and attached; its first {data} MiB (from offset 0, not spread) \
           are written with 1 MiB sequential writes, 8 in flight, each buffer filled with fresh pseudo-random bytes \
           (incompressible, no two 512 KiB blocks alike, so nothing deduplicates), then flushed. The rest of the \
           volume is never written (holes: a snapshot skips them).\n\
         2. **Full snapshot.** `basalt snapshot create` (returns once the point is taken), then `snapshot show` until \
           COMPLETE. Time = the create call's start → COMPLETE seen (so it includes the control service's poll \
           interval, ≤ {} ms; the primary's own log gives the upload alone, shown as \"server\"). Throughput = \
           `progress.bytes_read` ÷ that time. CPU = user + system time (`/proc/<pid>/stat`) of the primary storage \
           server, the control service and s3s-fs over the same interval, per MB read. Each round deletes the \
           previous snapshot (its chunks are swept), so every round is a full upload with no chunk reused.\n\
         3. **Incremental.** Before each of {n} incremental snapshots, 1 % of the volume is changed: \
           ⌈{vol} MiB / 100⌉ contiguous 1 MiB writes of fresh random data at distinct random 512 KiB-aligned \
           offsets anywhere in the volume (so 2 blocks of 512 KiB each, ≈ 1 % of the blocks). Timed as the full one; \
           the ratio is to the full snapshot's median.\n\
         4. **4 KiB random write IOPS during an upload** (QD32, one queue, over the first {data} MiB, {} s). \
           Job A runs without a snapshot; then a full snapshot is created (after deleting all earlier snapshots of the \
           volume) and job B, the same job, starts as soon as `snapshot create` returns. Every write carries its own \
           pattern (`run --verify`'s per-block, per-generation fill), so the volume stays incompressible. Overlap = \
           the part of job B before the upload ended, from the primary's \"snapshot uploaded\" log line (same wall \
           clock). Both jobs run with the same CLI poll (every 200 ms) beside them. If the unlimited upload ends before job B does (overlap < 95 %), the control service is \
           restarted with `--snapshot-rate-mib` set so that the upload lasts 1.5 × the job, and the rounds are \
           repeated at that rate; the first (unlimited) round is reported on its own.\n\
         5. **Write latency at the snapshot point.** `stamp-write`'s writer (every write timed on \
           CLOCK_MONOTONIC) fills {} MiB with 4 KiB writes, then writes 4 KiB blocks at random offsets, QD32, for \
           {} s, and runs `basalt snapshot create` {} s in. The longest latency of the writes in flight during \
           the call (submitted before it returned, completed after it started) is compared with the p50 / p99 / max \
           of the job's other writes (before the call, and after it while the upload runs).\n\
         6. **Time to first read.** `volume create --from-snapshot` (the last incremental snapshot, a full \
           {vol} MiB image), `volume attach`, connect to the socket, one 4 KiB read at a random 4 KiB-aligned \
           offset inside the data; total = create's start → the read's completion. The control service runs with \
           `--hydration-rate-mib {}` here, so the volume is cold: the read fetches its 512 KiB chunk on demand.\n\
         7. **Cold reads.** On that same restored volume, 4 KiB random reads QD32 for {} s over the data; then the \
           same job on the source volume (warm).\n\
         8. **Hydration.** The control service is restarted with `--hydration-rate-mib 0` (unlimited); a new volume \
           from the same snapshot is timed from `volume create` to `hydration.complete` (or the hydration gone) in \
           `volume show`; MB/s = the snapshot's `data_bytes` ÷ that time (the primary's log gives its own duration, \
           \"server\").\n\
         9. **Against a restore-first model.** Longhorn restores a backup into a new volume before it can be used; its \
           time is estimated here as data bytes ÷ our hydration throughput (the same transfer, done up front), \
           against our time to first read.\n",
        r.poll_ms,
        r.job_secs,
        (r.data.min(256 << 20)) >> 20,
        r.point_secs,
        r.point_secs / 2.0,
        r.cold_rate_mib,
        r.read_secs
    );
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(
        s,
        "A small shared VM: the whole cluster, the S3 server, the CLI and the load generator share its 2 vCPUs, so \
         every figure here includes CPU contention between them, and runs are noisy (±10-20 % between runs is \
         normal). Absolute throughputs are far below what dedicated servers would give; the ratios are the \
         more meaningful figures.\n"
    );
    s.push_str("| | |\n|---|---|\n");
    for (k, v) in &r.meta {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(
        s,
        "| volume / data | {vol} MiB / {data} MiB |\n| rounds (median of) | {n} |\n"
    );
    let _ = writeln!(s, "## Figures\n");
    for d in &r.dests {
        let _ = writeln!(s, "- `{}`: {}", d.key, d.label);
    }
    s.push('\n');
    s.push_str(&table(r));
    s.push('\n');
    let _ = writeln!(s, "## Targets\n");
    s.push_str("| target | destination | measured | met |\n|---|---|---|---|\n");
    for d in &r.dests {
        let f = figures(d);
        let _ = writeln!(
            s,
            "| 4 KiB random write QD32 during an upload ≥ 80 % of without | {} | {} ({} vs {} IOPS; overlap {}{}) | {} |",
            d.key,
            pc(f.iops_ratio),
            f0(f.iops_b),
            f0(f.iops_a),
            pc(f.iops_overlap),
            if f.iops_rate_mib > 0 {
                format!(", upload limited to {} MiB/s", f.iops_rate_mib)
            } else {
                String::new()
            },
            yes(f.iops_ratio >= 0.8)
        );
        let _ = writeln!(
            s,
            "| time to first read of a volume from a {vol} MiB snapshot < 200 ms | {} | {} ms | {} |",
            d.key,
            f0(f.ttfr_ms),
            yes(f.ttfr_ms < 200.0)
        );
    }
    s.push('\n');
    let auto: Vec<String> = r
        .notes
        .iter()
        .cloned()
        .chain(
            r.dests
                .iter()
                .flat_map(|d| d.notes.iter().map(move |n| format!("`{}`: {n}", d.key))),
        )
        .collect();
    if !auto.is_empty() {
        let _ = writeln!(s, "## Notes from the run\n");
        for n in auto {
            let _ = writeln!(s, "- {n}");
        }
        s.push('\n');
    }
    let _ = writeln!(s, "## Per round\n");
    for d in &r.dests {
        let _ = writeln!(s, "`{}`:\n", d.key);
        s.push_str("| snapshot | source | time s | server s | read | uploaded | new / reused chunks | MB/s (read ÷ time, or ÷ server s in item 4) | primary CPU s | control CPU s | CoW blocks |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (x, during_job) in d
            .full
            .iter()
            .chain(&d.incremental)
            .map(|x| (x, false))
            .chain(d.iops.iter().map(|r| (&r.snap, true)))
        {
            // Item 4's uploads run beside job B: their CPU is shared with
            // it, and their time is the primary's (the poll may have seen
            // COMPLETE only after the job).
            let (secs, mb_s) = if during_job {
                let t = x.server_secs.unwrap_or(f64::NAN);
                (f64::NAN, x.bytes_read as f64 / t / MB)
            } else {
                (x.secs, x.mb_s)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
                if during_job {
                    format!("{} (item 4, beside job B)", x.name)
                } else {
                    x.name.clone()
                },
                x.change_source,
                f2(secs),
                f2(x.server_secs.unwrap_or(f64::NAN)),
                mib(x.bytes_read as f64),
                mib(x.bytes_uploaded as f64),
                x.chunks_new,
                x.chunks_reused,
                f0(mb_s),
                f2(x.primary_cpu_s),
                f2(x.control_cpu_s),
                x.cow_blocks
            );
        }
        s.push('\n');
        s.push_str("| item 4 round | rate limit | A IOPS | B IOPS | B ÷ A | overlap | upload s | A p99 µs | B p99 µs | CPU s in A: primary / mirror / control / s3s-fs | in B |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
        let cpus = |j: &super::JobBrief| {
            ["primary", "mirror", "control", "dest"]
                .iter()
                .map(|n| {
                    j.cpu_s
                        .iter()
                        .find(|(k, _)| k == n)
                        .map(|(_, c)| f2(*c))
                        .unwrap_or_else(|| "–".into())
                })
                .collect::<Vec<_>>()
                .join(" / ")
        };
        for (i, x) in d.iops.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                if x.snapshot_rate_mib == 0 {
                    "none".to_string()
                } else {
                    format!("{} MiB/s", x.snapshot_rate_mib)
                },
                f0(x.a.iops),
                f0(x.b.iops),
                pc(x.ratio),
                pc(x.overlap),
                f2(x.snap.server_secs.unwrap_or(f64::NAN)),
                f0(x.a.lat_p99_us),
                f0(x.b.lat_p99_us),
                cpus(&x.a),
                cpus(&x.b)
            );
        }
        s.push('\n');
        s.push_str("| item 5 run | call ms | point µs | writes in flight during | longest during µs | outside p50 / p99 / max µs | before the call p99 / max µs | after the call p99 / max µs | CoW blocks |\n|---|---:|---:|---:|---:|---|---|---|---:|\n");
        for x in &d.point {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} / {} / {} | {} / {} | {} / {} | {} |",
                x.snapshot,
                f0(x.cmd_secs * 1e3),
                x.point_micros,
                x.in_flight_during,
                f0(x.max_lat_during_us),
                f0(x.outside_p50_us),
                f0(x.outside_p99_us),
                f0(x.outside_max_us),
                f0(x.before_p99_us),
                f0(x.before_max_us),
                f0(x.after_p99_us),
                f0(x.after_max_us),
                x.cow_blocks
            );
        }
        s.push('\n');
        s.push_str("| items 6-7 volume | create ms | attach ms | connect ms | read ms | total ms | cold IOPS | warm IOPS | blocks present before → after / total |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for (f, x) in d.first_read.iter().zip(&d.reads) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} → {} / {} |",
                f.volume,
                f1(f.create_ms),
                f1(f.attach_ms),
                f1(f.connect_ms),
                f1(f.read_ms),
                f1(f.total_ms),
                f0(x.cold.iops),
                f0(x.warm.iops),
                x.cold_blocks_present_before,
                x.cold_blocks_present_after,
                x.blocks_total
            );
        }
        s.push('\n');
        s.push_str("| item 8 volume | time s | server s | data | fetched | MB/s |\n|---|---:|---:|---:|---:|---:|\n");
        for h in &d.hydration {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                h.volume,
                f2(h.secs),
                f2(h.server_secs.unwrap_or(f64::NAN)),
                mib(h.data_bytes as f64),
                mib(h.bytes_fetched as f64),
                f0(h.mb_s)
            );
        }
        s.push('\n');
    }
    if let Some(n) = notes {
        let _ = writeln!(s, "## Discussion\n");
        s.push_str(n.trim());
        s.push('\n');
    }
    s
}
