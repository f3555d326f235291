//! The comparison's report: tables in Markdown and the targets of the issue.

use std::fmt::Write as _;
use std::process::Command;

use crate::compare::{CompareOpts, JobRuns, Results, Summary};

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

pub fn meta(o: &CompareOpts) -> Vec<(String, String)> {
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
        (
            "qemu-storage-daemon".into(),
            cmd_out("qemu-storage-daemon", &["--version"])
                .lines()
                .next()
                .unwrap_or("?")
                .to_string(),
        ),
        ("volume size".into(), format!("{} MiB", o.size >> 20)),
        (
            "runtime per run".into(),
            format!("{} s", o.runtime.as_secs_f64()),
        ),
        ("rounds (median of)".into(), o.repeat.to_string()),
        ("frontend queues".into(), o.queues.to_string()),
    ]
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 && x.is_finite() {
        format!("{:.0} %", 100.0 * x / base)
    } else {
        "–".into()
    }
}

fn is_bw(j: &JobRuns) -> bool {
    j.spec.bs >= 1 << 20
}

fn main_figure(j: &JobRuns, s: &Summary) -> f64 {
    if is_bw(j) {
        s.mb_s
    } else {
        s.iops
    }
}

fn fmt_fig(j: &JobRuns, v: f64) -> String {
    if is_bw(j) {
        format!("{v:.0} MB/s")
    } else {
        format!("{v:.0} IOPS")
    }
}

/// A target of the issue and whether it is met.
pub struct Check {
    pub what: String,
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
}

pub fn checks(r: &Results) -> Vec<Check> {
    let get = |job: &str, key: &str| -> Option<&Summary> {
        r.jobs
            .iter()
            .find(|j| j.job == job)
            .and_then(|j| j.med(key))
    };
    let mut v = Vec::new();
    let ratio_check = |v: &mut Vec<Check>, job: &str, what: &str, min: f64| {
        let (a, c) = (get(job, "qsd"), get(job, "basalt2"));
        let (measured, met) = match (a, c) {
            (Some(a), Some(c)) => {
                let x = c.iops / a.iops;
                (
                    format!("{:.0} % ({:.0} vs {:.0} IOPS)", 100.0 * x, c.iops, a.iops),
                    Some(x >= min),
                )
            }
            _ => ("not run".into(), None),
        };
        v.push(Check {
            what: what.into(),
            goal: format!("≥ {:.0} % of qsd", 100.0 * min),
            measured,
            met,
        });
    };
    ratio_check(
        &mut v,
        "4k-randread-qd32",
        "4 KiB random read QD32, two copies",
        0.5,
    );
    ratio_check(
        &mut v,
        "4k-randwrite-qd32",
        "4 KiB random write QD32, two copies",
        0.35,
    );
    {
        let (a, c) = (
            get("4k-randwrite-qd1", "qsd"),
            get("4k-randwrite-qd1", "basalt2"),
        );
        let (measured, met) = match (a, c) {
            (Some(a), Some(c)) => (
                format!(
                    "{:.1} µs vs {:.1} µs (+{:.1} µs)",
                    c.lat_p50_us,
                    a.lat_p50_us,
                    c.lat_p50_us - a.lat_p50_us
                ),
                Some(c.lat_p50_us <= a.lat_p50_us + 80.0),
            ),
            _ => ("not run".into(), None),
        };
        v.push(Check {
            what: "4 KiB write QD1 median latency, two copies".into(),
            goal: "≤ qsd + 80 µs".into(),
            measured,
            met,
        });
    }
    for (job, what) in [
        ("1m-seqread-qd8", "1 MiB sequential read QD8, two copies"),
        ("1m-seqwrite-qd8", "1 MiB sequential write QD8, two copies"),
    ] {
        let (measured, met) = match get(job, "basalt2") {
            Some(c) => (
                format!("{:.2} GB/s", c.mb_s / 1000.0),
                Some(c.mb_s >= 1000.0),
            ),
            None => ("not run".into(), None),
        };
        v.push(Check {
            what: what.into(),
            goal: "≥ 1 GB/s".into(),
            measured,
            met,
        });
    }
    for job in ["4k-randread-qd32", "4k-randwrite-qd32"] {
        let (a, c) = (get(job, "qsd"), get(job, "basalt2"));
        let (measured, met) = match (a, c) {
            (Some(a), Some(c)) => (
                format!(
                    "{:.1} vs {:.1} µs/IO ({:.1}×)",
                    c.frontend_proc_cpu_us,
                    a.frontend_proc_cpu_us,
                    c.frontend_proc_cpu_us / a.frontend_proc_cpu_us
                ),
                Some(c.frontend_proc_cpu_us <= 2.0 * a.frontend_proc_cpu_us),
            ),
            _ => ("not run".into(), None),
        };
        v.push(Check {
            what: format!("backend CPU per 4 KiB I/O ({job}, two copies)"),
            goal: "≤ 2× qsd's".into(),
            measured,
            met,
        });
    }
    {
        let rss = r
            .jobs
            .iter()
            .filter_map(|j| j.med("basalt2").map(|s| (s.rss_kib, s.anon_kib)))
            .chain(
                r.jobs
                    .iter()
                    .filter_map(|j| j.med("basalt1").map(|s| (s.rss_kib, s.anon_kib))),
            )
            .fold((0, 0), |(a, b), (x, y)| (a.max(x), b.max(y)));
        v.push(Check {
            what: "backend RSS (peak VmHWM over all jobs)".into(),
            goal: "≤ 32 MiB".into(),
            measured: format!(
                "{:.1} MiB (anonymous {:.1} MiB; the rest is the frontend's shared buffers it maps)",
                rss.0 as f64 / 1024.0,
                rss.1 as f64 / 1024.0
            ),
            met: Some(rss.0 <= 32 * 1024),
        });
    }
    v
}

