//! A primary's link to one mirror copy: an ordered stream of replica frames
//! over one TCP connection, with acknowledgements matched by request id.
//!
//! [`MirrorLink::send`] never blocks and never awaits, so it can be called
//! while the volume's ordering lock is held. While the mirror is unreachable,
//! sends fail at once with `MirrorUnavailable` and a background task keeps
//! reconnecting.
//!
//! A hung mirror (process stopped, network blackholed: TCP stays up but no
//! acknowledgement comes) is detected by the first acknowledgement that
//! passes its deadline: the connection is torn down at once, so every
//! pending request gets `MirrorUnavailable` together (instead of each later
//! write waiting out its own timeout) and reconnecting starts. A connection
//! attempt (TCP connect and handshake) is bounded by the same timeout: a
//! stopped process still completes TCP connects in the kernel but never
//! answers the handshake.
//!
//! Nothing a mirror does can make a link hold unbounded memory: every frame
//! queued has a deadline (a flush or FUA write too, and a syncing mirror's
//! frames, which no guest waits for, get `sync_timeout`), and a link whose
//! queue of frames not yet written exceeds `queue_bytes`, or whose frames
//! awaiting acknowledgement exceed [`MAX_UNACKED`], is torn down like one
//! whose acknowledgement is overdue. A send never blocks: the primary's
//! ordering lock is never held up by a slow mirror.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt_proto::wire::{Header, Opcode, Status, HEADER_LEN};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::dirty::Tracker;
use crate::frames::{pool, read_frame};
use crate::meta::PeerMeta;

type Pending = Arc<Mutex<HashMap<u64, Waiter>>>;

/// How often a link looks for acknowledgements past their deadline.
const SWEEP: Duration = Duration::from_millis(20);

/// Most frames a link keeps waiting for their acknowledgement. Far above
/// what the data path keeps in flight (queue depth times queues, plus a
/// resync's window); a mirror that reads frames but acknowledges none would
/// otherwise grow the map until the first deadline passes.
pub const MAX_UNACKED: usize = 1 << 16;

/// Where a mirror's acknowledgement goes.
pub enum AckTo {
    /// A channel (flushes, FUA writes: their task also waits for a sync).
    Oneshot(oneshot::Sender<Status>),
    /// A request that waits for every mirror.
    Join(Arc<AckJoin>),
}

impl AckTo {
    fn deliver(self, s: Status) {
        match self {
            AckTo::Oneshot(tx) => {
                let _ = tx.send(s);
            }
            AckTo::Join(j) => j.ack(s),
        }
    }
}

/// A primary request waiting for the acknowledgements of all its mirrors.
/// The last to arrive (or to fail, or to time out) runs `done` with the
/// combined status, from the link's reader: no task per request.
pub struct AckJoin {
    remaining: AtomicUsize,
    /// 0 Ok, 1 MirrorUnavailable, 2 StaleEpoch: the highest wins.
    worst: AtomicU8,
    done: Mutex<Option<Done>>,
}

type Done = Box<dyn FnOnce(Status) + Send>;

impl AckJoin {
    pub fn new(mirrors: usize, done: impl FnOnce(Status) + Send + 'static) -> Arc<AckJoin> {
        Arc::new(AckJoin {
            remaining: AtomicUsize::new(mirrors),
            worst: AtomicU8::new(0),
            done: Mutex::new(Some(Box::new(done))),
        })
    }

    fn ack(&self, s: Status) {
        let rank = match s {
            Status::Ok => 0,
            Status::StaleEpoch => 2,
            _ => 1,
        };
        self.worst.fetch_max(rank, Ordering::AcqRel);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let status = match self.worst.load(Ordering::Acquire) {
                0 => Status::Ok,
                2 => Status::StaleEpoch,
                _ => Status::MirrorUnavailable,
            };
            if let Some(done) = lock(&self.done).take() {
                done(status);
            }
        }
    }
}

