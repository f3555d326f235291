//! Destinations, CPU accounting and CLI waits of `basalt-bench layouts`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use basalt_snapshot::testing::S3Server;
use serde_json::Value;

use crate::procstat;
use crate::snapbench::cluster::Cluster;
use crate::snapbench::io::Dev;
use crate::snapbench::POLL_MS;

pub const MIB: u64 = 1 << 20;
/// Longest a hydration may take.
const WAIT_LIMIT: Duration = Duration::from_secs(1800);

/// A kind of destination and its three destinations.
pub struct Backend {
    pub key: &'static str,
    pub label: String,
    pub dests: Vec<String>,
}

/// Three directory destinations on tmpfs: shm1, shm2, shm3.
pub fn dir_backend(cl: &Cluster, root: &Path) -> Result<Backend> {
    let mut dests = Vec::new();
    for i in 1..=3 {
        let name = format!("shm{i}");
        let path = root.join(&name);
        std::fs::create_dir_all(&path)?;
        let p = path.to_str().context("scratch path is not UTF-8")?;
        cl.cli_json(&["destination", "add", &name, "--type", "dir", "--path", p])?;
        dests.push(name);
    }
    Ok(Backend {
        key: "shm",
        label: "directories on tmpfs (/dev/shm), one per destination".into(),
        dests,
    })
}

/// Adds S3 destination `name` (prefix `basalt`).
pub fn add_s3(cl: &Cluster, name: &str, endpoint: &str, bucket: &str, creds: &Path) -> Result<()> {
    let creds = creds.to_str().context("credentials path is not UTF-8")?;
    cl.cli_json(&[
        "destination",
        "add",
        name,
        "--type",
        "s3",
        "--bucket",
        bucket,
        "--prefix",
        "basalt",
        "--endpoint",
        endpoint,
        "--allow-http",
        "--credentials-file",
        creds,
    ])?;
    Ok(())
}

/// One S3 destination per server: s3a, s3b, s3c.
pub fn s3_backend(cl: &Cluster, servers: &[S3Server], creds: &Path) -> Result<Backend> {
    let mut dests = Vec::new();
    for (s, n) in servers.iter().zip(["s3a", "s3b", "s3c"]) {
        add_s3(cl, n, &s.endpoint, &s.bucket, creds)?;
        dests.push(n.to_owned());
    }
    Ok(Backend {
        key: "s3",
        label: "S3 API: one s3s-fs server per destination, on loopback (objects under /tmp)".into(),
        dests,
    })
}

/// CPU seconds of this process's waited-for children (the `basalt` CLI
/// calls, polls included).
fn children_cpu() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The processes whose CPU is counted, by group.
pub struct Watch {
    groups: Vec<(&'static str, Vec<u32>)>,
}

pub struct Mark(Vec<f64>);

impl Watch {
    pub fn new(cl: &Cluster, s3: Vec<u32>) -> Watch {
        Watch {
            groups: vec![
                (
                    "storage",
                    cl.servers.iter().filter_map(|s| s.pid()).collect(),
                ),
                ("control", cl.control.pid().into_iter().collect()),
                ("s3s-fs", s3),
            ],
        }
    }

    fn now(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .groups
            .iter()
            .map(|(_, pids)| {
                pids.iter()
                    .filter_map(|&p| procstat::cpu_time(p))
                    .map(|d| d.as_secs_f64())
                    .sum()
            })
            .collect();
        v.push(children_cpu());
        v
    }

    pub fn mark(&self) -> Mark {
        Mark(self.now())
    }

    /// CPU seconds per group since `m`.
    pub fn since(&self, m: &Mark) -> Vec<(String, f64)> {
        let names = self.groups.iter().map(|(n, _)| *n).chain(["cli"]);
        names
            .zip(self.now().iter().zip(&m.0))
            .map(|(n, (a, b))| (n.to_owned(), (a - b).max(0.0)))
            .collect()
    }
}

pub fn seed_of(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// An attached volume: its socket and primary server.
pub struct Attached {
    pub socket: PathBuf,
    pub primary: String,
}

pub fn attach(cl: &Cluster, vol: &str) -> Result<Attached> {
    let a = cl.cli_json(&["volume", "attach", vol, "--node", "node1"])?;
    Ok(Attached {
        socket: PathBuf::from(
            a["attachment"]["socket_path"]
                .as_str()
                .context("attach gave no socket_path")?,
        ),
        primary: a["primary"]["server_id"]
            .as_str()
            .context("no primary")?
            .to_owned(),
    })
}

/// Creates `vol` of `data` bytes, attaches it and fills it with random data
/// (1 MiB writes, 8 in flight, then a flush); returns it and the MB/s.
pub fn fill_volume(cl: &Cluster, vol: &str, data: u64, seed: u64) -> Result<(Attached, f64)> {
    cl.cli_json(&[
        "volume",
        "create",
        vol,
        "--size",
        &format!("{}M", data / MIB),
    ])?;
    let a = attach(cl, vol)?;
    let mut dev = Dev::open(&a.socket, 8, MIB as usize)?;
    let offsets: Vec<u64> = (0..data / MIB).map(|i| i * MIB).collect();
    let t0 = Instant::now();
    dev.write_random(&offsets, seed)?;
    dev.flush()?;
    Ok((a, data as f64 / t0.elapsed().as_secs_f64() / 1e6))
}

/// Polls `volume show` until the hydration is complete (or gone); returns
/// the last hydration report seen and the most bytes fetched.
pub fn wait_hydrated(cl: &Cluster, vol: &str) -> Result<(Value, u64)> {
    let deadline = Instant::now() + WAIT_LIMIT;
    let (mut last, mut fetched) = (Value::Null, 0);
    loop {
        let v = cl.cli_json(&["volume", "show", vol])?;
        let h = &v["hydration"];
        if !h.is_null() {
            fetched = fetched.max(u(&h["bytes_fetched"]));
            last = h.clone();
        }
        if h.is_null() || h["complete"] == true {
            return Ok((last, fetched));
        }
        if !h["error"].as_str().unwrap_or("").is_empty() {
            eprintln!("{vol}: hydration error reported: {}", h["error"]);
        }
        if Instant::now() > deadline {
            bail!("{vol} still hydrating after {WAIT_LIMIT:?}: {v}");
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
}
