//! Data-plane server: accepts backends and primaries, applies requests.
//!
//! One tokio task reads each connection's frames in order (buffered, so a
//! burst of small frames costs one syscall); responses go through a writer
//! task that batches them into few syscalls. Read responses are built in
//! buffers the writer hands back to a process-wide pool, so the hot path
//! does not allocate (a fresh 1 MiB buffer costs a mmap, 256 page faults and
//! a munmap per read). Reads and
//! writes are positioned I/O on the page cache, done inline; fdatasync runs on
//! the blocking pool. On a primary, a mutation is applied locally and queued
//! to every mirror under the volume's ordering lock, then a task waits for the
//! mirrors' acknowledgements before answering. On a mirror, replica frames are
//! applied in arrival order, which is the primary's order.
//!
//! Bounds (no peer can make the server hold unbounded memory or wait for it
//! forever): at most `--max-connections` connections are open, counted from
//! accept; a handshake must complete within `--handshake-timeout-ms` and
//! its payload is read into a handshake-sized buffer. An authenticated
//! connection reserves each request's response bytes from its budget
//! (`--response-budget-mib`) before handling it and gets them back when the
//! response is written, so a peer that does not read its responses stops
//! being read itself; if it reads nothing for `--peer-timeout-ms` while a
//! response waits, the connection is closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_auth::session::SealWriter;
use basalt_proto::wire::{Flags, Header, Opcode, PeerRole, Status, HEADER_LEN, MAX_PAYLOAD};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::copy::{Copy, CopyError};
use crate::error_map::wire_status;
use crate::frames::{pool, read_frame, StallDeadline};
use crate::mirror::{AckJoin, AckTo, MirrorLink, Payload};
use crate::session::{self, DataTls, Peer};
use crate::snap::hydrate::{self, Hydration};
use crate::store::Store;

pub struct DataCtx {
    pub store: Arc<Store>,
    pub tls: Arc<DataTls>,
    pub mirror_timeout: Duration,
    /// Deadline of a mirror's answer to a Flush or FUA write (an fdatasync).
    pub mirror_sync_timeout: Duration,
    pub connections: Arc<Connections>,
    pub handshake_timeout: Duration,
    pub peer_timeout: Duration,
    pub response_budget: usize,
}

/// The data plane's connection slots (`--max-connections`). A connection
/// holds one from accept until its task ends.
pub struct Connections {
    slots: Arc<Semaphore>,
    max: usize,
}

