//! The fault-injection suite's machinery: faults injected into a managed
//! cluster ([`ManagedCluster::start_proxied`]) while a guest runs verifying
//! fio rounds, and the figures drawn from them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::controlplane::ManagedCluster;

/// One fault, with its recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` the server holding the primary; restarted after the settle.
    PrimaryKill,
    /// `kill -9` the server holding the mirror; restarted after the settle.
    MirrorKill,
    /// SIGSTOP the primary's server (a hang); SIGCONT after the settle.
    PrimaryHang,
    /// Cut the primary's server off the network; healed after the settle.
    PrimaryCut,
    /// Cut the mirror's server off the network; healed after the settle.
    MirrorCut,
    /// The control service crashes in the middle of the failover of a
    /// killed primary (failpoint after the new layout is persisted, before
    /// it is pushed); it is restarted and must finish the failover.
    ControlKillInFailover,
    /// `kill -9` the node manager (its backends keep serving); restarted.
    NodeKill,
    /// `kill -9` the control service with nothing failing: the data path
    /// goes on without it; restarted after the settle.
    ControlKill,
    /// `kill -9` the volume's backend under I/O: the node manager restarts
    /// it, QEMU reconnects (`reconnect=1`) and the requests that were in
    /// flight are taken from the ring again.
    BackendKill,
    /// A backend of a superseded attachment (one left running on a host that
    /// was cut off, after a forced attach elsewhere), knowing the current
    /// epoch, writes garbage over the guest's fio region for the settle
    /// period: every write must be refused `Fenced` (the guest's verify
    /// would catch one that landed); one of a future attachment gets
    /// `LayoutPending`.
    StaleBackend,
}

pub const ALL: [Fault; 10] = [
    Fault::PrimaryKill,
    Fault::MirrorKill,
    Fault::PrimaryHang,
    Fault::PrimaryCut,
    Fault::MirrorCut,
    Fault::ControlKillInFailover,
    Fault::NodeKill,
    Fault::ControlKill,
    Fault::BackendKill,
    Fault::StaleBackend,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::PrimaryKill => "primary kill -9",
            Fault::MirrorKill => "mirror kill -9",
            Fault::PrimaryHang => "primary SIGSTOP",
            Fault::PrimaryCut => "primary network cut",
            Fault::MirrorCut => "mirror network cut",
            Fault::ControlKillInFailover => "control kill -9 during failover",
            Fault::NodeKill => "node manager kill -9",
            Fault::ControlKill => "control kill -9",
            Fault::BackendKill => "backend kill -9",
            Fault::StaleBackend => "stale backend of a superseded attachment writes",
        }
    }
}

/// What one injected fault did.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub fault: Fault,
    pub injected: Instant,
    /// When the control service showed the new layout (None: no failover).
    pub failed_over: Option<Duration>,
    /// When the volume had all its copies in sync again.
    pub healthy: Duration,
    /// Longest guest I/O completion in the fio rounds overlapping the fault.
    pub stall_ms: f64,
}

/// One fio round seen in the guest's output.
#[derive(Debug, Clone)]
pub struct Round {
    pub n: u32,
    pub start: Instant,
    pub end: Option<Instant>,
    pub max_clat_ms: f64,
}

/// Collects fio rounds from the guest's output lines.
#[derive(Default, Clone)]
pub struct Rounds(pub Arc<Mutex<Vec<Round>>>);

impl Rounds {
    pub fn on_line(&self, line: &str) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = line
            .strip_prefix("round ")
            .and_then(|r| r.strip_suffix(" start"))
        {
            v.push(Round {
                n: n.trim().parse().unwrap_or(0),
                start: Instant::now(),
                end: None,
                max_clat_ms: 0.0,
            });
        } else if line.starts_with("round ") && line.ends_with(" ok") {
            if let Some(r) = v.last_mut() {
                r.end = Some(Instant::now());
            }
        } else if let Some(ms) = clat_max_ms(line) {
            if let Some(r) = v.last_mut() {
                r.max_clat_ms = r.max_clat_ms.max(ms);
            }
        }
    }

    /// Rounds finished so far.
    pub fn finished(&self) -> usize {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().filter(|r| r.end.is_some()).count()
    }

    /// Longest completion in the rounds overlapping `[from, to]`.
    pub fn stall_ms(&self, from: Instant, to: Instant) -> f64 {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .filter(|r| r.start <= to && r.end.is_none_or(|e| e >= from))
            .map(|r| r.max_clat_ms)
            .fold(0.0, f64::max)
    }
}