/// The Markdown tables (printed and embedded in docs/bench/README.md).
pub fn tables(r: &Results) -> String {
    let mut s = String::new();
    let keys: Vec<&str> = r.targets.iter().map(|(k, _)| k.as_str()).collect();
    let _ = writeln!(
        s,
        "| job | (a) qsd | (b) Basalt 1 copy | (b)/(a) | (c) Basalt 2 copies | (c)/(a) |"
    );
    let _ = writeln!(
        s,
        "|-----|--------:|------------------:|--------:|--------------------:|--------:|"
    );
    for j in &r.jobs {
        let fig = |k: &str| j.med(k).map(|m| main_figure(j, m)).unwrap_or(f64::NAN);
        let a = fig("qsd");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            j.job,
            fmt_fig(j, a),
            fmt_fig(j, fig("basalt1")),
            ratio(fig("basalt1"), a),
            fmt_fig(j, fig("basalt2")),
            ratio(fig("basalt2"), a),
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Latency, µs (p50 / p99 / p99.9):");
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| job | (a) qsd | (b) Basalt 1 copy | (c) Basalt 2 copies |"
    );
    let _ = writeln!(
        s,
        "|-----|--------:|------------------:|--------------------:|"
    );
    for j in &r.jobs {
        let l = |k: &str| {
            j.med(k)
                .map(|m| {
                    format!(
                        "{:.0} / {:.0} / {:.0}",
                        m.lat_p50_us, m.lat_p99_us, m.lat_p999_us
                    )
                })
                .unwrap_or_default()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            j.job,
            l("qsd"),
            l("basalt1"),
            l("basalt2")
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "CPU µs per I/O of the process serving the socket (qsd / Basalt backend), and of the storage servers (sum over copies):"
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "| job | (a) qsd | (b) backend | (b) storage | (c) backend | (c)/(a) backend | (c) storage |");
    let _ = writeln!(s, "|-----|--------:|------------:|------------:|------------:|----------------:|------------:|");
    for j in &r.jobs {
        let c = |k: &str| j.med(k).map(|m| m.frontend_proc_cpu_us).unwrap_or(f64::NAN);
        let st = |k: &str| j.med(k).map(|m| m.storage_cpu_us).unwrap_or(f64::NAN);
        let x = c("basalt2") / c("qsd");
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}× | {:.1} |",
            j.job,
            c("qsd"),
            c("basalt1"),
            st("basalt1"),
            c("basalt2"),
            x,
            st("basalt2")
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Peak RSS of the process serving the socket (MiB, VmHWM; anonymous part in brackets):"
    );
    let _ = writeln!(s);
    let _ = write!(s, "|");
    for k in &keys {
        let _ = write!(s, " {k} |");
    }
    let _ = writeln!(s);
    let _ = write!(s, "|");
    for _ in &keys {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s);
    let _ = write!(s, "|");
    for k in &keys {
        let (rss, anon) = r
            .jobs
            .iter()
            .filter_map(|j| j.med(k))
            .fold((0, 0), |(a, b), m| (a.max(m.rss_kib), b.max(m.anon_kib)));
        let _ = write!(
            s,
            " {:.1} ({:.1}) |",
            rss as f64 / 1024.0,
            anon as f64 / 1024.0
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s);
    let _ = writeln!(s, "Targets (two copies, ratios from this run):");
    let _ = writeln!(s);
    let _ = writeln!(s, "| target | goal | measured | met |");
    let _ = writeln!(s, "|--------|------|----------|-----|");
    for c in checks(r) {
        let met = match c.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(s, "| {} | {} | {} | {} |", c.what, c.goal, c.measured, met);
    }
    if !r.guest.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "fio inside the TCG guest (2 vCPUs, 2 queues, libaio, direct):"
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| job | (a) qsd IOPS | (a) p50 µs | (c) Basalt 2 copies IOPS | (c) p50 µs | (c)/(a) |"
        );
        let _ = writeln!(
            s,
            "|-----|-------------:|-----------:|-------------------------:|-----------:|--------:|"
        );
        let mut names: Vec<&str> = Vec::new();
        for g in &r.guest {
            if !names.contains(&g.job.as_str()) {
                names.push(&g.job);
            }
        }
        for n in names {
            let g = |k: &str| r.guest.iter().find(|g| g.job == n && g.target == k);
            let (a, c) = (g("qsd"), g("basalt2"));
            let f = |x: Option<&crate::compare::GuestFio>| {
                x.map(|x| (format!("{:.0}", x.iops), format!("{:.0}", x.p50_us)))
                    .unwrap_or_default()
            };
            let (ai, al) = f(a);
            let (ci, cl) = f(c);
            let rr = match (a, c) {
                (Some(a), Some(c)) => ratio(c.iops, a.iops),
                _ => "–".into(),
            };
            let _ = writeln!(s, "| {n} | {ai} | {al} | {ci} | {cl} | {rr} |");
        }
    }
    s
}

