//! `basalt-bench layouts`: what backup layouts cost and buy, on one cluster
//! of real processes (control, two storage servers, a node manager; two
//! copies per volume), with tmpfs directory destinations and S3 (s3s-fs)
//! destinations, one server each. See `docs/bench/layouts.md` for the method.
//!
//! 1. Full snapshot throughput per layout: `single`, `duplicate` over 2,
//!    `striped` over 2 and 3.
//! 2. Restore (`volume create --from-snapshot`) until hydrated, unlimited.
//! 3. `snapshot import` / `snapshot export` of a raw image.
//! 4. Read latency of a volume restored from a `duplicate` snapshot over two
//!    S3 servers while the first is healthy, slowed, then killed.

mod chart;
mod cli;
mod fallback;
mod measure;
mod notes;
pub mod report;
mod setup;
mod tables;
mod text;

pub use cli::{main_report, main_run, LayoutsArgs};

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::snapbench::cluster::{Cluster, ControlKnobs};
use crate::snapbench::POLL_MS;

pub struct LayoutOpts {
    pub out: PathBuf,
    pub data: u64,
    pub repeat: usize,
    pub quick: bool,
    pub phase_blocks: usize,
}

/// A layout measured on one kind of destination.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub layout: &'static str,
    /// Destinations in the set.
    pub n: usize,
}

pub const CASES: [Case; 4] = [
    Case {
        layout: "single",
        n: 1,
    },
    Case {
        layout: "duplicate",
        n: 2,
    },
    Case {
        layout: "striped",
        n: 2,
    },
    Case {
        layout: "striped",
        n: 3,
    },
];

/// `single`, `duplicate/2`, `striped/3`.
pub fn case_key(layout: &str, n: usize) -> String {
    if n == 1 {
        layout.to_owned()
    } else {
        format!("{layout}/{n}")
    }
}

/// One timed operation: wall time, the server's own time when its log
/// gives it, throughput of the data bytes, CPU seconds per process group.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timed {
    pub secs: f64,
    pub server_secs: Option<f64>,
    /// Data bytes ÷ secs, MB/s (10^6).
    pub mb_s: f64,
    /// CPU seconds during the operation: storage (both servers), control,
    /// s3s-fs (every server), cli (the `basalt` processes, polls included).
    pub cpu_s: Vec<(String, f64)>,
}

/// Items 1 and 2 for one layout, one round.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CaseRound {
    pub backend: String,
    pub layout: String,
    pub destinations: Vec<String>,
    pub round: usize,
    pub snapshot: String,
    pub snapshot_id: u64,
    pub data_bytes: u64,
    /// 1 MiB writes, 8 in flight, of the source volume.
    pub fill_mb_s: f64,
    pub snap: Timed,
    pub change_source: String,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
    /// `volume create --from-snapshot` → `hydration.complete`.
    pub restore: Timed,
    pub bytes_fetched: u64,
    /// The restored volume's last `hydration` report.
    pub hydration: Value,
}

/// Item 3, one round.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TransferRound {
    pub backend: String,
    pub destination: String,
    pub round: usize,
    pub bytes: u64,
    pub import: Timed,
    pub export: Timed,
    pub blocks_sent: u64,
    /// The exported file equals the imported one, byte for byte.
    pub identical: bool,
}

/// One phase of item 4.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    /// The restored volume read.
    pub volume: String,
    /// The volume was created for this phase (its destination ranking starts
    /// afresh, the first destination first).
    pub new_volume: bool,
    pub first_block: u64,
    pub blocks: u64,
    /// Latency of every 512 KiB read, in order, ms.
    pub lat_ms: Vec<f64>,
    /// Every read returned the snapshot's data.
    pub data_ok: bool,
    pub blocks_present_before: u64,
    /// `hydration` of `volume show` before and at the end of the phase.
    pub hydration_before: Value,
    pub hydration: Value,
}

