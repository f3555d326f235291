//! Tables for people, JSON for scripts.

use basalt_proto::control as pb;
use serde_json::{json, Value};

use crate::progress::percent;
use crate::size::format_size;

pub fn volume_json(v: &pb::Volume) -> Value {
    let copy = |c: &pb::CopyRef| json!({"server_id": c.server_id, "address": c.address});
    json!({
        "id": v.id,
        "name": v.name,
        "tenant": v.tenant,
        "size_bytes": v.size_bytes,
        "state": v.state,
        "copies": v.copies,
        "primary": v.primary.as_ref().map(copy),
        "mirrors": v.mirrors.iter().map(copy).collect::<Vec<_>>(),
        "epoch": v.epoch,
        "created_at": v.created_at,
        "attachment": v.attachment.as_ref().map(|a| json!({
            "node_id": a.node_id,
            "read_only": a.read_only,
            "state": a.state,
            "socket_path": a.socket_path,
            "qemu_args": a.qemu_args,
            "cloud_hypervisor_args": a.cloud_hypervisor_args,
            "generation": a.generation,
        })),
        "source_snapshot_id": v.source_snapshot_id,
        "hydration": v.hydration.as_ref().map(hydration_json),
        "schedule": crate::schedule::schedule_json(v.schedule.as_ref()),
        "backup_policy": v.backup_policy.as_ref().map(|p| json!({
            "layout": p.layout,
            "destinations": p.destinations,
            "stripe_mib": p.stripe_mib,
        })),
    })
}

pub fn hydration_json(h: &pb::Hydration) -> Value {
    json!({
        "snapshot_id": h.snapshot_id,
        "blocks_total": h.blocks_total,
        "blocks_present": h.blocks_present,
        "bytes_fetched": h.bytes_fetched,
        "complete": h.complete,
        "error": h.error,
        "fallbacks": h.fallbacks,
        "hedges": h.hedges,
        "sources": h.sources.iter().map(|r| json!({
            "destination": r.destination,
            "latency_micros": r.latency_micros,
            "reads": r.reads,
            "errors": r.errors,
            "corrupt": r.corrupt,
            "repaired": r.repaired,
            "served": r.served,
        })).collect::<Vec<_>>(),
    })
}

pub fn snapshot_json(s: &pb::Snapshot) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "tenant": s.tenant,
        "volume_id": s.volume_id,
        "volume_name": s.volume_name,
        "state": s.state,
        "failure": s.failure,
        "destination": s.destination,
        "destinations": s.destinations,
        "layout": s.layout,
        "copies": s.copies,
        "copying": s.copying,
        "copy_error": s.copy_error,
        "scheduled": s.scheduled,
        "parent_id": s.parent_id,
        "size_bytes": s.size_bytes,
        "created_at": s.created_at,
        "completed_at": s.completed_at,
        "progress": s.progress.as_ref().map(|p| json!({
            "blocks_total": p.blocks_total,
            "blocks_done": p.blocks_done,
            "bytes_read": p.bytes_read,
            "bytes_uploaded": p.bytes_uploaded,
            "chunks_new": p.chunks_new,
            "chunks_reused": p.chunks_reused,
            "data_bytes": p.data_bytes,
            "change_source": p.change_source,
            "cow_blocks": p.cow_blocks,
            "point_micros": p.point_micros,
        })),
    })
}

pub fn server_json(s: &pb::StorageServer) -> Value {
    json!({
        "server_id": s.server_id, "state": s.state, "zone": s.zone,
        "data_address": s.data_address, "admin_address": s.admin_address,
        "capacity_bytes": s.capacity_bytes, "free_bytes": s.free_bytes,
        "allocated_bytes": s.allocated_bytes, "copies": s.copies, "last_heartbeat": s.last_heartbeat,
    })
}

pub fn node_json(n: &pb::Node) -> Value {
    json!({
        "node_id": n.node_id, "address": n.address, "state": n.state, "last_heartbeat": n.last_heartbeat,
        "attachments": n.attachments.iter().map(|a| json!({
            "volume_id": a.volume_id, "state": a.state, "backend_pid": a.backend_pid,
            "restarts": a.restarts, "reads": a.reads, "writes": a.writes, "errors": a.errors,
        })).collect::<Vec<_>>(),
    })
}

