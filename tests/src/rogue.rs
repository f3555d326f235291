//! A stale backend, for the fault suite: it speaks the data-plane protocol
//! to a volume's primary as a backend of an attachment that was superseded
//! (what a backend left running on a host that was cut off, after a forced
//! attach elsewhere, would send), with the volume's *current* epoch, and
//! writes garbage. Every write must be refused.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use basalt_proto::wire::{
    read_frame, write_frame, Header, Hello, HelloChallenge, Identity, Opcode, PeerRole, Status,
};

/// Connects to the data-plane `addr` as a backend of `volume_id` with
/// `attachment`, authenticated with the (empty) development key.
pub fn connect(addr: &str, volume_id: u64, attachment: u64) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let h = read_frame(&mut s, &mut buf)?;
    if h.opcode != Opcode::Hello {
        bail!("expected a challenge from {addr}");
    }
    let ch = HelloChallenge::decode(&buf)?;
    let who = Identity {
        role: PeerRole::Backend,
        peer_id: "stale-backend",
        volume_id,
        attachment,
    };
    let body = Hello::new(b"", &ch, who).encode();
    write_frame(
        &mut s,
        &Header::request(Opcode::Hello, 0, volume_id, 0).with_payload(&body),
        &[&body],
    )?;
    let r = read_frame(&mut s, &mut buf)?;
    if r.status != Status::Ok {
        bail!("{addr} refused the handshake: {:?}", r.status);
    }
    Ok(s)
}

/// Writes 4 KiB of 0xDB at offsets spread over `range` (bytes) with `epoch`
/// for `duration`, one request at a time; returns how many got each status.
pub fn write_for(
    s: &mut TcpStream,
    volume_id: u64,
    epoch: u64,
    range: (u64, u64),
    duration: Duration,
) -> Result<BTreeMap<String, u64>> {
    let data = [0xDBu8; 4096];
    let blocks = (range.1 - range.0) / 4096;
    let mut counts = BTreeMap::new();
    let mut buf = Vec::new();
    let deadline = Instant::now() + duration;
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let h = Header {
            offset: range.0 + (i.wrapping_mul(2654435761) % blocks) * 4096,
            length: 4096,
            ..Header::request(Opcode::Write, i, volume_id, epoch)
        }
        .with_payload(&data);
        write_frame(s, &h, &[&data])?;
        let r = read_frame(s, &mut buf)?;
        *counts.entry(format!("{:?}", r.status)).or_insert(0) += 1;
    }
    Ok(counts)
}
