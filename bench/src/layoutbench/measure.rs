//! Items 1-3 of `basalt-bench layouts`: a full snapshot per layout and its
//! restore; import and export of a raw image.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::setup::{self, seed_of, u, Backend, Watch, MIB};
use super::{case_key, Case, CaseRound, LayoutOpts, Timed, TransferRound};
use crate::snapbench::cluster::Cluster;
use crate::snapbench::io::fill_random;
use crate::snapbench::logs;
use crate::snapbench::steps::wait_snapshot;

fn timed(secs: f64, server_secs: Option<f64>, bytes: u64, cpu_s: Vec<(String, f64)>) -> Timed {
    Timed {
        secs,
        server_secs,
        mb_s: bytes as f64 / secs / 1e6,
        cpu_s,
    }
}

/// One round of items 1 and 2 for one layout: a new volume of random data,
/// its policy set, a full snapshot timed from `snapshot create` to COMPLETE;
/// the source deleted; a volume created from the snapshot, timed until
/// hydrated; then the restored volume and the snapshot deleted.
pub fn case_round(
    cl: &Cluster,
    o: &LayoutOpts,
    b: &Backend,
    case: Case,
    round: usize,
    w: &Watch,
) -> Result<CaseRound> {
    let tag = format!("{}-{}{}-r{}", b.key, case.layout, case.n, round + 1);
    let (vol, snap, rvol) = (
        format!("src-{tag}"),
        format!("snap-{tag}"),
        format!("rst-{tag}"),
    );
    let dests = &b.dests[..case.n];
    let (a, fill_mb_s) = setup::fill_volume(cl, &vol, o.data, seed_of(&tag))?;
    let mut args = vec!["volume", "backup", &vol, "--layout", case.layout];
    for d in dests {
        args.extend(["--destination", d.as_str()]);
    }
    cl.cli_json(&args)?;

    let m = w.mark();
    let t0 = Instant::now();
    cl.cli_json(&["snapshot", "create", &vol, "--name", &snap])?;
    let s = wait_snapshot(cl, &snap)?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = w.since(&m);
    let p = &s["progress"];
    let id = u(&s["id"]);
    let data_bytes = match u(&p["data_bytes"]) {
        0 => o.data,
        n => n,
    };
    let server = logs::upload_secs(&cl.server_log(&a.primary)?, id);
    cl.cli_json(&["volume", "detach", &vol])?;
    cl.cli_json(&["volume", "delete", &vol])?;
    let mut r = CaseRound {
        backend: b.key.to_owned(),
        layout: case.layout.to_owned(),
        destinations: dests.to_vec(),
        round: round + 1,
        snapshot: snap.clone(),
        snapshot_id: id,
        data_bytes,
        fill_mb_s,
        snap: timed(secs, server, data_bytes, cpu),
        change_source: p["change_source"].as_str().unwrap_or("").to_owned(),
        bytes_read: u(&p["bytes_read"]),
        bytes_uploaded: u(&p["bytes_uploaded"]),
        chunks_new: u(&p["chunks_new"]),
        chunks_reused: u(&p["chunks_reused"]),
        ..Default::default()
    };
    if s["layout"].as_str().is_some_and(|l| l != case.layout) {
        eprintln!(
            "warning: {snap} has layout {} (policy {})",
            s["layout"], case.layout
        );
    }

    let m = w.mark();
    let t0 = Instant::now();
    let v = cl.cli_json(&["volume", "create", &rvol, "--from-snapshot", &snap])?;
    let rid = u(&v["id"]);
    let rprimary = v["primary"]["server_id"]
        .as_str()
        .context("restored volume has no primary")?
        .to_owned();
    let (hydration, fetched) = setup::wait_hydrated(cl, &rvol)?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = w.since(&m);
    let server = logs::hydration_secs(&cl.server_log(&rprimary)?, rid);
    r.restore = timed(secs, server, data_bytes, cpu);
    r.bytes_fetched = fetched;
    r.hydration = hydration;
    cl.cli_json(&["volume", "delete", &rvol])?;
    cl.cli_json(&["snapshot", "delete", &snap])?;
    eprintln!(
        "{} {}: fill {:.0} MB/s; snapshot {:.2} s (server {:.2}) {:.0} MB/s, uploaded {:.0} MB; restore {:.2} s (server {:.2}) {:.0} MB/s",
        b.key,
        case_key(case.layout, case.n),
        r.fill_mb_s,
        r.snap.secs,
        r.snap.server_secs.unwrap_or(f64::NAN),
        r.snap.mb_s,
        r.bytes_uploaded as f64 / 1e6,
        r.restore.secs,
        r.restore.server_secs.unwrap_or(f64::NAN),
        r.restore.mb_s
    );
    Ok(r)
}