/// Renders rows as an aligned table under `headers`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

pub fn volume_row(v: &pb::Volume) -> Vec<String> {
    vec![
        v.id.to_string(),
        v.name.clone(),
        format_size(v.size_bytes),
        v.state.clone(),
        v.primary
            .as_ref()
            .map(|p| p.server_id.clone())
            .unwrap_or_default(),
        v.mirrors
            .iter()
            .map(|m| m.server_id.as_str())
            .collect::<Vec<_>>()
            .join(","),
        v.epoch.to_string(),
        v.attachment
            .as_ref()
            .map(|a| a.node_id.clone())
            .unwrap_or_else(|| "-".into()),
    ]
}

pub const VOLUME_HEADERS: [&str; 8] = [
    "ID", "NAME", "SIZE", "STATE", "PRIMARY", "MIRRORS", "EPOCH", "NODE",
];

pub fn volume_detail(v: &pb::Volume) -> String {
    let mut s = table(&VOLUME_HEADERS, &[volume_row(v)]);
    if let Some(a) = &v.attachment {
        s.push_str(&format!(
            "\n\nattached to {} ({}{})\nsocket: {}\nQEMU flags:\n  {}\n  (once per VM: -object memory-backend-memfd,id=mem,size=<RAM>,share=on -numa node,memdev=mem)\nCloud Hypervisor flags:\n  {}\n  (once per VM: --memory size=<RAM>,shared=on)",
            a.node_id,
            a.state,
            if a.read_only { ", read-only" } else { "" },
            a.socket_path,
            a.qemu_args.join(" "),
            a.cloud_hypervisor_args.join(" ")
        ));
    }
    if let Some(p) = &v.backup_policy {
        s.push_str("\n\n");
        s.push_str(&crate::destination::policy_line(p));
    }
    if let Some(h) = &v.hydration {
        s.push_str("\n\n");
        s.push_str(&hydration_line(h));
        for r in &h.sources {
            s.push_str(&format!(
                "\n  from {}: {} chunks served, {} reads ({:.1} ms avg), {} errors, {} corrupt ({} repaired)",
                r.destination,
                r.served,
                r.reads,
                r.latency_micros as f64 / 1000.0,
                r.errors,
                r.corrupt,
                r.repaired
            ));
        }
        if h.fallbacks + h.hedges > 0 {
            s.push_str(&format!(
                "\n  {} chunks served by a fallback destination, {} hedged reads",
                h.fallbacks, h.hedges
            ));
        }
    } else if v.source_snapshot_id != 0 {
        s.push_str(&format!(
            "\n\ncreated from snapshot {}",
            v.source_snapshot_id
        ));
    }
    s
}

/// E.g. `hydrating from snapshot 4: 36% (1515/4096 blocks, 120 MiB fetched)`.
pub fn hydration_line(h: &pb::Hydration) -> String {
    let counts = format!(
        "{}/{} blocks, {} fetched",
        h.blocks_present,
        h.blocks_total,
        format_size(h.bytes_fetched)
    );
    if h.complete {
        return format!("hydrated from snapshot {} ({counts})", h.snapshot_id);
    }
    let pct = percent(h.blocks_present, h.blocks_total)
        .map(|p| format!("{p}% "))
        .unwrap_or_default();
    let mut line = format!("hydrating from snapshot {}: {pct}({counts})", h.snapshot_id);
    if !h.error.is_empty() {
        line.push_str(&format!("; retrying after: {}", h.error));
    }
    line
}

pub const SNAPSHOT_HEADERS: [&str; 9] = [
    "ID", "NAME", "VOLUME", "STATE", "PROGRESS", "SIZE", "STORED", "PARENT", "CREATED",
];

/// Percent of the upload done: 100 once COMPLETE, none while the blocks to
/// read are not known.
pub fn snapshot_percent(s: &pb::Snapshot) -> Option<u64> {
    if s.state == "COMPLETE" {
        return Some(100);
    }
    s.progress
        .as_ref()
        .and_then(|p| percent(p.blocks_done, p.blocks_total))
}