struct Waiter {
    /// When the acknowledgement is overdue: the connection is then torn
    /// down and every waiter answered `MirrorUnavailable`.
    deadline: Instant,
    to: AckTo,
    /// The range a mutation frame changes: recorded as missed by the peer
    /// unless it is acknowledged `Ok`.
    range: Option<(u64, u64)>,
}

/// Where a link records the mutations its peer did not acknowledge.
#[derive(Clone)]
struct Misses {
    tracker: Arc<Tracker>,
    peer: String,
}

/// Answers a waiter, first recording a mutation the peer did not
/// acknowledge `Ok` in its dirty-region map.
fn settle(w: Waiter, status: Status, misses: Option<&Misses>) {
    if status != Status::Ok {
        if let (Some(m), Some((offset, len))) = (misses, w.range) {
            m.tracker.missed(&m.peer, offset, len);
        }
    }
    w.to.deliver(status);
}

/// State of a link's connection, for those who watch it (failure reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// The first connection attempt has not finished yet.
    Connecting,
    Up,
    /// The connection was lost or could not be established; reconnecting.
    Down,
}

/// A replica frame's payload.
pub enum Payload<'a> {
    Slice(&'a [u8]),
    /// Large, shared with the request that carried it and the other links.
    Shared(&'a Arc<Vec<u8>>),
}

/// A frame queued on a link.
enum LinkFrame {
    /// Header and payload in one buffer.
    Bytes(Vec<u8>),
    /// A header and a large payload shared with the request that carried it
    /// (and the other mirrors' links): written with one vectored write,
    /// without copying the payload.
    Shared([u8; HEADER_LEN], Arc<Vec<u8>>),
}

impl LinkFrame {
    /// Bytes the frame holds (a shared payload counted in full).
    fn weight(&self) -> usize {
        match self {
            LinkFrame::Bytes(b) => b.len(),
            LinkFrame::Shared(h, p) => h.len() + p.len(),
        }
    }
}

struct Conn {
    /// Frames to write, in order; `queued` counts their bytes.
    tx: mpsc::UnboundedSender<LinkFrame>,
    queued: Arc<AtomicUsize>,
    pending: Pending,
    /// Tears the connection down with the given reason.
    kill: oneshot::Sender<std::io::Error>,
}

pub struct MirrorLink {
    pub peer: PeerMeta,
    conn: Arc<Mutex<Option<Conn>>>,
    next_id: AtomicU64,
    closed: watch::Sender<bool>,
    state: Arc<watch::Sender<LinkState>>,
    misses: Option<Misses>,
    sync_timeout: Duration,
    queue_bytes: usize,
}

/// Settings a link needs from its server.
#[derive(Clone)]
pub struct LinkSettings {
    pub local_server_id: String,
    /// Data-plane TLS: links authenticate as this server.
    pub tls: Arc<crate::session::DataTls>,
    pub reconnect: Duration,
    /// Bound on one connection attempt (TCP connect and handshake).
    pub connect_timeout: Duration,
    /// Deadline of a frame queued without one (a syncing mirror's frames:
    /// no guest waits for their acknowledgement).
    pub sync_timeout: Duration,
    /// Most bytes of frames queued but not yet written to the connection.
    pub queue_bytes: usize,
}

impl MirrorLink {
    /// Creates the link and starts its connection task on the current
    /// runtime. Mutations the peer does not acknowledge `Ok` are recorded
    /// in `tracker` (the copy's dirty-region maps), if given.
    pub fn start(
        peer: PeerMeta,
        settings: LinkSettings,
        tracker: Option<Arc<Tracker>>,
    ) -> Arc<MirrorLink> {
        let misses = tracker.map(|tracker| Misses {
            tracker,
            peer: peer.server_id.clone(),
        });
        let (closed, closed_rx) = watch::channel(false);
        let link = Arc::new(MirrorLink {
            peer: peer.clone(),
            conn: Arc::new(Mutex::new(None)),
            next_id: AtomicU64::new(1),
            closed,
            state: Arc::new(watch::channel(LinkState::Connecting).0),
            misses: misses.clone(),
            sync_timeout: settings.sync_timeout,
            queue_bytes: settings.queue_bytes,
        });
        tokio::spawn(run(
            peer,
            settings,
            link.conn.clone(),
            link.state.clone(),
            closed_rx,
            misses,
        ));
        link
    }

    /// Resolves when the link is connected (at once if it already is).
    pub async fn wait_connected(&self) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|s| *s == LinkState::Up).await;
    }

    /// Watches the connection state. `closed` of the returned watch fires
    /// (an error from `changed`) once the link is dropped.
    pub fn watch(&self) -> LinkWatch {
        LinkWatch {
            state: self.state.subscribe(),
            closed: self.closed.subscribe(),
        }
    }

    /// Queues a replica frame whose acknowledgement no guest waits for (a
    /// syncing mirror's), due within the link's `sync_timeout`. The
    /// receiver yields the mirror's status, or `MirrorUnavailable` if the
    /// connection is or goes down first.
    pub fn send(&self, header: Header, payload: &[u8]) -> oneshot::Receiver<Status> {
        self.send_until(header, payload, Instant::now() + self.sync_timeout)
    }

    /// [`MirrorLink::send`] with the acknowledgement due by `deadline`.
    pub fn send_until(
        &self,
        header: Header,
        payload: &[u8],
        deadline: Instant,
    ) -> oneshot::Receiver<Status> {
        let (tx, rx) = oneshot::channel();
        self.send_to(
            header,
            Payload::Slice(payload),
            AckTo::Oneshot(tx),
            deadline,
        );
        rx
    }

    /// Queues a replica frame; its acknowledgement goes to `to`, or
    /// `MirrorUnavailable` if the connection is or goes down first. Past
    /// `deadline` the mirror is taken as hung: the connection is torn down
    /// and every frame waiting on it answered `MirrorUnavailable`. So is it
    /// when this frame would take the queue past its bound.
    pub fn send_to(&self, mut header: Header, payload: Payload<'_>, to: AckTo, deadline: Instant) {
        let range = matches!(
            header.opcode,
            Opcode::Write | Opcode::Discard | Opcode::WriteZeroes
        )
        .then_some((header.offset, u64::from(header.length)));
        let w = Waiter {
            deadline,
            to,
            range,
        };
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let Some(conn) = guard.as_ref() else {
            drop(guard);
            return settle(w, Status::MirrorUnavailable, self.misses.as_ref());
        };
        let weight = HEADER_LEN
            + match &payload {
                Payload::Slice(p) => p.len(),
                Payload::Shared(p) => p.len(),
            };
        // Senders are serialised by the slot's lock; the writer only
        // lowers `queued`, so the check cannot be overtaken.
        let queued = conn.queued.load(Ordering::Acquire);
        let mut pending = lock(&conn.pending);
        let unacked = pending.len();
        // A frame larger than the bound still goes on an empty queue.
        let over = queued > 0 && queued + weight > self.queue_bytes;
        if over || unacked >= MAX_UNACKED {
            // The mirror is not keeping up (stopped reading, or reads and
            // never acknowledges): drop the connection rather than queue
            // more. Its waiters are answered and their ranges recorded as
            // missed by the link's task, exactly as when it goes down.
            let why = if unacked >= MAX_UNACKED {
                format!("{unacked} frames unacknowledged (the mirror reads but does not answer)")
            } else {
                format!(
                    "{queued} bytes queued and not yet written, bound {} (the mirror stopped reading or is too slow); raise --mirror-queue-mib if its network is just slow",
                    self.queue_bytes
                )
            };
            drop(pending);
            if let Some(conn) = guard.take() {
                let _ = conn.kill.send(std::io::Error::other(why));
            }
            drop(guard);
            return settle(w, Status::MirrorUnavailable, self.misses.as_ref());
        }
        header.request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        pending.insert(header.request_id, w);
        drop(pending);
        let frame = match payload {
            Payload::Slice(p) => LinkFrame::Bytes(pool::frame(&header, p)),
            Payload::Shared(p) => LinkFrame::Shared(header.encode(), p.clone()),
        };
        conn.queued.fetch_add(weight, Ordering::AcqRel);
        if conn.tx.send(frame).is_err() {
            let w = lock(&conn.pending).remove(&header.request_id);
            drop(guard);
            if let Some(w) = w {
                settle(w, Status::MirrorUnavailable, self.misses.as_ref());
            }
        }
    }

    pub fn is_connected(&self) -> bool {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

/// Receivers for a link's state; they hold no reference to the link.
pub struct LinkWatch {
    pub state: watch::Receiver<LinkState>,
    pub closed: watch::Receiver<bool>,
}

impl Drop for MirrorLink {
    fn drop(&mut self) {
        let _ = self.closed.send(true);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run(
    peer: PeerMeta,
    s: LinkSettings,
    slot: Arc<Mutex<Option<Conn>>>,
    state: Arc<watch::Sender<LinkState>>,
    mut closed: watch::Receiver<bool>,
    misses: Option<Misses>,
) {
    let mut failures = 0u64;
    loop {
        if *closed.borrow() {
            return;
        }
        let session = async {
            let stream = TcpStream::connect(&peer.address).await?;
            stream.set_nodelay(true)?;
            crate::session::connect_mirror(stream, &s.tls, &peer.server_id).await
        };
        let session = async {
            tokio::time::timeout(s.connect_timeout, session)
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no handshake within {:?} (is the mirror process stopped?)",
                            s.connect_timeout
                        ),
                    ))
                })
        };
        let stream = tokio::select! {
            r = session => r,
            _ = closed.changed() => return,
        };
        let stream = match stream {
            Ok(st) => st,
            Err(e) => {
                failures += 1;
                state.send_replace(LinkState::Down);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(mirror = %peer.server_id, addr = %peer.address, attempts = failures, "cannot reach mirror: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(s.reconnect) => continue,
                    _ = closed.changed() => return,
                }
            }
        };
        if failures > 0 {
            tracing::info!(mirror = %peer.server_id, "mirror link up after {failures} failed attempts");
        }
        failures = 0;
        let (tx, rx) = mpsc::unbounded_channel();
        let (kill, killed) = oneshot::channel();
        let pending: Pending = Arc::default();
        let queued = Arc::new(AtomicUsize::new(0));
        *lock(&slot) = Some(Conn {
            tx,
            queued: queued.clone(),
            pending: pending.clone(),
            kill,
        });
        state.send_replace(LinkState::Up);
        let err = tokio::select! {
            e = serve(stream, rx, queued, pending.clone(), misses.clone()) => e,
            e = killed => e.unwrap_or_else(|_| std::io::Error::other("link closed")),
            _ = closed.changed() => std::io::Error::other("link closed"),
        };
        *lock(&slot) = None;
        state.send_replace(LinkState::Down);
        let left: Vec<Waiter> = lock(&pending).drain().map(|(_, w)| w).collect();
        let failed = left.len();
        for w in left {
            settle(w, Status::MirrorUnavailable, misses.as_ref());
        }
        if *closed.borrow() {
            return;
        }
        tracing::warn!(mirror = %peer.server_id, addr = %peer.address, failed, "mirror link down: {err}");
    }
}

