//! Tables for people, JSON for scripts.

use basalt_proto::control as pb;
use serde_json::{json, Value};

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
    s
}
