//! `basalt-bench compare`: the same jobs, in one run, against
//! (a) qemu-storage-daemon exporting a tmpfs file (the local ceiling),
//! (b) Basalt with one copy and (c) Basalt with a primary and a mirror,
//! everything on loopback with its data on tmpfs. Runs are interleaved
//! (every target once per round) and the median of the rounds is reported.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use basalt_tests::cluster::{create_volume, BackendOpts, BackendProc, StorageProc};
use basalt_tests::procs::{wait_for, Proc};
use serde::{Deserialize, Serialize};

use crate::job::{self, JobResult, JobSpec, Limit, Rw, Watched};
use crate::report;

pub struct CompareOpts {
    /// Where README.md and results.json are written.
    pub out: PathBuf,
    /// Scratch directory (tmpfs).
    pub work: PathBuf,
    pub size: u64,
    pub runtime: Duration,
    pub repeat: usize,
    pub queues: usize,
    pub guest: bool,
    pub guest_runtime: u32,
    /// Only these jobs (by name), for quick runs.
    pub only: Vec<String>,
    /// The security comparison instead: two copies with the data plane
    /// encrypted (the default) against `--data-encryption off`.
    pub security: bool,
}

/// One system under test.
pub struct Target {
    pub key: String,
    pub label: String,
    pub socket: PathBuf,
    pub watch: Vec<Watched>,
    _procs: Vec<Proc>,
    _storage: Vec<StorageProc>,
    _backend: Option<BackendProc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub iops: f64,
    pub mb_s: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub lat_p999_us: f64,
    /// CPU µs per I/O of the process serving the socket (qsd or backend).
    pub frontend_proc_cpu_us: f64,
    /// CPU µs per I/O of all storage servers (Basalt only; 0 for qsd).
    pub storage_cpu_us: f64,
    /// Peak RSS (KiB) of the process serving the socket.
    pub rss_kib: u64,
    pub anon_kib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRuns {
    pub job: String,
    pub spec: JobSpec,
    /// Per target key: every round's result.
    pub runs: Vec<(String, Vec<JobResult>)>,
    /// Per target key: medians.
    pub median: Vec<(String, Summary)>,
}

impl JobRuns {
    pub fn med(&self, key: &str) -> Option<&Summary> {
        self.median.iter().find(|(k, _)| k == key).map(|(_, s)| s)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestFio {
    pub job: String,
    pub target: String,
    pub iops: f64,
    pub p50_us: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub meta: Vec<(String, String)>,
    pub targets: Vec<(String, String)>,
    pub jobs: Vec<JobRuns>,
    pub guest: Vec<GuestFio>,
}

/// The jobs of the comparison.
pub fn jobs(runtime: Duration, queues: usize) -> Vec<JobSpec> {
    let k4 = 4096;
    let m1 = 1 << 20;
    let mut v = vec![
        JobSpec::new(k4, Rw::Read, true, 1),
        JobSpec::new(k4, Rw::Read, true, 32),
        JobSpec::new(k4, Rw::Write, true, 1),
        JobSpec::new(k4, Rw::Write, true, 32),
        JobSpec::new(k4, Rw::Mix(70), true, 32),
        JobSpec::new(m1, Rw::Read, false, 8),
        JobSpec::new(m1, Rw::Write, false, 8),
    ];
    for j in &mut v {
        j.limit = Limit::Time(runtime);
        j.queues = queues;
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summarize(rs: &[JobResult], server: &str) -> Summary {
    let m = |f: &dyn Fn(&JobResult) -> f64| median(rs.iter().map(f).collect());
    let cpu = |r: &JobResult| r.proc(server).map(|p| p.cpu_us_per_io).unwrap_or(0.0);
    let storage = |r: &JobResult| {
        let v: Vec<f64> = r
            .procs
            .iter()
            .filter(|p| p.name.starts_with("storage"))
            .map(|p| p.cpu_us_per_io)
            .collect();
        v.iter().sum()
    };
    Summary {
        iops: m(&|r| r.iops),
        mb_s: m(&|r| r.mb_s),
        lat_p50_us: m(&|r| r.lat_p50_us),
        lat_p99_us: m(&|r| r.lat_p99_us),
        lat_p999_us: m(&|r| r.lat_p999_us),
        frontend_proc_cpu_us: m(&cpu),
        storage_cpu_us: m(&storage),
        rss_kib: rs
            .iter()
            .filter_map(|r| r.proc(server))
            .map(|p| p.mem.hwm_kib)
            .max()
            .unwrap_or(0),
        anon_kib: rs
            .iter()
            .filter_map(|r| r.proc(server))
            .map(|p| p.mem.anon_kib)
            .max()
            .unwrap_or(0),
    }
}

/// Name of the process that serves the socket in a target's watch list.
pub fn server_name(key: &str) -> &'static str {
    if key == "qsd" {
        "qsd"
    } else {
        "backend"
    }
}

fn start_qsd(work: &Path, size: u64, queues: usize) -> Result<Target> {
    let dir = work.join("qsd");
    std::fs::create_dir_all(&dir)?;
    let img = dir.join("disk.img");
    std::fs::File::create(&img)?.set_len(size)?;
    let socket = dir.join("qsd.sock");
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={},cache.direct=off",
            img.display()
        ))
        .args(["--blockdev", "driver=raw,node-name=disk0,file=file0"])
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on,num-queues={queues}",
            socket.display()
        ));
    let mut p = Proc::spawn("qemu-storage-daemon", &mut cmd, dir.join("qsd.log"))
        .context("qemu-storage-daemon (Debian package qemu-utils) is needed")?;
    wait_for(&mut p, Duration::from_secs(20), || {
        socket.exists().then_some(())
    })?;
    let pid = p.pid().context("qsd has no pid")?;
    Ok(Target {
        key: "qsd".into(),
        label: "(a) qemu-storage-daemon, tmpfs file".into(),
        socket,
        watch: vec![Watched {
            name: "qsd".into(),
            pid,
        }],
        _procs: vec![p],
        _storage: vec![],
        _backend: None,
    })
}