async fn serve(
    (mut rd, wr): crate::session::ClientHalves,
    mut rx: mpsc::UnboundedReceiver<LinkFrame>,
    queued: Arc<AtomicUsize>,
    pending: Pending,
    misses: Option<Misses>,
) -> std::io::Error {
    let writer = async move {
        let mut wr = BufWriter::with_capacity(256 << 10, wr);
        let mut last_batch = 1usize;
        while let Some(frame) = rx.recv().await {
            write_frame(&mut wr, frame, &queued).await?;
            let mut batch = 1usize;
            loop {
                while let Ok(more) = rx.try_recv() {
                    write_frame(&mut wr, more, &queued).await?;
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
    };
    let sweep_pending = pending.clone();
    // An acknowledgement past its deadline means the mirror is hung or the
    // network is: tear the connection down (the caller answers every
    // waiter) rather than let each later request wait out its own deadline.
    let sweeper = async move {
        let mut tick = tokio::time::interval(SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let overdue = lock(&sweep_pending)
                .values()
                .map(|w| w.deadline)
                .filter(|d| *d <= now)
                .min();
            if let Some(d) = overdue {
                return std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "an acknowledgement is {:?} overdue (mirror hung or network down)",
                        now - d
                    ),
                );
            }
        }
    };
    let reader = async move {
        let mut buf = Vec::new();
        loop {
            let h = read_frame(&mut rd, &mut buf).await?;
            if !h.is_response() {
                return Err(std::io::Error::other(
                    "mirror sent a request on a replication link",
                ));
            }
            let w = lock(&pending).remove(&h.request_id);
            if let Some(w) = w {
                settle(w, h.status, misses.as_ref());
            }
        }
    };
    tokio::select! {
        r = writer => r.err().unwrap_or_else(|| std::io::Error::other("link closed")),
        r = reader => match r { Err(e) => e, Ok(()) => std::io::Error::other("reader ended") },
        e = sweeper => e,
    }
}

/// Writes a queued frame (into the buffer or the socket) and takes its
/// bytes off the queue's count.
async fn write_frame<W: AsyncWrite + Unpin>(
    wr: &mut BufWriter<W>,
    frame: LinkFrame,
    queued: &AtomicUsize,
) -> std::io::Result<()> {
    let weight = frame.weight();
    match frame {
        LinkFrame::Bytes(b) => {
            wr.write_all(&b).await?;
            pool::put(b);
        }
        LinkFrame::Shared(h, p) => {
            // Frames buffered before this one go first.
            wr.flush().await?;
            write_two(wr.get_mut(), &h, &p).await?;
            if let Ok(v) = Arc::try_unwrap(p) {
                pool::put(v);
            }
        }
    }
    queued.fetch_sub(weight, Ordering::AcqRel);
    Ok(())
}

/// Writes `a` then `b`, vectored.
async fn write_two<W: AsyncWrite + Unpin>(w: &mut W, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    let total = a.len() + b.len();
    let mut off = 0;
    while off < total {
        let n = if off < a.len() {
            w.write_vectored(&[std::io::IoSlice::new(&a[off..]), std::io::IoSlice::new(b)])
                .await?
        } else {
            w.write(&b[off - a.len()..]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        off += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(n: usize) -> (Arc<AckJoin>, std::sync::mpsc::Receiver<Status>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let j = AckJoin::new(n, move |s| tx.send(s).unwrap());
        (j, rx)
    }

    #[test]
    fn join_answers_once_after_every_mirror_with_the_worst_status() {
        let (j, rx) = join(3);
        j.ack(Status::Ok);
        j.ack(Status::MirrorUnavailable);
        assert!(rx.try_recv().is_err(), "answered before the last mirror");
        j.ack(Status::Ok);
        assert_eq!(rx.try_recv(), Ok(Status::MirrorUnavailable));
        assert!(rx.try_recv().is_err());

        let (j, rx) = join(2);
        j.ack(Status::StaleEpoch);
        j.ack(Status::MirrorUnavailable);
        assert_eq!(rx.try_recv(), Ok(Status::StaleEpoch));

        let (j, rx) = join(1);
        AckTo::Join(j).deliver(Status::Ok);
        assert_eq!(rx.try_recv(), Ok(Status::Ok));
    }
}