impl Connections {
    pub fn new(max: usize) -> Connections {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Connections {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Connections open now (handshaking or authenticated).
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

/// Refused connections are logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// A connection's response frames. Unbounded as a channel, bounded in
/// bytes: every frame was reserved from the connection's budget.
type Out = mpsc::UnboundedSender<Vec<u8>>;

pub async fn serve(listener: TcpListener, ctx: Arc<DataCtx>) {
    let mut refused = 0u64;
    let mut logged: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let Some(slot) = ctx.connections.admit() else {
                    // Closed at once: nothing is read from it or kept for it.
                    drop(stream);
                    refused += 1;
                    if logged.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                        tracing::warn!(%addr, refused, max = ctx.connections.max, "refusing data-plane connections: --max-connections reached (raise it if these peers are legitimate)");
                        logged = Some(Instant::now());
                        refused = 0;
                    }
                    continue;
                };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) = connection(stream, ctx).await {
                        if e.kind() != std::io::ErrorKind::UnexpectedEof {
                            tracing::warn!(%addr, "data connection closed: {e}");
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Bytes of the response to a request with this opcode and length, as
/// reserved from a connection's budget before the request is handled and
/// given back once the response is written. A response echoes its
/// request's opcode and length, so both sides compute the same weight: a
/// Read response that carries an error has no payload but still gives back
/// what the read reserved.
fn weight(opcode: Opcode, length: u32) -> u32 {
    match opcode {
        Opcode::Read => HEADER_LEN as u32 + length.min(MAX_PAYLOAD),
        _ => HEADER_LEN as u32,
    }
}

/// [`weight`] of an encoded response frame, from its header's opcode and
/// length fields (see `proto/WIRE.md`).
fn frame_weight(frame: &[u8]) -> u32 {
    if frame.get(5) != Some(&(Opcode::Read as u8)) {
        return HEADER_LEN as u32;
    }
    let length = frame
        .get(40..44)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    weight(Opcode::Read, length)
}

async fn connection(stream: TcpStream, ctx: Arc<DataCtx>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (peer, (mut rd, wr)) = tokio::time::timeout(
        ctx.handshake_timeout,
        session::accept(stream, &ctx.tls, ctx.peer_timeout),
    )
    .await
    .map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no handshake within {:?} (--handshake-timeout-ms)",
                ctx.handshake_timeout
            ),
        )
    })??;
    // One largest response always fits, so no request waits forever.
    let budget = ctx
        .response_budget
        .max(weight(Opcode::Read, MAX_PAYLOAD) as usize);
    let budget = Arc::new(Semaphore::new(budget));
    let (out, rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut writer = tokio::spawn(write_responses(wr, rx, budget.clone()));
    let mut payload = Vec::new();
    let reader = async {
        loop {
            let h = match read_frame(&mut rd, &mut payload).await {
                Ok(h) => h,
                Err(e) => return e,
            };
            // Every request gets exactly one response (sent by `handle`, a
            // task it spawns, or a mirror link's acknowledgement), through
            // `out`; the writer gives the reservation back.
            match budget.acquire_many(weight(h.opcode, h.length)).await {
                Ok(p) => p.forget(),
                Err(_) => return std::io::Error::other("response writer stopped"),
            }
            handle(&ctx, &peer, h, &mut payload, &out);
        }
    };
    let (read_end, written) = tokio::select! {
        e = reader => (Err(e), None),
        w = &mut writer => (Ok(()), Some(w)),
    };
    drop(out);
    // The writer ends once every response in flight was sent (mirror
    // acknowledgements and syncs have deadlines) or the peer stalled it.
    let written = match written {
        Some(w) => w,
        None => writer.await,
    };
    let written = written.unwrap_or_else(|e| Err(std::io::Error::other(e)));
    match (read_end, written) {
        // The peer stopped reading: that is why the connection ends.
        (_, Err(e)) => Err(e),
        (r, Ok(())) => r,
    }
}

/// Writes a connection's responses, batching what is queued into few
/// syscalls (and sealed records), and gives each one's weight back to the
/// connection's budget. Fails when the peer makes no progress reading for
/// the peer timeout (`StallDeadline`). Closes the budget when it ends, so a
/// reader waiting for room stops.
async fn write_responses(
    wr: SealWriter<StallDeadline<OwnedWriteHalf>>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    budget: Arc<Semaphore>,
) -> std::io::Result<()> {
    let written = async {
        let mut wr = BufWriter::with_capacity(256 << 10, wr);
        let mut last_batch = 1usize;
        let release = |frame: Vec<u8>| {
            budget.add_permits(frame_weight(&frame) as usize);
            pool::put(frame);
        };
        while let Some(frame) = rx.recv().await {
            wr.write_all(&frame).await?;
            release(frame);
            let mut batch = 1usize;
            loop {
                while let Ok(more) = rx.try_recv() {
                    wr.write_all(&more).await?;
                    release(more);
                    batch += 1;
                }
                // Under load (several frames per write), let the tasks that
                // produce frames run once more before paying for a syscall.
                // A lone request (QD1) is written at once: yielding costs a
                // trip through the I/O driver.
                if batch == 1 && last_batch == 1 {
                    break;
                }
                tokio::task::yield_now().await;
                if rx.is_empty() {
                    break;
                }
            }
            last_batch = batch;
            wr.flush().await?;
        }
        Ok::<(), std::io::Error>(())
    }
    .await;
    budget.close();
    written
}

fn reply(out: &Out, h: Header) {
    let _ = out.send(h.encode().to_vec());
}

fn reply_err(out: &Out, req: &Header, e: &CopyError) {
    let mut r = req.response(wire_status(e));
    if let CopyError::StaleEpoch { current, .. } = e {
        r.epoch = *current;
    }
    reply(out, r);
}

/// Handles one request frame exactly as a connection does (its response
/// frames go to `out`), for the stateful fuzz target. Must run inside a
/// tokio runtime.
#[doc(hidden)]
pub fn handle_request(
    ctx: &DataCtx,
    peer: &Peer,
    h: Header,
    payload: &mut Vec<u8>,
    out: &mpsc::UnboundedSender<Vec<u8>>,
) {
    handle(ctx, peer, h, payload, out)
}

fn handle(ctx: &DataCtx, peer: &Peer, h: Header, payload: &mut Vec<u8>, out: &Out) {
    if h.is_response() || h.opcode == Opcode::Hello {
        return reply(out, h.response(Status::InvalidRequest));
    }
    if h.opcode == Opcode::Ping {
        return reply(out, h.response(Status::Ok));
    }
    if let Err(s) = h.validate_data_request() {
        return reply(out, h.response(s));
    }
    // A backend connection serves the one volume its handshake named; its
    // attachment is checked on every request, like the epoch.
    let attachment = match peer.role {
        PeerRole::Backend if h.volume_id != peer.volume_id => {
            return reply(out, h.response(Status::InvalidRequest));
        }
        PeerRole::Backend => Some(peer.attachment),
        PeerRole::Replication => None,
    };
    let mutation = matches!(
        h.opcode,
        Opcode::Write | Opcode::Discard | Opcode::WriteZeroes
    );
    // A read-only grant reads and flushes, nothing else.
    if peer.read_only && mutation {
        return reply(out, h.response(Status::Unauthorized));
    }
    let Some(copy) = ctx.store.get(h.volume_id) else {
        return reply(out, h.response(Status::NoSuchVolume));
    };
    let replica = h.flags.has(Flags::REPLICA);
    if !role_ok(&copy, peer, replica) {
        return reply(out, h.response(Status::WrongRole));
    }
    // A mutation's epoch, attachment and role are checked again under the
    // ordering lock, where it is applied: see `Copy::ordered`.
    if !mutation {
        if let Err(e) = copy.admit(h.epoch, attachment) {
            return reply_err(out, &h, &e);
        }
    }
    if !replica && h.opcode != Opcode::Flush {
        if let Some((hyd, blocks)) = hydration_wait(&copy, &h) {
            return after_hydration(ctx, peer, copy, hyd, blocks, h, payload, out);
        }
    }
    match h.opcode {
        Opcode::Read => read(&copy, &h, out),
        Opcode::Flush => flush(ctx, copy, h, out.clone()),
        Opcode::Write | Opcode::Discard | Opcode::WriteZeroes => {
            if replica {
                let r = copy.ordered(h.epoch, None, || {
                    if !role_ok(&copy, peer, true) {
                        return Ok(false);
                    }
                    mutate(&copy, &h, payload).map(|()| true)
                });
                match r {
                    // The data is applied in arrival order; the sync runs
                    // aside, so the frames queued behind a FUA write are not
                    // held up (and their acknowledgements not delayed past
                    // the primary's deadline) by an fdatasync.
                    Ok(true) if h.flags.has(Flags::FUA) => {
                        let out = out.clone();
                        tokio::spawn(async move {
                            let c = copy.clone();
                            match tokio::task::spawn_blocking(move || c.sync()).await {
                                Ok(Ok(())) => reply(&out, h.response(Status::Ok)),
                                Ok(Err(e)) => reply_err(&out, &h, &e),
                                Err(_) => reply(&out, h.response(Status::IoError)),
                            }
                        });
                    }
                    Ok(true) => reply(out, h.response(Status::Ok)),
                    Ok(false) => reply(out, h.response(Status::WrongRole)),
                    Err(e) => reply_err(out, &h, &e),
                }
            } else {
                let timeouts = Timeouts {
                    mirror: ctx.mirror_timeout,
                    sync: ctx.mirror_sync_timeout,
                };
                primary_mutation(timeouts, peer, copy, h, payload, out.clone());
            }
        }
        Opcode::Hello | Opcode::Ping => unreachable_reply(out, &h),
    }
}

/// Serves a request once the blocks it needs from the source snapshot are
/// installed (a failed fetch answers IoError; the guest may retry).
#[allow(clippy::too_many_arguments)]
fn after_hydration(
    ctx: &DataCtx,
    peer: &Peer,
    copy: Arc<Copy>,
    hyd: Arc<Hydration>,
    blocks: Vec<u64>,
    h: Header,
    payload: &mut Vec<u8>,
    out: &Out,
) {
    let timeouts = Timeouts {
        mirror: ctx.mirror_timeout,
        sync: ctx.mirror_sync_timeout,
    };
    let peer = peer.clone();
    let mut payload = std::mem::replace(payload, pool::take_any());
    let out = out.clone();
    tokio::spawn(async move {
        if let Err(e) = hydrate::ensure(&copy, &hyd, blocks).await {
            tracing::warn!(volume = copy.volume_id, "on-demand hydration failed: {e}");
            return reply(&out, h.response(Status::IoError));
        }
        match h.opcode {
            Opcode::Read => read(&copy, &h, &out),
            _ => primary_mutation(timeouts, &peer, copy, h, &mut payload, out),
        }
    });
}

/// Backends may only address primaries; replica frames are accepted only
/// from the server a mirror's metadata names as its primary.
fn role_ok(copy: &Copy, peer: &Peer, replica: bool) -> bool {
    match peer.role {
        PeerRole::Backend => !replica && copy.is_primary(),
        PeerRole::Replication => {
            replica && !copy.is_primary() && copy.primary_server_id() == peer.id
        }
    }
}

fn unreachable_reply(out: &Out, h: &Header) {
    reply(out, h.response(Status::InvalidRequest));
}

fn read(copy: &Copy, h: &Header, out: &Out) {
    let mut frame = pool::take(basalt_proto::wire::HEADER_LEN + h.length as usize);
    match copy.read_at(h.offset, &mut frame[basalt_proto::wire::HEADER_LEN..]) {
        Ok(()) => {
            let r = h
                .response(Status::Ok)
                .with_payload(&frame[basalt_proto::wire::HEADER_LEN..]);
            frame[..basalt_proto::wire::HEADER_LEN].copy_from_slice(&r.encode());
            let _ = out.send(frame);
        }
        Err(e) => {
            pool::put(frame);
            reply_err(out, h, &e)
        }
    }
}

fn mutate(copy: &Copy, h: &Header, payload: &[u8]) -> Result<(), CopyError> {
    copy.apply_mutation(h.opcode, h.offset, u64::from(h.length), payload)
}

/// On a primary loading a snapshot: the blocks a request must wait for
/// (fetched and installed first), if any.
fn hydration_wait(copy: &Arc<Copy>, h: &Header) -> Option<(Arc<Hydration>, Vec<u64>)> {
    let hyd = copy.hydration()?;
    // Out-of-range requests are refused by the normal path.
    copy.check_range(h.offset, u64::from(h.length)).ok()?;
    let blocks = hyd.needs(h.opcode, h.offset, u64::from(h.length), copy.size());
    (!blocks.is_empty()).then_some((hyd, blocks))
}

/// Applies locally, forwards to every mirror in the same order, and answers
/// Ok only when every mirror answered Ok (invariant 1). A large payload is
/// handed to the mirror links as it is (the connection takes a fresh buffer
/// from the pool), not copied. Without FUA, the answer is sent by whoever
/// completes the request last (the local write, or the link reader that
/// receives the last mirror acknowledgement): no task per write.
#[derive(Clone, Copy)]
struct Timeouts {
    mirror: Duration,
    sync: Duration,
}

fn primary_mutation(
    ctx: Timeouts,
    peer: &Peer,
    copy: Arc<Copy>,
    h: Header,
    payload: &mut Vec<u8>,
    out: Out,
) {
    let fua = h.flags.has(Flags::FUA);
    // Read outside the lock: a stale answer only decides whether the payload
    // is shared with the links or copied into their frames.
    let shared = (payload.len() >= pool::MIN_KEEP && !copy.mirrors().is_empty())
        .then(|| Arc::new(std::mem::replace(payload, pool::take_any())));
    let data: &[u8] = match &shared {
        Some(p) => &p[..],
        None => &payload[..],
    };
    let deadline = Instant::now() + if fua { ctx.sync } else { ctx.mirror };
    // Everything from the epoch check to the last queued frame happens under
    // the ordering lock, so a layout change (which takes it too) sees either
    // none or all of it: the epoch, the links and the mirrors' order agree.
    let queued = copy.ordered(h.epoch, Some(peer.attachment), || {
        if !role_ok(&copy, peer, false) {
            return Ok(None);
        }
        // Bounds first: nothing is marked or written for a range past the
        // end of the volume.
        copy.check_range(h.offset, u64::from(h.length))?;
        // Absent peers' dirty-region maps, in the same order as the data.
        copy.dirty.on_mutation(h.offset, u64::from(h.length));
        mutate(&copy, &h, data)?;
        let (mirrors, syncing) = ack_sets(&copy);
        let join = (!fua && !mirrors.is_empty()).then(|| {
            let out = out.clone();
            let volume = copy.volume_id;
            AckJoin::new(mirrors.len(), move |status| {
                if status != Status::Ok {
                    tracing::debug!(
                        volume,
                        request = h.request_id,
                        ?status,
                        "mirror did not acknowledge"
                    );
                }
                reply(&out, h.response(status));
            })
        });
        let mut fwd = h;
        fwd.flags = Flags(Flags::REPLICA | (h.flags.0 & Flags::FUA));
        fwd.epoch = copy.epoch();
        // Syncing mirrors get every mutation in order; their acks don't count
        // until they are synced (then they are in `mirrors` here). Their
        // frames are due within the link's sync timeout, and a syncing
        // link that falls behind is torn down, never waited for.
        for m in syncing.iter() {
            drop(m.send(fwd, data));
        }
        let mut acks = Vec::new();
        for m in mirrors.iter() {
            let p = match &shared {
                Some(p) => Payload::Shared(p),
                None => Payload::Slice(data),
            };
            match &join {
                Some(j) => m.send_to(fwd, p, AckTo::Join(j.clone()), deadline),
                None => {
                    let (tx, rx) = oneshot::channel();
                    m.send_to(fwd, p, AckTo::Oneshot(tx), deadline);
                    acks.push(rx);
                }
            }
        }
        Ok(Some((join.is_some(), acks)))
    });
    if let Some(Ok(v)) = shared.map(Arc::try_unwrap) {
        pool::put(v);
    }
    let acks = match queued {
        Ok(Some((true, _))) => return,
        Ok(Some((false, acks))) => acks,
        Ok(None) => return reply(&out, h.response(Status::WrongRole)),
        Err(e) => return reply_err(&out, &h, &e),
    };
    if !fua {
        // No mirrors: done.
        return reply(&out, h.response(Status::Ok));
    }
    let timeout = ctx.sync;
    tokio::spawn(async move {
        let c = copy.clone();
        let local = tokio::task::spawn_blocking(move || c.sync())
            .await
            .unwrap_or_else(|_| Err(CopyError::Io(std::io::Error::other("sync task failed"))));
        if let Err(e) = local {
            return reply_err(&out, &h, &e);
        }
        let status = await_mirrors(acks, timeout, &copy, &h).await;
        reply(&out, h.response(status));
    });
}

async fn await_mirrors(
    acks: Vec<oneshot::Receiver<Status>>,
    timeout: Duration,
    copy: &Copy,
    h: &Header,
) -> Status {
    let mut worst = Status::Ok;
    for ack in acks {
        let s = match tokio::time::timeout(timeout, ack).await {
            Ok(Ok(s)) => s,
            _ => Status::MirrorUnavailable,
        };
        if s != Status::Ok {
            tracing::debug!(
                volume = copy.volume_id,
                request = h.request_id,
                ?s,
                "mirror did not acknowledge"
            );
            worst = match s {
                Status::StaleEpoch => Status::StaleEpoch,
                _ => Status::MirrorUnavailable,
            };
        }
    }
    worst
}

/// The links whose acknowledgement a mutation or flush waits for, and the
/// other syncing links. A syncing mirror whose resync finished (`synced`)
/// counts like an in-sync one: the control service may make it in-sync at
/// any moment from then on, so every write acknowledged after it was seen
/// synced must be on it (invariant 1). If it misses one, that write is not
/// acknowledged and the mirror leaves `synced` (see `resync.rs`).
fn ack_sets(copy: &Copy) -> (Arc<Vec<Arc<MirrorLink>>>, Vec<Arc<MirrorLink>>) {
    let mirrors = copy.mirrors();
    let syncing = copy.syncing();
    if syncing.is_empty() {
        return (mirrors, Vec::new());
    }
    let synced = copy.synced.lock().unwrap_or_else(|e| e.into_inner());
    let (counted, rest): (Vec<_>, Vec<_>) = syncing
        .iter()
        .cloned()
        .partition(|l| synced.contains(&l.peer.server_id));
    if counted.is_empty() {
        return (mirrors, rest);
    }
    let all = mirrors.iter().cloned().chain(counted).collect();
    (Arc::new(all), rest)
}

/// fdatasync locally and on every mirror; Ok when all are durable. A
/// mirror that does not confirm within --mirror-sync-timeout-ms is taken as hung
/// (its link is torn down and it is reported), as for a write.
fn flush(ctx: &DataCtx, copy: Arc<Copy>, h: Header, out: Out) {
    let acks: Vec<_> = if h.flags.has(Flags::REPLICA) {
        Vec::new()
    } else {
        let mut fwd = h;
        fwd.flags = Flags(Flags::REPLICA);
        fwd.epoch = copy.epoch();
        let deadline = Instant::now() + ctx.mirror_sync_timeout;
        let (mirrors, syncing) = ack_sets(&copy);
        for m in syncing.iter() {
            drop(m.send(fwd, &[]));
        }
        mirrors
            .iter()
            .map(|m| m.send_until(fwd, &[], deadline))
            .collect()
    };
    let timeout = ctx.mirror_sync_timeout;
    tokio::spawn(async move {
        let c = copy.clone();
        let local = tokio::task::spawn_blocking(move || c.sync())
            .await
            .unwrap_or_else(|_| Err(CopyError::Io(std::io::Error::other("sync task failed"))));
        if let Err(e) = local {
            return reply_err(&out, &h, &e);
        }
        let status = await_mirrors(acks, timeout, &copy, &h).await;
        reply(&out, h.response(status));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a request reserves is what its response gives back, whatever
    /// the response's status and payload.
    #[test]
    fn a_response_releases_what_its_request_reserved() {
        let ops = [
            Opcode::Read,
            Opcode::Write,
            Opcode::Flush,
            Opcode::Discard,
            Opcode::WriteZeroes,
            Opcode::Ping,
            Opcode::Hello,
        ];
        for op in ops {
            for length in [0, 512, 4096, MAX_PAYLOAD, MAX_PAYLOAD + 512, u32::MAX] {
                let req = Header {
                    length,
                    ..Header::request(op, 7, 1, 1)
                };
                let reserved = weight(req.opcode, req.length);
                for status in [Status::Ok, Status::OutOfRange, Status::InvalidRequest] {
                    let r = req.response(status);
                    let mut frame = r.encode().to_vec();
                    if op == Opcode::Read && status == Status::Ok && length <= MAX_PAYLOAD {
                        frame.resize(HEADER_LEN + length as usize, 0);
                    }
                    assert_eq!(frame_weight(&frame), reserved, "{op:?} {length} {status:?}");
                    assert!(frame.len() <= reserved as usize);
                }
            }
        }
        assert_eq!(
            weight(Opcode::Read, MAX_PAYLOAD),
            HEADER_LEN as u32 + MAX_PAYLOAD
        );
        assert_eq!(weight(Opcode::Write, MAX_PAYLOAD), HEADER_LEN as u32);
    }
}