/// Flags of a Basalt target's processes (`--data-encryption off` for the
/// clear target of the security comparison).
fn data_flags(clear: bool) -> &'static [&'static str] {
    if clear {
        &["--data-encryption", "off"]
    } else {
        &[]
    }
}

/// A Basalt target of the comparison.
struct BasaltSpec<'a> {
    key: &'a str,
    label: &'a str,
    volume_id: u64,
    copies: usize,
    /// `--data-encryption off` on every process.
    clear: bool,
}

fn start_basalt(work: &Path, t: &BasaltSpec<'_>, size: u64, queues: usize) -> Result<Target> {
    let BasaltSpec {
        key,
        label,
        volume_id,
        copies,
        clear,
    } = *t;
    let dir = work.join(key);
    std::fs::create_dir_all(&dir)?;
    let mut servers = Vec::new();
    for i in 0..copies {
        servers.push(StorageProc::start_with(
            &dir,
            &format!("{key}-s{i}"),
            data_flags(clear),
        )?);
    }
    let mirrors: Vec<&StorageProc> = servers[1..].iter().collect();
    create_volume(volume_id, size, &servers[0], &mirrors)?;
    let backend = BackendProc::start(
        &dir,
        &BackendOpts {
            volume_id,
            size_bytes: size,
            primary: servers[0].data,
            queues: queues as u16,
            read_only: false,
            extra: data_flags(clear),
        },
    )?;
    let mut watch = vec![Watched {
        name: "backend".into(),
        pid: backend.proc.pid().context("backend has no pid")?,
    }];
    for (i, s) in servers.iter().enumerate() {
        watch.push(Watched {
            name: if i == 0 {
                "storage-primary".into()
            } else {
                format!("storage-mirror{i}")
            },
            pid: s.proc.pid().context("storage server has no pid")?,
        });
    }
    Ok(Target {
        key: key.into(),
        label: label.into(),
        socket: backend.socket.clone(),
        watch,
        _procs: vec![],
        _storage: servers,
        _backend: Some(backend),
    })
}

