//! Block reads and writes through the admin API (the direct block API's
//! "download block" and "upload block" of a volume no backend writes to):
//! served by the primary, a write forwarded to every mirror in order, like
//! a guest's, acknowledged by the in-sync mirrors, then flushed everywhere.

use std::sync::Arc;

use basalt_proto::wire::{Flags, Header, Opcode, Status};

use crate::copy::Copy;

/// Largest read or write.
pub const MAX_LEN: usize = 1 << 20;

fn check(copy: &Copy, offset: u64, len: usize) -> Result<(), String> {
    if !copy.is_primary() {
        return Err("this copy is not the volume's primary".into());
    }
    if len == 0 || len > MAX_LEN {
        return Err(format!("length {len} must be 1 to {MAX_LEN} bytes"));
    }
    let end = offset.saturating_add(len as u64);
    if end > copy.size() {
        return Err(format!(
            "range {offset}+{len} is past the volume's end ({} bytes)",
            copy.size()
        ));
    }
    Ok(())
}

/// Reads `len` bytes at `offset` on the primary, loading them from the
/// source snapshot first if the copy still hydrates.
pub async fn read(copy: &Arc<Copy>, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    check(copy, offset, len)?;
    if let Some(h) = copy.hydration() {
        let need = h.needs(Opcode::Read, offset, len as u64, copy.size());
        if !need.is_empty() {
            super::hydrate::ensure(copy, &h, need).await?;
        }
    }
    let c = copy.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        c.read_at(offset, &mut buf).map(|()| buf)
    })
    .await
    .map_err(|e| format!("read task: {e}"))?
    .map_err(|e| e.to_string())
}

/// Writes `data` at `offset` on the primary and every mirror; returns once
/// every in-sync copy holds it durably.
pub async fn write(copy: &Arc<Copy>, epoch: u64, offset: u64, data: Vec<u8>) -> Result<(), String> {
    check(copy, offset, data.len())?;
    if epoch != copy.epoch() {
        return Err(format!(
            "epoch {epoch} is not the copy's epoch {}: the layout changed; retry",
            copy.epoch()
        ));
    }
    let ends_at_size = offset + data.len() as u64 == copy.size();
    if !offset.is_multiple_of(4096) || (!data.len().is_multiple_of(4096) && !ends_at_size) {
        return Err("offset and length must be multiples of 4096".into());
    }
    if let Some(h) = copy.hydration() {
        // A partial block merges with the snapshot's: load it first.
        let need = h.needs(Opcode::Write, offset, data.len() as u64, copy.size());
        if !need.is_empty() {
            super::hydrate::ensure(copy, &h, need).await?;
        }
    }
    super::hydrate::mirrors_ready(copy).await?;
    let c = copy.clone();
    let acks = tokio::task::spawn_blocking(move || {
        let _order = c.order.lock().unwrap_or_else(|e| e.into_inner());
        c.apply_mutation(Opcode::Write, offset, data.len() as u64, &data)
            .map_err(|e| e.to_string())?;
        c.dirty.on_mutation(offset, data.len() as u64);
        let fwd = Header {
            offset,
            length: data.len() as u32,
            flags: Flags(Flags::REPLICA),
            ..Header::request(Opcode::Write, 0, c.volume_id, c.epoch())
        }
        .with_payload(&data);
        for m in c.syncing().iter() {
            drop(m.send(fwd, &data));
        }
        Ok::<_, String>(
            c.mirrors()
                .iter()
                .map(|m| m.send(fwd, &data))
                .collect::<Vec<_>>(),
        )
    })
    .await
    .map_err(|e| format!("write task: {e}"))??;
    for ack in acks {
        match ack.await {
            Ok(Status::Ok) => {}
            Ok(s) => return Err(format!("a mirror refused the write: {s:?}")),
            Err(_) => return Err("a mirror link failed before acknowledging".into()),
        }
    }
    flush(copy).await
}

/// Flushes the primary and every in-sync mirror (waiting for them).
async fn flush(copy: &Arc<Copy>) -> Result<(), String> {
    let req = Header {
        flags: Flags(Flags::REPLICA),
        ..Header::request(Opcode::Flush, 0, copy.volume_id, copy.epoch())
    };
    let acks: Vec<_> = copy.mirrors().iter().map(|m| m.send(req, &[])).collect();
    let c = copy.clone();
    tokio::task::spawn_blocking(move || c.sync())
        .await
        .map_err(|e| format!("flush task: {e}"))?
        .map_err(|e| e.to_string())?;
    for ack in acks {
        match ack.await {
            Ok(Status::Ok) => {}
            Ok(s) => return Err(format!("a mirror's flush failed: {s:?}")),
            Err(_) => return Err("a mirror link failed before its flush".into()),
        }
    }
    Ok(())
}
