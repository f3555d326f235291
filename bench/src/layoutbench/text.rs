//! layouts.md: method, machine, tables, ratios, limits and raw rounds.

use std::fmt::Write as _;

use super::report::{case_figs, fmt, ratio, tables, transfer_figs, CaseFig, TimedFig, GROUPS};
use super::{case_key, LayoutResults};

fn fig<'a>(fs: &'a [CaseFig], backend: &str, key: &str) -> Option<&'a CaseFig> {
    fs.iter().find(|f| f.backend == backend && f.key == key)
}

/// The process group with the most CPU, as "storage 0.93".
fn top_group(busy: &[f64]) -> String {
    GROUPS
        .iter()
        .zip(busy)
        .filter(|(_, b)| b.is_finite())
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(g, b)| format!("{g} {b:.2}"))
        .unwrap_or_else(|| "–".into())
}

fn method(s: &mut String, r: &LayoutResults) {
    let (d, n) = (r.data >> 20, r.repeat);
    let _ = writeln!(
        s,
        "One cluster of real processes on loopback, started from the release binaries: `basalt-control`, two \
         `basalt-storage` servers (data on tmpfs) and one `basalt-node`; every volume has two copies. Destinations \
         are added at run time with `basalt destination add`: three directories on tmpfs (`shm1`-`shm3`, type `dir`) \
         and three S3 destinations (`s3a`-`s3c`, type `s3`, `--allow-http`, a credentials file), each on its own \
         `s3s-fs` server on loopback (objects under `/tmp`). A volume's layout is set with `basalt volume backup VOL \
         --layout L --destination …`. The control service runs with `--hydration-rate-mib 0` (unlimited) and polls \
         uploads and hydrations every {} ms; the benchmark polls the CLI every {} ms. Every figure is the median of \
         {n} rounds; the rounds run the layouts side by side (round 1 of every layout, then round 2, …).\n",
        r.poll_ms, r.poll_ms
    );
    let _ = writeln!(
        s,
        "1. **Snapshot throughput per layout.** Per round and layout, a new {d} MiB volume is created, attached and \
           filled with {d} MiB of fresh pseudo-random data (1 MiB writes, 8 in flight; incompressible, no block \
           repeats, so nothing deduplicates), its backup policy set (`single` to the first destination, `duplicate` \
           over 2, `striped` over 2 and 3, stripe 4 MiB), and a snapshot created: always full (a new volume has no \
           parent). Time = `snapshot create` called → COMPLETE seen by `snapshot show` (includes up to one poll \
           interval of each side); \"server\" = the primary's log, \"snapshot point taken\" → \"snapshot uploaded\". \
           MB/s = data bytes ÷ time. Cores busy = CPU seconds (user + system, `/proc/<pid>/stat`) of both storage \
           servers, every s3s-fs, the control service and the `basalt` CLI calls (polls included, from \
           `getrusage(RUSAGE_CHILDREN)`) ÷ wall time; the machine has 2.\n\
         2. **Restore and hydration.** The source volume is deleted; `volume create --from-snapshot` from that \
           snapshot, timed until `volume show` reports `hydration.complete` (\"server\" = the primary's \"hydration \
           complete\" line). MB/s = data bytes ÷ time. The restored volume and the snapshot are then deleted.\n\
         3. **Import and export.** A raw file of {d} MiB of fresh random data on tmpfs; `basalt snapshot import FILE \
           --name N --destination D` (the first destination of each kind, so `single`) timed to its end (the CLI \
           returns once the snapshot is COMPLETE), then `basalt snapshot export N OUT` to tmpfs, and the two files \
           compared byte for byte.\n\
         4. **Read latency during a fallback.** The control service is restarted with `--hydration-rate-mib {}`, so \
           reads are mostly on demand. Per round, two fresh s3s-fs servers: the first is reached through a TCP fault \
           proxy (`basalt_tests::faultproxy`), the second directly. A {d} MiB volume of random data is backed up \
           `duplicate` to both (the proxied one first), snapshotted and deleted. Reads are 512 KiB (one chunk each, \
           one at a time, through the attached volume's socket, each checked against the data), {} per phase, on a \
           block range of its own, from the top of the volume down (the background hydration walks up from block 0). \
           Volume A, restored at the start, is read through the three conditions in turn: **healthy**; **slowed**, \
           the proxy delaying every forwarded read by {} ms; **killed**, the first server's process killed (the \
           proxy then refuses at once). Because a volume ranks its destinations by their measured latency, volume A \
           meets the later conditions with the ranking its earlier reads made; so a new volume is also restored \
           while the first server is slowed (B) and once it is dead (C), and read on the same ranges: their ranking \
           starts afresh, the first destination first. Latency percentiles pool every read of a phase over the \
           rounds. Hedges, fallbacks, served and errors are the change, during the phase, of the read volume's \
           `hydration` report in `volume show` (`hedges`, `fallbacks`, `sources[]`), summed over the rounds; they \
           include its background fetches.\n",
        r.fallback_rate_mib, r.phase_blocks, r.delay_ms
    );
}