/// docs/bench/README.md
pub fn readme(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `bench/compare` (do not edit by hand; rerun it). The host drives each \
vhost-user-blk socket directly with `basalt-bench` (libblkio, real virtqueues in shared memory), \
so no guest is in the way. All three systems run at once on loopback, with their data on tmpfs \
(`/dev/shm`); every job runs against each of them in turn, round after round, and the figures are \
medians over the rounds. CPU is read from `/proc/<pid>/stat` (user + system of all threads) over \
each run and divided by the requests completed.\n"
    );
    let _ = writeln!(
        s,
        "- (a) qemu-storage-daemon exporting a tmpfs file over vhost-user-blk: the local ceiling;"
    );
    let _ = writeln!(
        s,
        "- (b) Basalt with one copy: `basalt-vhost-blk` → TCP → `basalt-storage`;"
    );
    let _ = writeln!(s, "- (c) Basalt with a primary and a mirror: … → primary `basalt-storage` → mirror `basalt-storage`.\n");
    let _ = writeln!(s, "![throughput of each job](chart.png)\n");
    s.push_str(&tables(r));
    let _ = writeln!(s, "\nRun:\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    for (k, v) in &r.meta {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(
        s,
        "\nRaw per-round results: [`results.json`](results.json)."
    );
    s
}