/// Anything unexpected about a round, as notes for the report.
pub fn check_case(r: &CaseRound) -> Vec<String> {
    let mut n = Vec::new();
    let key = case_key(&r.layout, r.destinations.len());
    if r.change_source != "FULL" || r.chunks_reused != 0 {
        n.push(format!(
            "{} {key} round {}: change source {}, {} chunks reused (expected FULL, 0)",
            r.backend, r.round, r.change_source, r.chunks_reused
        ));
    }
    if r.bytes_fetched < r.data_bytes {
        n.push(format!(
            "{} {key} round {}: the restore fetched {} bytes of {} (the hydration report may have gone before the last poll)",
            r.backend, r.round, r.bytes_fetched, r.data_bytes
        ));
    }
    n
}

/// Writes `len` bytes of fresh random data to `path`.
fn write_image(path: &Path, len: u64, seed: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| path.display().to_string())?,
    );
    let mut buf = vec![0u8; MIB as usize];
    let mut state = seed;
    for _ in 0..len / MIB {
        fill_random(&mut buf, &mut state);
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(())
}

fn same_files(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Item 3, one round: `snapshot import` of a raw file of random data into
/// the first destination, `snapshot export` back, compared byte for byte.
pub fn transfer_round(
    cl: &Cluster,
    o: &LayoutOpts,
    b: &Backend,
    round: usize,
    scratch: &Path,
    w: &Watch,
) -> Result<TransferRound> {
    let name = format!("imp-{}-r{}", b.key, round + 1);
    let (img, out) = (
        scratch.join(format!("{name}.raw")),
        scratch.join(format!("{name}.out")),
    );
    write_image(&img, o.data, seed_of(&name))?;
    let path = |p: &Path| p.to_str().map(str::to_owned).context("path is not UTF-8");
    let (img_s, out_s) = (path(&img)?, path(&out)?);
    let dest = b.dests[0].clone();

    let m = w.mark();
    let t0 = Instant::now();
    let j = cl.cli_json(&[
        "snapshot",
        "import",
        &img_s,
        "--name",
        &name,
        "--destination",
        &dest,
    ])?;
    if j["state"] != "COMPLETE" {
        wait_snapshot(cl, &name)?;
    }
    let import = timed(t0.elapsed().as_secs_f64(), None, o.data, w.since(&m));

    let m = w.mark();
    let t0 = Instant::now();
    cl.cli_json(&["snapshot", "export", &name, &out_s])?;
    let export = timed(t0.elapsed().as_secs_f64(), None, o.data, w.since(&m));
    let identical = same_files(&img, &out)?;
    cl.cli_json(&["snapshot", "delete", &name])?;
    let _ = std::fs::remove_file(&img);
    let _ = std::fs::remove_file(&out);
    eprintln!(
        "{}: import {:.2} s {:.0} MB/s; export {:.2} s {:.0} MB/s; identical: {identical}",
        b.key, import.secs, import.mb_s, export.secs, export.mb_s
    );
    Ok(TransferRound {
        backend: b.key.to_owned(),
        destination: dest,
        round: round + 1,
        bytes: o.data,
        import,
        export,
        blocks_sent: u(&j["blocks_sent"]),
        identical,
    })
}