/// The `max=` of a fio `clat (usec|msec): ...` line, in ms.
pub fn clat_max_ms(line: &str) -> Option<f64> {
    let i = line.find("clat (")?;
    let unit_ms = line[i..].starts_with("clat (msec)");
    let m = line.find("max=")?;
    let num: String = line[m + 4..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut v: f64 = num.parse().ok()?;
    if line[m + 4 + num.len()..].starts_with('k') {
        v *= 1000.0;
    }
    Some(if unit_ms { v } else { v / 1000.0 })
}

/// Waits until a fio round has started after `after` rounds finished, and
/// then `into` more: fault pacing (not synchronisation), so the fault lands
/// inside a round's write phase and its I/O sees the whole outage.
pub fn wait_mid_round(
    rounds: &Rounds,
    after: usize,
    into: Duration,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let started = {
            let v = rounds.0.lock().unwrap_or_else(|e| e.into_inner());
            v.iter().filter(|r| r.end.is_some()).count() >= after
                && v.last().is_some_and(|r| r.end.is_none())
        };
        if started {
            std::thread::sleep(into);
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no fio round started");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until at least `n` fio rounds have finished.
pub fn wait_rounds(rounds: &Rounds, n: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while rounds.finished() < n {
        if Instant::now() > deadline {
            bail!("the guest finished only {} fio rounds", rounds.finished());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn server_index(id: &str) -> Result<usize> {
    Ok(id
        .strip_prefix('s')
        .and_then(|n| n.parse::<usize>().ok())
        .context("server ids are s1, s2, ...")?
        - 1)
}

/// Primary and mirror server indexes of a healthy two-copy volume.
fn layout(c: &ManagedCluster, vol: &str) -> Result<(usize, usize, u64)> {
    let v = c.cli_json(&["volume", "show", vol])?;
    let p = server_index(v["primary"]["server_id"].as_str().unwrap_or(""))?;
    let m = server_index(v["mirrors"][0]["server_id"].as_str().unwrap_or(""))?;
    Ok((p, m, v["epoch"].as_u64().unwrap_or(0)))
}

/// Whether the volume has its two copies in sync and is attached.
pub fn healthy(v: &serde_json::Value) -> bool {
    v["state"] == "ATTACHED" && v["mirrors"].as_array().is_some_and(|m| m.len() == 1)
}

/// How long faulted servers stay faulted after the failover (the settle).
pub const SETTLE: Duration = Duration::from_millis(1500);
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
const HEAL_TIMEOUT: Duration = Duration::from_secs(90);

/// Injects `f`, waits for the failover, recovers after [`SETTLE`], waits
/// until the volume is healthy again.
pub fn inject(
    c: &mut ManagedCluster,
    vol: &str,
    f: Fault,
) -> Result<(Option<Duration>, Duration, Instant)> {
    let (p, m, epoch) = layout(c, vol)?;
    let moved = move |v: &serde_json::Value| v["epoch"].as_u64().unwrap_or(0) > epoch;
    if f == Fault::ControlKillInFailover {
        c.restart_control_env(&[(basalt_failpoint::ENV, "failover.after_persist=abort")])?;
        // Ready when it answers; a spurious failover (a slow machine) may
        // already hit the failpoint, which the steps below handle alike.
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        while !c.control.has_exited() && c.cli_json(&["volume", "show", vol]).is_err() {
            if Instant::now() > deadline {
                bail!("the control service with armed failpoints never answered");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut old_backends = Vec::new();
    let t0 = Instant::now();
    match f {
        Fault::PrimaryKill | Fault::ControlKillInFailover => c.servers[p].kill9(),
        Fault::MirrorKill => c.servers[m].kill9(),
        Fault::PrimaryHang => c.servers[p].signal(libc::SIGSTOP),
        Fault::PrimaryCut => c.proxies[p].cut(),
        Fault::MirrorCut => c.proxies[m].cut(),
        Fault::NodeKill => c.node.kill9(),
        Fault::ControlKill => c.control.kill9(),
        Fault::StaleBackend => stale_backend(c, vol)?,
        Fault::BackendKill => {
            old_backends = c.backend_pids()?;
            let old = &old_backends;
            if old.is_empty() {
                bail!("no backend running");
            }
            for pid in old {
                // SAFETY: signalling a backend this cluster started.
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
        }
    }
    let mut failed_over = None;
    match f {
        // Nothing fails: the stale writes were refused (checked above).
        Fault::StaleBackend => {}
        Fault::NodeKill => {
            std::thread::sleep(SETTLE);
            c.restart_node()?;
        }
        Fault::ControlKill => {
            std::thread::sleep(SETTLE);
            c.restart_control()?;
        }
        Fault::BackendKill => {
            let old = &old_backends;
            // The node manager restarts it on the same socket.
            let deadline = Instant::now() + FAILOVER_TIMEOUT;
            loop {
                let now = c.backend_pids()?;
                if !now.is_empty() && now.iter().all(|p| !old.contains(p)) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the node manager did not restart the backend");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Fault::ControlKillInFailover => {
            let deadline = Instant::now() + FAILOVER_TIMEOUT;
            while !c.control.has_exited() {
                if Instant::now() > deadline {
                    bail!("the control service did not reach its failpoint");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Not `restart_control`: the killed server is still down, so
            // not every server will be UP.
            c.restart_control_env(&[])?;
            c.wait_volume(vol, FAILOVER_TIMEOUT, moved)?;
            failed_over = Some(t0.elapsed());
            c.restart_server(p)?;
        }
        _ => {
            c.wait_volume(vol, FAILOVER_TIMEOUT, moved)?;
            failed_over = Some(t0.elapsed());
            std::thread::sleep(SETTLE);
            match f {
                Fault::PrimaryKill => c.restart_server(p)?,
                Fault::MirrorKill => c.restart_server(m)?,
                Fault::PrimaryHang => c.servers[p].signal(libc::SIGCONT),
                Fault::PrimaryCut => c.proxies[p].heal(),
                Fault::MirrorCut => c.proxies[m].heal(),
                _ => {}
            }
        }
    }
    c.wait_volume(vol, HEAL_TIMEOUT, healthy)?;
    Ok((failed_over, t0.elapsed(), t0))
}

/// [`Fault::StaleBackend`]: writes as attachment generation-1 with the
/// current epoch; all must be refused `Fenced`, and generation+1 gets
/// `LayoutPending`.
fn stale_backend(c: &ManagedCluster, vol: &str) -> Result<()> {
    let v = c.cli_json(&["volume", "show", vol])?;
    let (id, epoch) = (v["id"].as_u64(), v["epoch"].as_u64());
    let gen = v["attachment"]["generation"].as_u64();
    let addr = v["primary"]["address"].as_str().unwrap_or_default();
    let (Some(id), Some(epoch), Some(gen)) = (id, epoch, gen) else {
        bail!("volume {vol} has no attachment: {v}");
    };
    // The guest's fio region (GUEST_SCRIPT: --offset=64M --size=32M).
    let region = (64 << 20, 96 << 20);
    let node = v["attachment"]["node_id"].as_str().unwrap_or("node-1");
    let ca = c.cluster_ca()?;
    let mut old = crate::rogue::connect(&ca, node, addr, id, gen - 1)?;
    let stale = crate::rogue::write_for(&mut old, id, epoch, region, SETTLE)?;
    let mut new = crate::rogue::connect(&ca, node, addr, id, gen + 1)?;
    let ahead = crate::rogue::write_for(&mut new, id, epoch, region, SETTLE / 10)?;
    println!(
        "stale backend (attachment {}): {stale:?}; attachment {}: {ahead:?}",
        gen - 1,
        gen + 1
    );
    if stale.keys().any(|k| k != "Fenced") || stale.is_empty() {
        bail!("a superseded attachment's writes were not all refused Fenced: {stale:?}");
    }
    if ahead.keys().any(|k| k != "LayoutPending") || ahead.is_empty() {
        bail!("a future attachment's writes were not all refused LayoutPending: {ahead:?}");
    }
    Ok(())
}

/// A small deterministic generator for the soak's fault order.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn pick(&mut self) -> Fault {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ALL[((self.0 >> 33) % ALL.len() as u64) as usize]
    }
}

/// Median and maximum.
pub fn p50_max(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[s.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fio_clat_lines() {
        assert_eq!(
            clat_max_ms("     clat (usec): min=120, max=203456, avg=900.1, stdev=1.0"),
            Some(203.456)
        );
        assert_eq!(
            clat_max_ms("     clat (msec): min=1, max=1078, avg=9.1, stdev=1.0"),
            Some(1078.0)
        );
        assert_eq!(
            clat_max_ms("     clat (usec): min=120, max=1.5k, avg=900.1"),
            Some(1.5)
        );
        assert_eq!(clat_max_ms("round 3 ok"), None);
    }

    #[test]
    fn attributes_stalls_to_overlapping_rounds() {
        let r = Rounds::default();
        r.on_line("round 1 start");
        r.on_line("  clat (usec): min=1, max=5000, avg=2");
        r.on_line("round 1 ok");
        let between = Instant::now();
        r.on_line("round 2 start");
        r.on_line("  clat (msec): min=1, max=700, avg=2");
        r.on_line("round 2 ok");
        assert_eq!(r.finished(), 2);
        assert_eq!(r.stall_ms(between, Instant::now()), 700.0);
        assert_eq!(p50_max(&[3.0, 1.0, 2.0]), (2.0, 3.0));
    }
}