fn or_dash(n: u64) -> String {
    if n == 0 {
        "-".into()
    } else {
        n.to_string()
    }
}

pub fn snapshot_row(s: &pb::Snapshot) -> Vec<String> {
    vec![
        s.id.to_string(),
        s.name.clone(),
        match (s.volume_id, s.volume_name.is_empty()) {
            (0, _) => "-".into(),
            (id, true) => id.to_string(),
            _ => s.volume_name.clone(),
        },
        s.state.clone(),
        snapshot_percent(s)
            .map(|p| format!("{p}%"))
            .unwrap_or_else(|| "-".into()),
        format_size(s.size_bytes),
        s.progress
            .as_ref()
            .map(|p| format_size(p.bytes_uploaded))
            .unwrap_or_else(|| "-".into()),
        or_dash(s.parent_id),
        format_time(s.created_at),
    ]
}

pub fn snapshot_detail(s: &pb::Snapshot) -> String {
    let mut out = table(&SNAPSHOT_HEADERS, &[snapshot_row(s)]);
    let mut f: Vec<(&str, String)> = vec![
        ("tenant", s.tenant.clone()),
        (
            "volume",
            if s.volume_id == 0 {
                "none (made from blocks: StartSnapshot, snapshot import)".into()
            } else {
                format!("{} (id {})", s.volume_name, s.volume_id)
            },
        ),
        (
            "destination",
            match s.layout.as_str() {
                "" | "single" => s.destination.clone(),
                l => format!("{} ({l})", s.destinations.join(", ")),
            },
        ),
        (
            "copies",
            match (s.copies.is_empty(), s.copying.is_empty()) {
                (true, true) => "-".into(),
                _ if s.copying.is_empty() => s.copies.join(", "),
                _ => format!(
                    "{} (copying to {}{})",
                    s.copies.join(", "),
                    s.copying.join(", "),
                    if s.copy_error.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", s.copy_error)
                    }
                ),
            },
        ),
        (
            "parent",
            if s.parent_id == 0 {
                "none (full snapshot)".into()
            } else {
                s.parent_id.to_string()
            },
        ),
        ("created", format_time(s.created_at)),
        ("completed", format_time(s.completed_at)),
    ];
    if let Some(p) = &s.progress {
        let pct = percent(p.blocks_done, p.blocks_total)
            .map(|x| format!("{x}% "))
            .unwrap_or_default();
        f.extend([
            (
                "progress",
                format!("{pct}({}/{} blocks)", p.blocks_done, p.blocks_total),
            ),
            ("read", format_size(p.bytes_read)),
            (
                "uploaded",
                format!(
                    "{} ({} new chunks, {} reused)",
                    format_size(p.bytes_uploaded),
                    p.chunks_new,
                    p.chunks_reused
                ),
            ),
            ("data", format_size(p.data_bytes)),
            ("change source", or_dash_str(&p.change_source)),
            ("cow blocks", p.cow_blocks.to_string()),
            ("point held writes", format_micros(p.point_micros)),
        ]);
    }
    if !s.failure.is_empty() {
        f.push(("failure", s.failure.clone()));
    }
    out.push_str("\n\n");
    out.push_str(&fields(&f));
    out
}

