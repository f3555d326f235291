//! The figure tables of layouts.md (also printed at the end of a run).

use std::fmt::Write as _;

use super::report::{case_figs, fmt, phase_figs, ratio, transfer_figs, TimedFig};
use super::LayoutResults;

fn cores(t: &TimedFig) -> String {
    let g: Vec<String> = t.busy_groups.iter().map(|x| fmt(*x, 2)).collect();
    format!("{} ({})", fmt(t.busy, 2), g.join(" / "))
}

/// A phase's name with the volume it read.
fn label(name: &str) -> String {
    match name.strip_suffix(", new volume") {
        Some("slowed") => "slowed (B, new)".into(),
        Some(n) => format!("{n} (C, new)"),
        None => format!("{name} (A)"),
    }
}

/// The figure tables (Markdown).
pub fn tables(r: &LayoutResults) -> String {
    let mut s = format!(
        "**1-2. Full snapshot and restore of {} MiB of data, per layout** (MB/s of data; ÷ single: MB/s against \
         `single` on the same kind of destination):\n\n",
        r.data >> 20
    );
    s.push_str(
        "| dest. | layout | snapshot s (server s) | snapshot MB/s (by server s) | ÷ single | cores busy (storage / s3s-fs / control / cli) | restore s (server s) | restore MB/s (by server s) | ÷ single | cores busy |\n\
         |---|---|---:|---:|---:|---|---:|---:|---:|---|\n",
    );
    for f in case_figs(r) {
        let _ = writeln!(
            s,
            "| {} | {} ({}) | {} ({}) | **{}** ({}) | {} | {} | {} ({}) | **{}** ({}) | {} | {} |",
            f.backend,
            f.key,
            f.destinations.join(", "),
            fmt(f.snap.secs, 2),
            fmt(f.snap.server_secs, 2),
            fmt(f.snap.mb_s, 0),
            fmt(f.snap.server_mb_s, 0),
            ratio(f.snap_ratio),
            cores(&f.snap),
            fmt(f.restore.secs, 2),
            fmt(f.restore.server_secs, 2),
            fmt(f.restore.mb_s, 0),
            fmt(f.restore.server_mb_s, 0),
            ratio(f.restore_ratio),
            cores(&f.restore)
        );
    }
    s.push_str(
        "\n**3. `snapshot import` and `snapshot export` of a raw image, one destination:**\n\n\
         | dest. | import s | import MB/s | cores busy | export s | export MB/s | cores busy | export = import |\n\
         |---|---:|---:|---|---:|---:|---|---|\n",
    );
    for t in transfer_figs(r) {
        let _ = writeln!(
            s,
            "| {} ({}) | {} | **{}** | {} | {} | **{}** | {} | {} |",
            t.backend,
            t.destination,
            fmt(t.import.secs, 2),
            fmt(t.import.mb_s, 0),
            cores(&t.import),
            fmt(t.export.secs, 2),
            fmt(t.export.mb_s, 0),
            cores(&t.export),
            t.identical
        );
    }
    let _ = write!(
        s,
        "\n**4. 512 KiB reads during a fallback** (`duplicate` over two S3 servers, the first slowed by {} ms \
         per forwarded read, then killed; A = one volume through all three conditions, B and C restored afresh):\n\n",
        r.delay_ms
    );
    s.push_str(
        "| phase | reads | median ms | p99 ms | max ms | medians per round, ms | hedges | fallbacks | served by first / second | errors of first | data ok |\n\
         |---|---:|---:|---:|---:|---|---:|---:|---|---:|---|\n",
    );
    for p in phase_figs(r) {
        let rm: Vec<String> = p.round_medians_ms.iter().map(|x| fmt(*x, 1)).collect();
        let _ = writeln!(
            s,
            "| {} | {} | **{}** | **{}** | {} | {} | {} | {} | {} / {} | {} | {} |",
            label(&p.name),
            p.reads,
            fmt(p.median_ms, 1),
            fmt(p.p99_ms, 1),
            fmt(p.max_ms, 1),
            rm.join(", "),
            p.hedges,
            p.fallbacks,
            p.first.0,
            p.second.0,
            p.first.1,
            if p.data_ok { "yes" } else { "**no**" }
        );
    }
    s
}