/// Item 4, one round.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FallbackRound {
    pub round: usize,
    pub destinations: Vec<String>,
    pub snap: Timed,
    pub phases: Vec<Phase>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LayoutResults {
    pub meta: Vec<(String, String)>,
    pub data: u64,
    pub quick: bool,
    pub repeat: usize,
    pub poll_ms: u64,
    pub phase_blocks: usize,
    pub delay_ms: u64,
    pub fallback_rate_mib: u64,
    /// (key, label) of each kind of destination.
    pub backends: Vec<(String, String)>,
    pub cases: Vec<CaseRound>,
    pub transfers: Vec<TransferRound>,
    pub fallback: Vec<FallbackRound>,
    pub notes: Vec<String>,
    pub total_secs: f64,
}

/// Scratch directory on tmpfs; removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(o: &LayoutOpts) -> Result<LayoutResults> {
    let t0 = Instant::now();
    let load0 = cli::loadavg();
    let scratch = Scratch(PathBuf::from(format!(
        "/dev/shm/basalt-layoutbench-{}",
        std::process::id()
    )));
    if scratch.0.exists() {
        std::fs::remove_dir_all(&scratch.0)?;
    }
    std::fs::create_dir_all(&scratch.0)?;
    let creds = scratch.0.join("s3.credentials");
    crate::snapbench::write_credentials(&creds)?;
    let s3 = (0..3)
        .map(|_| {
            basalt_snapshot::testing::S3Server::start()
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("starting an S3 server (s3s-fs)")
        })
        .collect::<Result<Vec<_>>>()?;
    eprintln!("starting the cluster under {}", scratch.0.display());
    let unlimited = ControlKnobs {
        hydration_rate_mib: 0,
        snapshot_rate_mib: 0,
    };
    let mut cl = Cluster::start(
        &scratch.0.join("cluster"),
        2,
        Vec::new(),
        unlimited,
        POLL_MS,
    )?;
    let backends = [
        setup::dir_backend(&cl, &scratch.0.join("dest"))?,
        setup::s3_backend(&cl, &s3, &creds)?,
    ];
    let watch = setup::Watch::new(&cl, s3.iter().map(|s| s.pid()).collect());
    let mut res = LayoutResults {
        meta: crate::snapbench::report::meta(),
        data: o.data,
        quick: o.quick,
        repeat: o.repeat,
        poll_ms: POLL_MS,
        phase_blocks: o.phase_blocks,
        delay_ms: fallback::DELAY_MS,
        fallback_rate_mib: fallback::RATE_MIB,
        backends: backends
            .iter()
            .map(|b| (b.key.to_owned(), b.label.clone()))
            .collect(),
        ..Default::default()
    };
    for round in 0..o.repeat {
        for b in &backends {
            for case in CASES {
                eprintln!(
                    "== round {}: {} {}",
                    round + 1,
                    b.key,
                    case_key(case.layout, case.n)
                );
                let r = measure::case_round(&cl, o, b, case, round, &watch)?;
                res.notes.extend(measure::check_case(&r));
                res.cases.push(r);
            }
        }
        for b in &backends {
            eprintln!("== round {}: {} import / export", round + 1, b.key);
            let t = measure::transfer_round(&cl, o, b, round, &scratch.0, &watch)?;
            if !t.identical {
                res.notes.push(format!(
                    "{} round {}: the exported image differs from the imported one",
                    b.key,
                    round + 1
                ));
            }
            res.transfers.push(t);
        }
    }
    drop(s3);
    cl.restart_control(ControlKnobs {
        hydration_rate_mib: fallback::RATE_MIB,
        snapshot_rate_mib: 0,
    })?;
    for round in 0..o.repeat {
        eprintln!("== round {}: fallback", round + 1);
        let f = fallback::round(&cl, o, round, &creds)?;
        res.notes.extend(fallback::check(&f));
        res.fallback.push(f);
    }
    drop(cl);
    res.total_secs = t0.elapsed().as_secs_f64();
    res.meta.push(("load average at the start".into(), load0));
    res.meta
        .push(("load average at the end".into(), cli::loadavg()));
    Ok(res)
}
