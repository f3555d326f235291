//! Per-member read scores (latency average, recent errors) and counters.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Timers of a set's reads (see [`DestinationSet::get_chunk`](super::DestinationSet::get_chunk)
/// and [`DestinationSet::get_manifest`](super::DestinationSet::get_manifest)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetOptions {
    /// Shortest hedge deadline (default 50 ms).
    pub hedge_min: Duration,
    /// Longest hedge deadline (default 1 s); wins over `hedge_min`.
    pub hedge_max: Duration,
    /// How long after an error a member is ranked after the members without
    /// one (default 10 s).
    pub penalty: Duration,
}

impl Default for SetOptions {
    fn default() -> Self {
        SetOptions {
            hedge_min: Duration::from_millis(50),
            hedge_max: Duration::from_secs(1),
            penalty: Duration::from_secs(10),
        }
    }
}

/// Counters of one member, as reported by [`DestinationSet::stats`](super::DestinationSet::stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberStats {
    /// The destination's name.
    pub name: String,
    /// Moving average of its read latency (chunks and manifests) in
    /// microseconds; 0 before its first successful read.
    pub latency_ewma_micros: u64,
    /// Chunks read and verified, and manifests read.
    pub gets_ok: u64,
    /// Failed reads: network or store errors, and a chunk missing from a
    /// member that should hold it (not a corrupt copy, not a chunk missing
    /// from a member that is not its holder).
    pub errors: u64,
    /// Copies that failed verification (or were too large to be a chunk).
    pub corrupt: u64,
    /// Corrupt copies rewritten with verified data from another member.
    pub repaired: u64,
    /// Chunk reads this member won (its answer was the one returned).
    pub served: u64,
    /// Hedged requests sent to this member because an earlier one was slow.
    pub hedges_started: u64,
}

/// Counters of a set: [`MemberStats`] in member order plus set totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetStats {
    /// One entry per member, in member order.
    pub members: Vec<MemberStats>,
    /// Chunks served by a member other than the first one asked.
    pub fallbacks: u64,
    /// Hedged requests started.
    pub hedges: u64,
}

/// Weight of a new latency sample in the moving average.
const EWMA_WEIGHT: f64 = 0.2;
/// The hedge deadline is this many times the first candidate's latency.
const HEDGE_FACTOR: f64 = 3.0;

#[derive(Default)]
struct Score {
    ewma_micros: Option<f64>,
    consecutive_errors: u64,
    last_error: Option<Instant>,
    stats: MemberStats,
}

impl Score {
    fn sample(&mut self, micros: f64) {
        self.ewma_micros = Some(match self.ewma_micros {
            None => micros,
            Some(e) => e + EWMA_WEIGHT * (micros - e),
        });
    }

    fn answered(&mut self, took: Duration) {
        self.sample(micros(took));
        self.consecutive_errors = 0;
        self.stats.gets_ok += 1;
    }
}

struct Inner {
    members: Vec<Score>,
    fallbacks: u64,
    hedges: u64,
}

