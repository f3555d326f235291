//! The data-driven notes of layouts.md: the spread between rounds, how the
//! fallback phases went, and what the test S3 server adds.

use std::fmt::Write as _;

use super::report::{case_figs, fmt, phase_figs, PhaseFig};
use super::{case_key, CaseRound, LayoutResults, Timed};
use crate::snapbench::report::median;

/// The largest (max − min) ÷ median of one layout's MB/s over the rounds.
fn worst(r: &LayoutResults, f: impl Fn(&CaseRound) -> &Timed) -> (f64, String) {
    let mut out = (f64::NAN, String::new());
    for c in case_figs(r) {
        let v: Vec<f64> = r
            .cases
            .iter()
            .filter(|x| {
                x.backend == c.backend && case_key(&x.layout, x.destinations.len()) == c.key
            })
            .map(|x| f(x).mb_s)
            .collect();
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        let rel = (hi - lo) / median(v.clone());
        if v.len() > 1 && (out.0.is_nan() || rel > out.0) {
            out = (rel, format!("`{}` {}", c.backend, c.key));
        }
    }
    out
}

pub fn spread(s: &mut String, r: &LayoutResults) {
    if r.repeat < 2 {
        return;
    }
    let (a, an) = worst(r, |x| &x.snap);
    let (b, bn) = worst(r, |x| &x.restore);
    let _ = writeln!(
        s,
        "Rounds differ: one layout's MB/s varies between rounds by up to {} % of its median for snapshots \
         ({an}) and {} % for restores ({bn}); see the per-round table. A ratio closer to 1 than that is within \
         the noise of this machine.\n",
        fmt(100.0 * a, 0),
        fmt(100.0 * b, 0)
    );
}

fn phase<'a>(ph: &'a [PhaseFig], name: &str) -> Option<&'a PhaseFig> {
    ph.iter().find(|p| p.name == name)
}

pub fn fallback(s: &mut String, r: &LayoutResults) {
    let ph = phase_figs(r);
    let Some(h) = phase(&ph, "healthy") else {
        return;
    };
    let _ = writeln!(
        s,
        "- fallback reads: one 512 KiB read at a time, each a chunk fetched on demand (one S3 GET, verified, \
         installed on both copies): median {} ms while both servers are healthy. With reads that slow, the hedge \
         floor (50 ms) is about one healthy read, so volume A's healthy phase was hedged too ({} hedges over the \
         rounds), which gives the second destination a latency average of its own; it served {} chunk reads in \
         that phase (background fetches included), the first {}.",
        fmt(h.median_ms, 1),
        h.hedges,
        h.second.0,
        h.first.0
    );
    if let (Some(sl), Some(k)) = (phase(&ph, "slowed"), phase(&ph, "killed")) {
        let _ = writeln!(
            s,
            "  - Volume A, slowed then killed: the first destination served {} and {} of its reads (errors {}), so \
             median {} / {} ms and p99 {} / {} ms: a destination once ranked second stays unread while the other \
             keeps a lower average (it is tried again only when the first choice errs or is hedged).",
            sl.first.0,
            k.first.0,
            k.first.1,
            fmt(sl.median_ms, 1),
            fmt(k.median_ms, 1),
            fmt(sl.p99_ms, 1),
            fmt(k.p99_ms, 1)
        );
    }
    if let Some(b) = phase(&ph, "slowed, new volume") {
        let _ = writeln!(
            s,
            "  - Volume B, restored while the first server is slowed: median {} ms, p99 {} ms, max {} ms; {}. A \
             new volume first reads the snapshot's manifest, from the destinations in order and without a hedge, \
             so its first read waits for the whole slowed manifest GET; its chunk reads are hedged ({} hedges, {} \
             answered by the second after the first) and the second destination soon ranks first.",
            fmt(b.median_ms, 1),
            fmt(b.p99_ms, 1),
            fmt(b.max_ms, 1),
            slow_reads(b),
            b.hedges,
            b.fallbacks
        );
    }
    if let Some(c) = phase(&ph, "killed, new volume") {
        let _ = writeln!(
            s,
            "  - Volume C, restored once the first server is dead: median {} ms, p99 {} ms, max {} ms; {}. Its \
             manifest read goes to the dead server first (its proxy accepts, then closes the connection), and the \
             S3 client retries that with back-off (at most 3 times within 10 s) before the set moves on ({} \
             errors of the first counted); the first destination then ranks last for 10 s after each error. {}\n",
            fmt(c.median_ms, 1),
            fmt(c.p99_ms, 1),
            fmt(c.max_ms, 1),
            slow_reads(c),
            c.first.1,
            if ph.iter().all(|p| p.data_ok) {
                "No read failed, and every read returned the snapshot's data."
            } else {
                "**Some reads returned wrong data: see the notes below.**"
            }
        );
    }
}

/// "2 of 192 reads over 100 ms, all a round's first (first reads: …)".
fn slow_reads(p: &PhaseFig) -> String {
    let firsts: Vec<String> = p.first_reads_ms.iter().map(|x| fmt(*x, 0)).collect();
    format!(
        "{} of {} reads took over 100 ms, {} of them a round's first read (first reads: {} ms)",
        p.over_100ms,
        p.reads,
        p.over_100ms_first,
        firsts.join(", ")
    )
}

/// What s3s-fs adds: a side check (curl on one keep-alive connection) and
/// the bound it sets on hydration from S3.
pub fn s3s_fs(s: &mut String, r: &LayoutResults) {
    let ph = phase_figs(r);
    let Some(h) = phase(&ph, "healthy") else {
        return;
    };
    let bound = 8.0 * 524_288.0 / (h.median_ms / 1e3) / 1e6;
    let single = case_figs(r)
        .into_iter()
        .find(|c| c.backend == "s3" && c.key == "single")
        .map(|c| c.restore.mb_s)
        .unwrap_or(f64::NAN);
    let _ = writeln!(
        s,
        "The test S3 server sets the S3 figures. On a reused (keep-alive) HTTP connection s3s-fs 0.14.1 answers \
         about half of the 512 KiB GETs some 40 ms late: a side check with curl on one connection measured 5-6 ms \
         and 48 ms alternating, where a new connection answers in 4-9 ms; that is the signature of Nagle's \
         algorithm meeting delayed ACKs (a server socket without TCP_NODELAY), a property of this test server, not \
         of Basalt. So one on-demand chunk read costs about {} ms here (the healthy median), and a hydration, which \
         keeps 8 chunk reads in flight per volume, is bounded near 8 × 512 KiB ÷ {} ms ≈ {} MB/s, whatever the \
         layout (measured from `single`: {} MB/s); `striped` adds servers but not reads in flight. A real S3 \
         service answers with its own latency (tens of ms per GET is common), which the same arithmetic turns into \
         a hydration rate.\n",
        fmt(h.median_ms, 0),
        fmt(h.median_ms, 0),
        fmt(bound, 0),
        fmt(single, 0)
    );
}
