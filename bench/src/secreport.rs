//! The report of `compare --security`: the data plane encrypted (the
//! default) against `--data-encryption off`, two copies each, in one run.
//! Issue 12's targets: 4 KiB jobs keep at least 90 % of the IOPS of the
//! clear data plane, 1 MiB jobs at least 75 % of its bandwidth.

use std::fmt::Write as _;

use crate::compare::{JobRuns, Results};

const ON: &str = "basalt2";
const OFF: &str = "basalt2-clear";

/// The least ratio (encrypted / clear) the issue accepts for a job.
fn target(j: &JobRuns) -> f64 {
    if j.spec.bs >= 1 << 20 {
        0.75
    } else {
        0.90
    }
}

/// Throughput of a job's medians: IOPS for small blocks, MB/s for 1 MiB.
fn figure(j: &JobRuns, key: &str) -> Option<f64> {
    let s = j.med(key)?;
    Some(if j.spec.bs >= 1 << 20 { s.mb_s } else { s.iops })
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Data-plane security: cost\n");
    let _ = writeln!(
        s,
        "`basalt-bench compare --security`: the same jobs against two copies with the \
         data plane encrypted (TLS 1.3 handshake, then AES-128-GCM records; the default) \
         and with `--data-encryption off` (the same handshake and grant checks, frames in \
         the clear), interleaved in one run, medians of the rounds.\n"
    );
    for (k, v) in &r.meta {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(
        s,
        "\n| job | encrypted | clear | ratio | target | p50 µs enc / clear | p99 µs enc / clear | backend CPU µs/IO enc / clear | storage CPU µs/IO enc / clear |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|---|---|---|");
    let mut failed = Vec::new();
    for j in &r.jobs {
        let (Some(on), Some(off), Some(a), Some(b)) =
            (figure(j, ON), figure(j, OFF), j.med(ON), j.med(OFF))
        else {
            continue;
        };
        let unit = if j.spec.bs >= 1 << 20 { "MB/s" } else { "IOPS" };
        let ratio = if off > 0.0 { on / off } else { 0.0 };
        let t = target(j);
        if ratio < t {
            failed.push(j.job.clone());
        }
        let _ = writeln!(
            s,
            "| {} | {on:.0} {unit} | {off:.0} {unit} | {ratio:.2} | ≥ {t:.2} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} / {:.1} | {:.1} / {:.1} |",
            j.job,
            a.lat_p50_us,
            b.lat_p50_us,
            a.lat_p99_us,
            b.lat_p99_us,
            a.frontend_proc_cpu_us,
            b.frontend_proc_cpu_us,
            a.storage_cpu_us,
            b.storage_cpu_us,
        );
    }
    let _ = writeln!(
        s,
        "\n{}",
        if failed.is_empty() {
            "Every job meets its target.".to_owned()
        } else {
            format!("Below target: {}.", failed.join(", "))
        }
    );
    s
}