/// Scores and counters of every member, behind one lock that is never held
/// across an await.
pub(super) struct Board {
    opts: SetOptions,
    inner: Mutex<Inner>,
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl Board {
    pub(super) fn new(names: &[&str], opts: SetOptions) -> Board {
        let members = names
            .iter()
            .map(|n| Score {
                stats: MemberStats {
                    name: (*n).to_owned(),
                    ..MemberStats::default()
                },
                ..Score::default()
            })
            .collect();
        Board {
            opts,
            inner: Mutex::new(Inner {
                members,
                fallbacks: 0,
                hedges: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `candidates` best first: members without an error in the penalty
    /// window by latency average (a member without one counts as the best
    /// known average, so ties keep the given order), then the erroring ones
    /// by consecutive errors, then latency.
    pub(super) fn order(&self, candidates: &[usize]) -> Vec<usize> {
        let inner = self.lock();
        let now = Instant::now();
        let best_known = inner
            .members
            .iter()
            .filter_map(|s| s.ewma_micros)
            .min_by(f64::total_cmp)
            .unwrap_or(0.0);
        let key = |&i: &usize| {
            let s = &inner.members[i];
            let recent = s
                .last_error
                .is_some_and(|t| now.saturating_duration_since(t) < self.opts.penalty);
            let errors = if recent { s.consecutive_errors } else { 0 };
            (recent, errors, s.ewma_micros.unwrap_or(best_known))
        };
        let mut out = candidates.to_vec();
        out.sort_by(|a, b| {
            let (ka, kb) = (key(a), key(b));
            (ka.0, ka.1).cmp(&(kb.0, kb.1)).then(ka.2.total_cmp(&kb.2))
        });
        out
    }

    /// `max(hedge_min, 3 × the best latency average among `candidates`)`
    /// (the members holding what is read), capped at `hedge_max`; `hedge_min`
    /// while none has an average yet. The best, not the first: a first
    /// candidate that turned slow is hedged as soon as a fast holder would
    /// have answered.
    pub(super) fn hedge_deadline(&self, candidates: &[usize]) -> Duration {
        let inner = self.lock();
        let ewma = candidates
            .iter()
            .filter_map(|&i| inner.members[i].ewma_micros)
            .fold(None, |best: Option<f64>, e| {
                Some(best.map_or(e, |b| b.min(e)))
            })
            .unwrap_or(0.0);
        drop(inner);
        let scaled = Duration::from_secs_f64((HEDGE_FACTOR * ewma / 1e6).clamp(0.0, 3600.0));
        scaled.max(self.opts.hedge_min).min(self.opts.hedge_max)
    }

    /// A verified chunk read by `i` that was returned to the caller.
    pub(super) fn served(&self, i: usize, took: Duration, fallback: bool) {
        let mut inner = self.lock();
        let s = &mut inner.members[i];
        s.answered(took);
        s.stats.served += 1;
        if fallback {
            inner.fallbacks += 1;
        }
    }

    /// A read by `i` that was returned to the caller and is not a chunk (a
    /// manifest): counts in its latency average and `gets_ok`, not in
    /// `served` nor the set's fallbacks.
    pub(super) fn answered(&self, i: usize, took: Duration) {
        self.lock().members[i].answered(took);
    }

    /// A request to `i` still running after `took` when another member won:
    /// its latency is at least `took`, so raise its average (never lower it).
    pub(super) fn outrun(&self, i: usize, took: Duration) {
        let mut inner = self.lock();
        let s = &mut inner.members[i];
        let t = micros(took);
        let slower = match s.ewma_micros {
            None => true,
            Some(e) => e < t,
        };
        if slower {
            s.sample(t);
        }
    }

    /// A failed read (`corrupt`: the copy failed verification).
    pub(super) fn failed(&self, i: usize, corrupt: bool) {
        let mut inner = self.lock();
        let s = &mut inner.members[i];
        s.consecutive_errors += 1;
        s.last_error = Some(Instant::now());
        if corrupt {
            s.stats.corrupt += 1;
        } else {
            s.stats.errors += 1;
        }
    }

    pub(super) fn repaired(&self, i: usize) {
        self.lock().members[i].stats.repaired += 1;
    }

    /// A hedged request to `i` was started.
    pub(super) fn hedged(&self, i: usize) {
        let mut inner = self.lock();
        inner.members[i].stats.hedges_started += 1;
        inner.hedges += 1;
    }

    pub(super) fn stats(&self) -> SetStats {
        let inner = self.lock();
        SetStats {
            members: inner
                .members
                .iter()
                .map(|s| MemberStats {
                    latency_ewma_micros: s.ewma_micros.map_or(0, |e| (e.round() as u64).max(1)),
                    ..s.stats.clone()
                })
                .collect(),
            fallbacks: inner.fallbacks,
            hedges: inner.hedges,
        }
    }
}

#[cfg(test)]
#[path = "score_tests.rs"]
mod tests;