fn ratios(s: &mut String, r: &LayoutResults) {
    let fs = case_figs(r);
    for (b, _) in &r.backends {
        let (Some(one), Some(dup)) = (fig(&fs, b, "single"), fig(&fs, b, "duplicate/2")) else {
            continue;
        };
        let _ = writeln!(
            s,
            "- `{b}`: `duplicate` over 2 takes {} the time of `single` for a full snapshot ({} vs {} MB/s of data; \
             it uploads {} MiB instead of {}), and restores at {} the rate of `single` ({} vs {} MB/s).",
            ratio(dup.snap.secs / one.snap.secs),
            fmt(dup.snap.mb_s, 0),
            fmt(one.snap.mb_s, 0),
            fmt(dup.uploaded_mib, 0),
            fmt(one.uploaded_mib, 0),
            ratio(dup.restore_ratio),
            fmt(dup.restore.mb_s, 0),
            fmt(one.restore.mb_s, 0)
        );
        for n in [2, 3] {
            if let Some(st) = fig(&fs, b, &case_key("striped", n)) {
                let _ = writeln!(
                    s,
                    "- `{b}`: `striped` over {n}: snapshot {} of `single` ({} MB/s), restore {} ({} MB/s).",
                    ratio(st.snap_ratio),
                    fmt(st.snap.mb_s, 0),
                    ratio(st.restore_ratio),
                    fmt(st.restore.mb_s, 0)
                );
            }
        }
    }
    s.push('\n');
}

/// What cores busy says about a figure.
fn verdict(t: &TimedFig) -> &'static str {
    // Not s3s-fs: that group sums up to three servers.
    let top = GROUPS
        .iter()
        .zip(&t.busy_groups)
        .filter(|(g, x)| **g != "s3s-fs" && x.is_finite())
        .fold(0.0, |m, (_, &x)| f64::max(m, x));
    match t.busy {
        b if !b.is_finite() => "–",
        b if b >= 1.7 => "both cores busy: CPU-bound",
        b if b >= 1.3 => "most of both cores busy: largely CPU-bound",
        _ if top >= 0.85 => {
            "storage, control or the CLI near a full core: a serial step there may be the limit"
        }
        _ => "no core saturated: request latency and serial steps limit it",
    }
}

fn limits(s: &mut String, r: &LayoutResults) {
    let _ = writeln!(
        s,
        "Every process of the run (two storage servers, control, node, backends, up to three s3s-fs servers, the \
         CLI and the benchmark) shares 2 cores, so cores busy near 2 means a figure is bound by CPU; one process group near 1 core \
         points at a step that runs on one thread at a time. Where the cores are the limit, more \
         destinations add work to the same cores rather than parallel bandwidth: `duplicate` pays in CPU for every \
         copy, and `striped` can only win where one destination leaves the cores idle, waiting on request latency. \
         With S3 servers on other hosts and more cores, `striped` spreads the transfer and `duplicate` costs less \
         than double. On tmpfs a destination write is a memory copy into a file: the figure is Basalt's own \
         pipeline (read, SHA-256, zstd level 1, write; on restore read, verify, decompress, install on both copies). \
         Over S3, s3s-fs also parses HTTP, checks each request's signature and writes the object under `/tmp` \
         (ext4, page cache), on the same cores. The control service polls every {} ms, so short operations carry up \
         to one poll interval of each side (compare the \"server\" times). Groups: storage = both storage servers \
         (primary and mirror), s3s-fs = every S3 server, control, cli = the `basalt` calls, the benchmark's polls \
         included. Measured (medians):\n",
        r.poll_ms
    );
    for f in case_figs(r) {
        let _ = writeln!(
            s,
            "- `{}` {}: snapshot {} cores (top: {}): {}; restore {} cores (top: {}): {}",
            f.backend,
            f.key,
            fmt(f.snap.busy, 2),
            top_group(&f.snap.busy_groups),
            verdict(&f.snap),
            fmt(f.restore.busy, 2),
            top_group(&f.restore.busy_groups),
            verdict(&f.restore)
        );
    }
    for t in transfer_figs(r) {
        let _ = writeln!(
            s,
            "- `{}` import {} cores (top: {}): {}; export {} cores (top: {}): {}. The CLI sends or fetches 4 blocks \
             at a time through the control service, which writes or reads the destination",
            t.backend,
            fmt(t.import.busy, 2),
            top_group(&t.import.busy_groups),
            verdict(&t.import),
            fmt(t.export.busy, 2),
            top_group(&t.export.busy_groups),
            verdict(&t.export)
        );
    }
    super::notes::fallback(s, r);
    super::notes::s3s_fs(s, r);
}

