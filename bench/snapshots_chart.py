#!/usr/bin/env python3
"""Draws docs/bench/snapshots.png from docs/bench/snapshots.json (written by
`basalt-bench snapshots`): medians per destination of snapshot times,
IOPS during an upload, time to first read and cold reads."""
import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, dst = sys.argv[1], sys.argv[2]
r = json.load(open(src))
dests = r["dests"]
keys = [d["key"] for d in dests]
colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def last_rate_rounds(d):
    if not d["iops"]:
        return []
    rate = d["iops"][-1]["snapshot_rate_mib"]
    return [x for x in d["iops"] if x["snapshot_rate_mib"] == rate]


fig, axes = plt.subplots(1, 5, figsize=(17, 4.2))


def bars(ax, groups, values, unit, title, fmt="{:.0f}", target=None):
    """values[dest_index][group_index]"""
    n = len(keys)
    w = 0.8 / n
    for i, k in enumerate(keys):
        xs = [g + (i - (n - 1) / 2) * w for g in range(len(groups))]
        bs = ax.bar(xs, values[i], w, color=colors[i % len(colors)], label=k)
        for b, v in zip(bs, values[i]):
            if v == v:  # not NaN
                ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, v),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(unit, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    if target is not None:
        ax.axhline(target, color="#555", ls="--", lw=0.8)
    top = max([v for vs in values for v in vs if v == v] + [target or 0, 1e-9])
    ax.set_ylim(0, top * 1.25)


# 1. Snapshot throughput: full and incremental time.
vals = []
for d in dests:
    full = med([s["secs"] for s in d["full"]])
    inc = med([s["secs"] for s in d["incremental"]])
    vals.append([full, inc])
bars(axes[0], ["full", "incremental\n(1 % changed)"], vals, "seconds",
     f"snapshot time ({r['data'] >> 20} MiB data)", "{:.2f}")

# 2. IOPS during an upload, ratio to without.
vals = []
for d in dests:
    rounds = last_rate_rounds(d)
    vals.append([100 * med([x["ratio"] for x in rounds]),
                 100 * med([x["overlap"] for x in rounds])])
bars(axes[1], ["B ÷ A IOPS", "overlap"], vals, "%",
     "4k randwrite QD32 during an upload", target=80)

# 3. Time to first read vs a restore-first estimate (log scale).
ax = axes[2]
vals = []
for d in dests:
    ttfr = med([f["total_ms"] for f in d["first_read"]]) / 1e3
    hyd = med([h["mb_s"] for h in d["hydration"]])
    data = med([h["data_bytes"] for h in d["hydration"]])
    vals.append([ttfr, data / 1e6 / hyd if hyd else float("nan")])
bars(ax, ["first read\n(create+attach+read)", "restore first\n(est.)"], vals,
     "seconds", "usable volume from a snapshot", "{:.2f}", target=0.2)

# 4. Cold vs warm 4k random reads.
vals = []
for d in dests:
    vals.append([med([x["cold"]["iops"] for x in d["reads"]]) / 1e3,
                 med([x["warm"]["iops"] for x in d["reads"]]) / 1e3])
bars(axes[3], ["cold (restored)", "warm (source)"], vals, "kIOPS",
     "4k randread QD32", "{:.1f}")

# 5. Throughputs.
vals = []
for d in dests:
    vals.append([med([s["mb_s"] for s in d["full"]]),
                 med([h["mb_s"] for h in d["hydration"]])])
bars(axes[4], ["full snapshot\n(read ÷ time)", "hydration\n(unlimited)"], vals,
     "MB/s", "throughput")

handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i % len(colors)]) for i in range(len(keys))]
labels = [d["key"] + ": " + d["label"] for d in dests]
fig.legend(handles, labels, loc="lower center", ncol=len(keys), fontsize=8)
title = "basalt-bench snapshots: medians"
if r.get("quick"):
    title += " (--quick smoke run)"
fig.suptitle(title + "; dashed lines: targets", fontsize=10)
fig.tight_layout(rect=(0, 0.08, 1, 0.94))
fig.savefig(dst, dpi=110)
print(f"wrote {dst}")
