//! layouts.png: the medians as bar charts, drawn by matplotlib (as
//! `snapshots_chart.py` draws snapshots.png), from a summary on stdin.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;

use super::report::{case_figs, phase_figs, transfer_figs};
use super::LayoutResults;

const SCRIPT: &str = r##"
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

s = json.load(sys.stdin)
dst = sys.argv[1]
colors = {"shm": "#1f77b4", "s3": "#d62728"}
backends = [b for b, _ in s["backends"]]
fig, axes = plt.subplots(1, 4, figsize=(17, 4.4))


def bars(ax, groups, values, unit, title, fmt="{:.0f}", log=False):
    """values[backend_index][group_index]"""
    n = len(values)
    w = 0.8 / max(n, 1)
    for i, (k, vs) in enumerate(values):
        xs = [g + (i - (n - 1) / 2) * w for g in range(len(groups))]
        bs = ax.bar(xs, vs, w, color=colors.get(k, "#2ca02c"), label=k)
        for b, v in zip(bs, vs):
            if v == v and v is not None:
                ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, v),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(unit, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    if log:
        ax.set_yscale("log")
    else:
        top = max([v for _, vs in values for v in vs if v == v] + [1e-9])
        ax.set_ylim(0, top * 1.2)
    ax.legend(fontsize=7)


def nan(x):
    return float("nan") if x is None else x


keys = []
for c in s["cases"]:
    if c["key"] not in keys:
        keys.append(c["key"])


def by_case(field):
    out = []
    for b in backends:
        m = {c["key"]: nan(c[field]) for c in s["cases"] if c["backend"] == b}
        out.append((b, [m.get(k, float("nan")) for k in keys]))
    return out


bars(axes[0], keys, by_case("snap_mb_s"), "MB/s of data",
     f"full snapshot ({s['data_mib']} MiB), create → COMPLETE")
bars(axes[1], keys, by_case("restore_mb_s"), "MB/s of data",
     "restore: create --from-snapshot → hydrated")
vals = [(t["backend"], [nan(t["import_mb_s"]), nan(t["export_mb_s"])]) for t in s["transfers"]]
bars(axes[2], ["import", "export"], vals, "MB/s", "snapshot import / export (single)")
ph = s["phases"]
vals = [("median", [nan(p["median_ms"]) for p in ph]), ("p99", [nan(p["p99_ms"]) for p in ph])]
colors.update({"median": "#2ca02c", "p99": "#9467bd"})
bars(axes[3], [p["name"].replace(", ", ",\n") for p in ph], vals, "ms (log)",
     f"512 KiB reads, duplicate/2 S3: 1st +{s['delay_ms']} ms/read, then killed",
     "{:.1f}", log=True)
title = "basalt-bench layouts: medians of %d round(s)" % s["repeat"]
if s["quick"]:
    title += " (--quick smoke run)"
fig.suptitle(title, fontsize=10)
fig.tight_layout(rect=(0, 0, 1, 0.93))
fig.savefig(dst, dpi=110)
print(f"wrote {dst}")
"##;

/// Draws `png`; warns (and carries on) when python3 or matplotlib is missing.
pub fn draw(r: &LayoutResults, png: &Path) {
    let summary = json!({
        "backends": r.backends,
        "data_mib": r.data >> 20,
        "repeat": r.repeat,
        "quick": r.quick,
        "delay_ms": r.delay_ms,
        "cases": case_figs(r).iter().map(|c| json!({
            "backend": c.backend, "key": c.key,
            "snap_mb_s": c.snap.mb_s, "restore_mb_s": c.restore.mb_s,
        })).collect::<Vec<_>>(),
        "transfers": transfer_figs(r).iter().map(|t| json!({
            "backend": t.backend, "import_mb_s": t.import.mb_s, "export_mb_s": t.export.mb_s,
        })).collect::<Vec<_>>(),
        "phases": phase_figs(r).iter().map(|p| json!({
            "name": p.name, "median_ms": p.median_ms, "p99_ms": p.p99_ms,
        })).collect::<Vec<_>>(),
    });
    let run = || -> std::io::Result<std::process::ExitStatus> {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(png)
            .stdin(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(summary.to_string().as_bytes())?;
        }
        child.wait()
    };
    match run() {
        Ok(s) if s.success() => {}
        other => eprintln!(
            "warning: {} was not drawn ({other:?}); it needs python3 with matplotlib (pip install matplotlib), then run basalt-bench layouts-report",
            png.display()
        ),
    }
}
