//! Medians of `basalt-bench layouts` (the tables are in `tables.rs`, the
//! text of layouts.md in `text.rs`).

use serde::Serialize;
use serde_json::Value;

use super::{case_key, CaseRound, LayoutResults, Timed, CASES};
use crate::snapbench::report::median;

pub use super::tables::tables;
pub use super::text::markdown;

fn med<T>(xs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(xs.iter().map(f).collect())
}

/// Cores busy during an operation: all CPU seconds counted ÷ wall seconds.
pub fn busy(t: &Timed) -> f64 {
    t.cpu_s.iter().map(|(_, c)| c).sum::<f64>() / t.secs
}

/// Cores busy of one process group.
fn busy_of(t: &Timed, group: &str) -> f64 {
    t.cpu_s
        .iter()
        .find(|(n, _)| n == group)
        .map(|(_, c)| c / t.secs)
        .unwrap_or(f64::NAN)
}

pub const GROUPS: [&str; 4] = ["storage", "s3s-fs", "control", "cli"];

/// Medians of one timed operation over the rounds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TimedFig {
    pub secs: f64,
    pub server_secs: f64,
    pub mb_s: f64,
    /// The same bytes ÷ the server's own time.
    pub server_mb_s: f64,
    pub busy: f64,
    /// Cores busy per group, in [`GROUPS`] order.
    pub busy_groups: Vec<f64>,
}