/// `layouts.md`.
pub fn markdown(r: &LayoutResults) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Backup layouts benchmark\n");
    let _ = writeln!(
        s,
        "Generated by `basalt-bench layouts` (`cargo build --release --bins && target/release/basalt-bench layouts{}`); \
         rewrite this page from the raw results with `basalt-bench layouts-report --results docs/bench/layouts.json`. \
         Raw per-round results: [`layouts.json`](layouts.json).{}\n",
        if r.quick { " --quick" } else { "" },
        if r.quick {
            " **This is a `--quick` smoke run: its figures are not the benchmark's.**"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "![layout figures](layouts.png)\n\n## Method\n");
    method(&mut s, r);
    let _ = writeln!(s, "## Machine\n");
    s.push_str("| | |\n|---|---|\n");
    for (k, v) in &r.meta {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(
        s,
        "| data per volume / image | {} MiB |\n| rounds (median of) | {} |\n| whole run | {:.0} s |\n",
        r.data >> 20,
        r.repeat,
        r.total_secs
    );
    let _ = writeln!(s, "## Figures\n");
    for (k, l) in &r.backends {
        let _ = writeln!(s, "- `{k}`: {l}");
    }
    s.push('\n');
    s.push_str(&tables(r));
    let _ = writeln!(s, "\n## Ratios\n");
    ratios(&mut s, r);
    super::notes::spread(&mut s, r);
    let _ = writeln!(s, "## What limits each figure\n");
    limits(&mut s, r);
    if !r.notes.is_empty() {
        let _ = writeln!(s, "## Notes from the run\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
        s.push('\n');
    }
    rounds(&mut s, r);
    s
}

fn rounds(s: &mut String, r: &LayoutResults) {
    let _ = writeln!(s, "## Per round\n");
    s.push_str("| dest. | layout | round | fill MB/s | snapshot s | server s | MB/s | uploaded MiB | restore s | server s | MB/s | fetched MiB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for c in &r.cases {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.backend,
            case_key(&c.layout, c.destinations.len()),
            c.round,
            fmt(c.fill_mb_s, 0),
            fmt(c.snap.secs, 2),
            fmt(c.snap.server_secs.unwrap_or(f64::NAN), 2),
            fmt(c.snap.mb_s, 0),
            fmt(c.bytes_uploaded as f64 / (1 << 20) as f64, 0),
            fmt(c.restore.secs, 2),
            fmt(c.restore.server_secs.unwrap_or(f64::NAN), 2),
            fmt(c.restore.mb_s, 0),
            fmt(c.bytes_fetched as f64 / (1 << 20) as f64, 0)
        );
    }
    s.push_str("\n| dest. | round | import s | MB/s | export s | MB/s | blocks sent | identical |\n|---|---:|---:|---:|---:|---:|---:|---|\n");
    for t in &r.transfers {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            t.backend,
            t.round,
            fmt(t.import.secs, 2),
            fmt(t.import.mb_s, 0),
            fmt(t.export.secs, 2),
            fmt(t.export.mb_s, 0),
            t.blocks_sent,
            t.identical
        );
    }
    s.push_str("\n| fallback round | snapshot s | phase | blocks | blocks present before | median ms | max ms | hedges / fallbacks at the end |\n|---:|---:|---|---|---:|---:|---:|---|\n");
    for f in &r.fallback {
        for p in &f.phases {
            let mut v = p.lat_ms.clone();
            v.sort_by(f64::total_cmp);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {}-{} | {} | {} | {} | {} / {} |",
                f.round,
                fmt(f.snap.secs, 2),
                p.name,
                p.first_block,
                p.first_block + p.blocks - 1,
                p.blocks_present_before,
                fmt(crate::snapbench::report::median(v.clone()), 1),
                fmt(v.last().copied().unwrap_or(f64::NAN), 1),
                p.hydration["hedges"],
                p.hydration["fallbacks"]
            );
        }
    }
}