fn or_dash_str(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// `key:  value` lines, values aligned.
pub fn fields(f: &[(&str, String)]) -> String {
    let w = f.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    f.iter()
        .map(|(k, v)| format!("{:<w$} {v}", format!("{k}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Microseconds for people: `850 µs`, `12.5 ms`, `2.0 s`.
pub fn format_micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{:.1} s", us as f64 / 1e6)
    }
}

/// Unix seconds as UTC RFC 3339 (`2023-11-14T22:13:20Z`); `-` for 0 (unset).
pub fn format_time(unix: i64) -> String {
    if unix == 0 {
        return "-".into();
    }
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Days to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(state: &str, done: u64, total: u64) -> pb::Snapshot {
        pb::Snapshot {
            id: 7,
            name: "s1".into(),
            tenant: "default".into(),
            volume_id: 3,
            volume_name: "db1".into(),
            state: state.into(),
            destination: "local".into(),
            size_bytes: 2 << 30,
            created_at: 1_700_000_000,
            progress: Some(pb::SnapshotProgress {
                blocks_total: total,
                blocks_done: done,
                bytes_uploaded: 300 << 20,
                change_source: "FULL".into(),
                point_micros: 120,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn times() {
        assert_eq!(format_time(0), "-");
        assert_eq!(format_time(1), "1970-01-01T00:00:01Z");
        assert_eq!(format_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(format_time(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn micros() {
        assert_eq!(format_micros(0), "0 µs");
        assert_eq!(format_micros(850), "850 µs");
        assert_eq!(format_micros(12_500), "12.5 ms");
        assert_eq!(format_micros(2_000_000), "2.0 s");
    }

    #[test]
    fn snapshot_rows() {
        let r = snapshot_row(&snap("CREATING", 1515, 4096));
        assert_eq!(
            r,
            [
                "7",
                "s1",
                "db1",
                "CREATING",
                "36%",
                "2 GiB",
                "300 MiB",
                "-",
                "2023-11-14T22:13:20Z"
            ]
        );
        // Blocks to read not known yet.
        assert_eq!(snapshot_row(&snap("CREATING", 0, 0))[4], "-");
        // Nothing to read (an empty volume) still ends at 100 %.
        assert_eq!(snapshot_row(&snap("COMPLETE", 0, 0))[4], "100%");
        let mut s = snap("FAILED", 10, 100);
        s.progress = None;
        s.parent_id = 5;
        s.volume_name.clear();
        let r = snapshot_row(&s);
        assert_eq!((&*r[2], &*r[4], &*r[6], &*r[7]), ("3", "-", "-", "5"));
    }

    #[test]
    fn snapshot_details() {
        let mut s = snap("FAILED", 10, 100);
        s.failure = "destination unreachable".into();
        let d = snapshot_detail(&s);
        assert!(
            d.contains("\nprogress:          10% (10/100 blocks)\n"),
            "{d}"
        );
        assert!(
            d.contains("\nparent:            none (full snapshot)\n"),
            "{d}"
        );
        assert!(
            d.ends_with("\nfailure:           destination unreachable"),
            "{d}"
        );
        let j = snapshot_json(&s);
        assert_eq!(j["progress"]["blocks_done"], 10);
        assert_eq!(j["progress"]["change_source"], "FULL");
        assert_eq!(j["failure"], "destination unreachable");
        assert_eq!(j["volume_name"], "db1");
    }

    #[test]
    fn hydration() {
        let mut h = pb::Hydration {
            snapshot_id: 4,
            blocks_total: 4096,
            blocks_present: 1515,
            bytes_fetched: 120 << 20,
            complete: false,
            error: String::new(),
            ..Default::default()
        };
        assert_eq!(
            hydration_line(&h),
            "hydrating from snapshot 4: 36% (1515/4096 blocks, 120 MiB fetched)"
        );
        h.blocks_total = 0;
        h.blocks_present = 0;
        assert_eq!(
            hydration_line(&h),
            "hydrating from snapshot 4: (0/0 blocks, 120 MiB fetched)"
        );
        h.complete = true;
        assert_eq!(
            hydration_line(&h),
            "hydrated from snapshot 4 (0/0 blocks, 120 MiB fetched)"
        );
        let v = pb::Volume {
            name: "db2".into(),
            source_snapshot_id: 4,
            hydration: Some(h),
            ..Default::default()
        };
        let j = volume_json(&v);
        assert_eq!(j["source_snapshot_id"], 4);
        assert_eq!(j["hydration"]["complete"], true);
        assert!(volume_detail(&v)
            .ends_with("\n\nhydrated from snapshot 4 (0/0 blocks, 120 MiB fetched)"));
        let v = pb::Volume {
            source_snapshot_id: 4,
            ..Default::default()
        };
        assert!(volume_detail(&v).ends_with("\n\ncreated from snapshot 4"));
        assert_eq!(
            volume_json(&pb::Volume::default())["hydration"],
            Value::Null
        );
    }
}
