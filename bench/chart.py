#!/usr/bin/env python3
"""Draws docs/bench/chart.png from docs/bench/results.json (written by basalt-bench compare)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, dst = sys.argv[1], sys.argv[2]
r = json.load(open(src))
labels = {k: v for k, v in r["targets"]}
keys = [k for k, _ in r["targets"]]
colors = {"qsd": "#7f7f7f", "basalt1": "#1f77b4", "basalt2": "#d62728"}
jobs = r["jobs"]
fig, axes = plt.subplots(1, len(jobs), figsize=(2.3 * len(jobs), 4.2))
if len(jobs) == 1:
    axes = [axes]
for ax, j in zip(axes, jobs):
    med = {k: v for k, v in j["median"]}
    bw = j["spec"]["bs"] >= 1 << 20
    vals = [med[k]["mb_s"] / 1000 if bw else med[k]["iops"] / 1000 for k in keys]
    bars = ax.bar(range(len(keys)), vals, color=[colors.get(k, "#333") for k in keys])
    base = vals[0] if vals and vals[0] > 0 else None
    for b, v in zip(bars, vals):
        txt = f"{v:.1f}" if bw else f"{v:.0f}"
        if base:
            txt += f"\n{100 * v / base:.0f}%"
        ax.annotate(txt, (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.set_title(j["job"], fontsize=9)
    ax.set_ylabel("GB/s" if bw else "kIOPS", fontsize=8)
    ax.set_xticks([])
    ax.tick_params(labelsize=7)
    ax.set_ylim(0, max(vals) * 1.3 if max(vals) > 0 else 1)
handles = [plt.Rectangle((0, 0), 1, 1, color=colors.get(k, "#333")) for k in keys]
fig.legend(handles, [labels[k] for k in keys], loc="lower center", ncol=len(keys), fontsize=8)
fig.suptitle("basalt-bench: host-side vhost-user-blk, median of rounds (ratio to qemu-storage-daemon)", fontsize=10)
fig.tight_layout(rect=(0, 0.07, 1, 0.95))
fig.savefig(dst, dpi=110)
print(f"wrote {dst}")