fn timed_fig<T>(xs: &[T], f: impl Fn(&T) -> &Timed) -> TimedFig {
    TimedFig {
        secs: med(xs, |x| f(x).secs),
        server_secs: med(xs, |x| f(x).server_secs.unwrap_or(f64::NAN)),
        mb_s: med(xs, |x| f(x).mb_s),
        server_mb_s: med(xs, |x| {
            let t = f(x);
            t.mb_s * t.secs / t.server_secs.unwrap_or(f64::NAN)
        }),
        busy: med(xs, |x| busy(f(x))),
        busy_groups: GROUPS
            .iter()
            .map(|g| med(xs, |x| busy_of(f(x), g)))
            .collect(),
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CaseFig {
    pub backend: String,
    pub key: String,
    pub destinations: Vec<String>,
    pub rounds: usize,
    pub fill_mb_s: f64,
    pub uploaded_mib: f64,
    pub snap: TimedFig,
    pub restore: TimedFig,
    /// snap.mb_s and restore.mb_s ÷ those of `single` on the same backend.
    pub snap_ratio: f64,
    pub restore_ratio: f64,
}

pub fn case_figs(r: &LayoutResults) -> Vec<CaseFig> {
    let mut out = Vec::new();
    for (b, _) in &r.backends {
        let mut single = (f64::NAN, f64::NAN);
        for c in CASES {
            let xs: Vec<&CaseRound> = r
                .cases
                .iter()
                .filter(|x| &x.backend == b && x.layout == c.layout && x.destinations.len() == c.n)
                .collect();
            if xs.is_empty() {
                continue;
            }
            let mut f = CaseFig {
                backend: b.clone(),
                key: case_key(c.layout, c.n),
                destinations: xs[0].destinations.clone(),
                rounds: xs.len(),
                fill_mb_s: med(&xs, |x| x.fill_mb_s),
                uploaded_mib: med(&xs, |x| x.bytes_uploaded as f64) / (1 << 20) as f64,
                snap: timed_fig(&xs, |x| &x.snap),
                restore: timed_fig(&xs, |x| &x.restore),
                ..Default::default()
            };
            if c.n == 1 {
                single = (f.snap.mb_s, f.restore.mb_s);
            }
            f.snap_ratio = f.snap.mb_s / single.0;
            f.restore_ratio = f.restore.mb_s / single.1;
            out.push(f);
        }
    }
    out
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TransferFig {
    pub backend: String,
    pub destination: String,
    pub import: TimedFig,
    pub export: TimedFig,
    pub identical: String,
}

pub fn transfer_figs(r: &LayoutResults) -> Vec<TransferFig> {
    r.backends
        .iter()
        .filter_map(|(b, _)| {
            let xs: Vec<_> = r.transfers.iter().filter(|t| &t.backend == b).collect();
            let first = xs.first()?;
            Some(TransferFig {
                backend: b.clone(),
                destination: first.destination.clone(),
                import: timed_fig(&xs, |x| &x.import),
                export: timed_fig(&xs, |x| &x.export),
                identical: format!(
                    "{} of {}",
                    xs.iter().filter(|x| x.identical).count(),
                    xs.len()
                ),
            })
        })
        .collect()
}

/// Percentile `p` (0-1) of sorted samples, nearest rank.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseFig {
    pub name: String,
    pub reads: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Medians of each round.
    pub round_medians_ms: Vec<f64>,
    /// The first read of each round, ms.
    pub first_reads_ms: Vec<f64>,
    /// Reads over 100 ms, and those of them that were a round's first read.
    pub over_100ms: usize,
    pub over_100ms_first: usize,
    /// During the phase, summed over the rounds (the counters include the
    /// background hydration's fetches of the volume read).
    pub hedges: u64,
    pub fallbacks: u64,
    /// (served, errors) of the first and the second destination.
    pub first: (u64, u64),
    pub second: (u64, u64),
    pub data_ok: bool,
}

fn counters(h: &Value, dest: usize) -> (u64, u64) {
    let s = &h["sources"][dest];
    (
        s["served"].as_u64().unwrap_or(0),
        s["errors"].as_u64().unwrap_or(0),
    )
}

fn source_index(h: &Value, name: &str) -> usize {
    h["sources"]
        .as_array()
        .and_then(|a| a.iter().position(|s| s["destination"] == name))
        .unwrap_or(usize::MAX)
}

pub fn phase_figs(r: &LayoutResults) -> Vec<PhaseFig> {
    let names: Vec<String> = r
        .fallback
        .first()
        .map(|f| f.phases.iter().map(|p| p.name.clone()).collect())
        .unwrap_or_default();
    let mut out: Vec<PhaseFig> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut f = PhaseFig {
            name: name.clone(),
            data_ok: true,
            ..Default::default()
        };
        let mut all = Vec::new();
        for fr in &r.fallback {
            let Some(p) = fr.phases.get(i) else { continue };
            all.extend(&p.lat_ms);
            f.round_medians_ms.push(median(p.lat_ms.clone()));
            f.first_reads_ms.extend(p.lat_ms.first());
            for (j, &l) in p.lat_ms.iter().enumerate() {
                if l > 100.0 {
                    f.over_100ms += 1;
                    f.over_100ms_first += usize::from(j == 0);
                }
            }
            f.data_ok &= p.data_ok;
            let get = |h: &Value, k: &str| h[k].as_u64().unwrap_or(0);
            let ph = &p.hydration_before;
            f.hedges += get(&p.hydration, "hedges").saturating_sub(get(ph, "hedges"));
            f.fallbacks += get(&p.hydration, "fallbacks").saturating_sub(get(ph, "fallbacks"));
            for (slot, d) in [(&mut f.first, 0), (&mut f.second, 1)] {
                let name = fr.destinations.get(d).map(String::as_str).unwrap_or("");
                let now = counters(&p.hydration, source_index(&p.hydration, name));
                let before = counters(ph, source_index(ph, name));
                slot.0 += now.0.saturating_sub(before.0);
                slot.1 += now.1.saturating_sub(before.1);
            }
        }
        all.sort_by(f64::total_cmp);
        f.reads = all.len();
        f.median_ms = median(all.clone());
        f.p99_ms = pct(&all, 0.99);
        f.max_ms = pct(&all, 1.0);
        out.push(f);
    }
    out
}

pub fn fmt(x: f64, prec: usize) -> String {
    if x.is_finite() {
        format!("{x:.prec$}")
    } else {
        "–".into()
    }
}

pub fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "–".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_keys() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 0.5), 50.0);
        assert_eq!(pct(&v, 0.99), 99.0);
        assert_eq!(pct(&v, 1.0), 100.0);
        assert!(pct(&[], 0.5).is_nan());
        assert_eq!(case_key("single", 1), "single");
        assert_eq!(case_key("striped", 3), "striped/3");
    }
}