pub fn run(o: &CompareOpts) -> Result<Results> {
    if o.work.exists() {
        std::fs::remove_dir_all(&o.work)?;
    }
    std::fs::create_dir_all(&o.work)?;
    // Backends and qsd offer two queues (the guest uses two); the host jobs use `o.queues`.
    let offer = o.queues.max(2);
    eprintln!("starting targets under {}", o.work.display());
    // (key, label, volume id, copies, data plane in the clear)
    let basalt: &[(&str, &str, u64, usize, bool)] = if o.security {
        &[
            (
                "basalt2",
                "Basalt, primary + mirror, data plane encrypted (default)",
                2,
                2,
                false,
            ),
            (
                "basalt2-clear",
                "Basalt, primary + mirror, --data-encryption off",
                3,
                2,
                true,
            ),
        ]
    } else {
        &[
            ("basalt1", "(b) Basalt, one copy", 1, 1, false),
            ("basalt2", "(c) Basalt, primary + mirror", 2, 2, false),
        ]
    };
    let mut targets = Vec::new();
    if !o.security {
        targets.push(start_qsd(&o.work, o.size, offer)?);
    }
    for &(key, label, volume_id, copies, clear) in basalt {
        let spec = BasaltSpec {
            key,
            label,
            volume_id,
            copies,
            clear,
        };
        targets.push(start_basalt(&o.work, &spec, o.size, offer)?);
    }

    // Fill every device once (so reads hit real pages), then check data.
    for t in &targets {
        let mut fill = JobSpec::new(1 << 20, Rw::Write, false, 8);
        fill.limit = Limit::Ops(o.size >> 20);
        let r = job::run(&t.socket, &fill, &t.watch)?;
        eprintln!(
            "{:<8} prefill {} MiB: {:.0} MB/s",
            t.key,
            o.size >> 20,
            r.mb_s
        );
        let mut v = JobSpec::new(4096, Rw::Mix(50), true, 16);
        v.verify = true;
        v.queues = o.queues;
        v.limit = Limit::Ops(40_000);
        let r = job::run(&t.socket, &v, &t.watch)
            .with_context(|| format!("verification run against {}", t.key))?;
        eprintln!(
            "{:<8} verify: {} reads checked, {} writes, ok",
            t.key, r.verified, r.writes
        );
    }

    let specs: Vec<JobSpec> = jobs(o.runtime, o.queues)
        .into_iter()
        .filter(|j| o.only.is_empty() || o.only.iter().any(|n| *n == j.name()))
        .collect();
    let mut all: Vec<Vec<Vec<JobResult>>> = vec![vec![Vec::new(); targets.len()]; specs.len()];
    for round in 0..o.repeat {
        for (ji, spec) in specs.iter().enumerate() {
            for (ti, t) in targets.iter().enumerate() {
                let mut s = spec.clone();
                s.seed ^= round as u64;
                let r = job::run(&t.socket, &s, &t.watch)
                    .with_context(|| format!("{} against {}", spec.name(), t.key))?;
                eprintln!(
                    "round {} {:<18} {:<8} {:>9.0} IOPS {:>8.1} MB/s p50 {:>7.1} us p99 {:>7.1} us | {}",
                    round + 1,
                    spec.name(),
                    t.key,
                    r.iops,
                    r.mb_s,
                    r.lat_p50_us,
                    r.lat_p99_us,
                    r.procs
                        .iter()
                        .map(|p| format!("{} {:.1}us/io", p.name, p.cpu_us_per_io))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                all[ji][ti].push(r);
            }
        }
    }

    let jobs: Vec<JobRuns> = specs
        .iter()
        .zip(all)
        .map(|(spec, per_t)| JobRuns {
            job: spec.name(),
            spec: spec.clone(),
            median: targets
                .iter()
                .zip(&per_t)
                .map(|(t, rs)| (t.key.clone(), summarize(rs, server_name(&t.key))))
                .collect(),
            runs: targets
                .iter()
                .zip(per_t)
                .map(|(t, rs)| (t.key.clone(), rs))
                .collect(),
        })
        .collect();

    let mut guest = Vec::new();
    if o.guest && !o.security {
        for t in targets.iter().filter(|t| t.key != "basalt1") {
            guest.extend(guest_fio(t, o.guest_runtime)?);
        }
    }

    let meta = report::meta(o);
    Ok(Results {
        meta,
        targets: targets
            .iter()
            .map(|t| (t.key.clone(), t.label.clone()))
            .collect(),
        jobs,
        guest,
    })
}

const GUEST_JOBS: &[(&str, &str)] = &[
    ("4k-randread-qd32", "--bs=4k --rw=randread --iodepth=32"),
    ("4k-randwrite-qd32", "--bs=4k --rw=randwrite --iodepth=32"),
    ("4k-randwrite-qd1", "--bs=4k --rw=randwrite --iodepth=1"),
];

/// fio inside the TCG guest against `t`'s socket.
fn guest_fio(t: &Target, runtime: u32) -> Result<Vec<GuestFio>> {
    use basalt_tests::guest;
    if !guest::qemu_available() {
        bail!("qemu-system-x86_64 is needed for the guest check (or pass --no-guest)");
    }
    let image = guest::ensure_image()?;
    let mut script = String::from("set +x\n");
    for (name, args) in GUEST_JOBS {
        script.push_str(&format!(
            "echo FIO-BEGIN {name}\nfio --name={name} --filename=/dev/vda --direct=1 --ioengine=libaio {args} --runtime={runtime} --time_based --size=256M --output-format=json || exit 1\necho FIO-END {name}\n"
        ));
    }
    let run = image.run(
        &t.socket,
        2,
        &script,
        Duration::from_secs(120 + 4 * runtime as u64 * GUEST_JOBS.len() as u64),
    )?;
    run.ensure_success()?;
    let mut out = Vec::new();
    for (name, _) in GUEST_JOBS {
        let begin = format!("FIO-BEGIN {name}");
        let end = format!("FIO-END {name}");
        let text = run.output.as_str();
        let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) else {
            bail!(
                "guest output lacks fio result for {name} (log {})",
                run.log.display()
            );
        };
        let body = &text[b + begin.len()..e];
        let json = &body[body.find('{').context("no JSON from fio")?
            ..=body.rfind('}').context("no JSON from fio")?];
        let v: serde_json::Value = serde_json::from_str(json)
            .with_context(|| format!("parsing fio JSON for {name} (log {})", run.log.display()))?;
        let j = &v["jobs"][0];
        let dir = if name.contains("read") {
            "read"
        } else {
            "write"
        };
        let iops = j[dir]["iops"].as_f64().unwrap_or(0.0);
        let p50 = j[dir]["clat_ns"]["percentile"]["50.000000"]
            .as_f64()
            .map(|n| n / 1000.0)
            .unwrap_or(0.0);
        eprintln!(
            "guest {:<18} {:<8} {:>8.0} IOPS p50 {:>8.1} us",
            name, t.key, iops, p50
        );
        out.push(GuestFio {
            job: name.to_string(),
            target: t.key.clone(),
            iops,
            p50_us: p50,
        });
    }
    Ok(out)
}
