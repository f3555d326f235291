//! The `layouts` and `layouts-report` subcommands.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{chart, report, run, LayoutOpts, LayoutResults};

#[derive(clap::Args)]
pub struct LayoutsArgs {
    /// Directory for layouts.json, layouts.md and layouts.png (default:
    /// docs/bench, or target/layoutbench-quick with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Random data per volume and image, a multiple of 1 MiB (default 256M,
    /// 32M with --quick).
    #[arg(long, value_parser = crate::job::parse_size)]
    data: Option<u64>,
    /// Smoke run: 32 MiB of data, one round.
    #[arg(long)]
    quick: bool,
    /// Rounds of each measurement (default 3, 1 with --quick).
    #[arg(long)]
    repeat: Option<usize>,
    /// 512 KiB blocks read in each phase of the fallback test (default 64,
    /// 16 with --quick; at most a quarter of the data).
    #[arg(long)]
    phase_blocks: Option<usize>,
}

/// The 1, 5 and 15 minute load averages (other work on the machine).
pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `basalt-bench layouts`.
pub fn main_run(a: LayoutsArgs) -> Result<()> {
    let quick = a.quick;
    let data = a.data.unwrap_or(if quick { 32 << 20 } else { 256 << 20 });
    if data < (8 << 20) || data % (1 << 20) != 0 {
        bail!("--data must be a multiple of 1 MiB, at least 8 MiB");
    }
    let blocks = (data >> 19) as usize;
    let o = LayoutOpts {
        out: a.out.unwrap_or_else(|| {
            PathBuf::from(if quick {
                "target/layoutbench-quick"
            } else {
                "docs/bench"
            })
        }),
        data,
        repeat: a.repeat.unwrap_or(if quick { 1 } else { 3 }).max(1),
        quick,
        phase_blocks: a
            .phase_blocks
            .unwrap_or(if quick { 16 } else { 64 })
            .clamp(1, blocks / 4),
    };
    let r = run(&o)?;
    std::fs::create_dir_all(&o.out)?;
    write(&o.out, &r, true)
}

/// `basalt-bench layouts-report`: layouts.md and the chart from a layouts.json.
pub fn main_report(results: &Path) -> Result<()> {
    let r: LayoutResults = serde_json::from_slice(
        &std::fs::read(results).with_context(|| results.display().to_string())?,
    )?;
    write(results.parent().unwrap_or(Path::new(".")), &r, false)
}

/// Writes layouts.json (when `json`), layouts.md and layouts.png.
fn write(dir: &Path, r: &LayoutResults, json: bool) -> Result<()> {
    if json {
        std::fs::write(
            dir.join("layouts.json"),
            serde_json::to_string_pretty(r)? + "\n",
        )?;
    }
    std::fs::write(dir.join("layouts.md"), report::markdown(r))?;
    println!("{}", report::tables(r));
    chart::draw(r, &dir.join("layouts.png"));
    eprintln!("wrote {}", dir.join("layouts.md").display());
    Ok(())
}
