//! A primary's link to one mirror copy: an ordered stream of replica frames
//! over one TCP connection, with acknowledgements matched by request id.
//!
//! [`MirrorLink::send`] never blocks and never awaits, so it can be called
//! while the volume's ordering lock is held. While the mirror is unreachable,
//! sends fail at once with `MirrorUnavailable` and a background task keeps
//! reconnecting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt_proto::wire::{Header, PeerRole, Status, HEADER_LEN};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::frames::{connect_hello, pool, read_frame};
use crate::meta::PeerMeta;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Status>>>>;

/// A frame queued on a link.
enum LinkFrame {
    /// Header and payload in one buffer.
    Bytes(Vec<u8>),
    /// A header and a large payload shared with the request that carried it
    /// (and the other mirrors' links): written with one vectored write,
    /// without copying the payload.
    Shared([u8; HEADER_LEN], Arc<Vec<u8>>),
}

struct Conn {
    tx: mpsc::UnboundedSender<LinkFrame>,
    pending: Pending,
}

pub struct MirrorLink {
    pub peer: PeerMeta,
    conn: Arc<Mutex<Option<Conn>>>,
    next_id: AtomicU64,
    closed: watch::Sender<bool>,
}

/// Settings a link needs from its server.
#[derive(Clone)]
pub struct LinkSettings {
    pub local_server_id: String,
    pub cluster_key: Arc<Vec<u8>>,
    pub reconnect: Duration,
}

impl MirrorLink {
    /// Creates the link and starts its connection task on the current runtime.
    pub fn start(peer: PeerMeta, settings: LinkSettings) -> Arc<MirrorLink> {
        let (closed, closed_rx) = watch::channel(false);
        let link = Arc::new(MirrorLink {
            peer: peer.clone(),
            conn: Arc::new(Mutex::new(None)),
            next_id: AtomicU64::new(1),
            closed,
        });
        tokio::spawn(run(peer, settings, link.conn.clone(), closed_rx));
        link
    }

    /// Queues a replica frame. The receiver yields the mirror's status, or
    /// `MirrorUnavailable` if the connection is or goes down first.
    pub fn send(&self, header: Header, payload: &[u8]) -> oneshot::Receiver<Status> {
        self.queue(header, |h| LinkFrame::Bytes(pool::frame(h, payload)))
    }

    /// [`MirrorLink::send`] for a large payload shared with other links.
    pub fn send_shared(&self, header: Header, payload: &Arc<Vec<u8>>) -> oneshot::Receiver<Status> {
        self.queue(header, |h| LinkFrame::Shared(h.encode(), payload.clone()))
    }

    fn queue(
        &self,
        mut header: Header,
        frame: impl FnOnce(&Header) -> LinkFrame,
    ) -> oneshot::Receiver<Status> {
        let (tx, rx) = oneshot::channel();
        let guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let Some(conn) = guard.as_ref() else {
            let _ = tx.send(Status::MirrorUnavailable);
            return rx;
        };
        header.request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&conn.pending).insert(header.request_id, tx);
        if conn.tx.send(frame(&header)).is_err() {
            if let Some(tx) = lock(&conn.pending).remove(&header.request_id) {
                let _ = tx.send(Status::MirrorUnavailable);
            }
        }
        rx
    }

    pub fn is_connected(&self) -> bool {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
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
    mut closed: watch::Receiver<bool>,
) {
    let mut failures = 0u64;
    loop {
        if *closed.borrow() {
            return;
        }
        let session = async {
            let mut stream = TcpStream::connect(&peer.address).await?;
            stream.set_nodelay(true)?;
            let server = connect_hello(
                &mut stream,
                &s.cluster_key,
                PeerRole::Replication,
                &s.local_server_id,
            )
            .await?;
            if server != peer.server_id {
                return Err(std::io::Error::other(format!(
                    "{} answered as {server:?}, expected {:?}",
                    peer.address, peer.server_id
                )));
            }
            Ok::<_, std::io::Error>(stream)
        };
        let stream = tokio::select! {
            r = session => r,
            _ = closed.changed() => return,
        };
        let stream = match stream {
            Ok(st) => st,
            Err(e) => {
                failures += 1;
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
        let pending: Pending = Arc::default();
        *lock(&slot) = Some(Conn {
            tx,
            pending: pending.clone(),
        });
        let err = tokio::select! {
            e = serve(stream, rx, pending.clone()) => e,
            _ = closed.changed() => std::io::Error::other("link closed"),
        };
        *lock(&slot) = None;
        for (_, tx) in lock(&pending).drain() {
            let _ = tx.send(Status::MirrorUnavailable);
        }
        tracing::warn!(mirror = %peer.server_id, "mirror link down: {err}");
        if *closed.borrow() {
            return;
        }
    }
}

async fn serve(
    stream: TcpStream,
    mut rx: mpsc::UnboundedReceiver<LinkFrame>,
    pending: Pending,
) -> std::io::Error {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let writer = async move {
        let mut wr = BufWriter::with_capacity(256 << 10, wr);
        let mut last_batch = 1usize;
        while let Some(frame) = rx.recv().await {
            write_frame(&mut wr, frame).await?;
            let mut batch = 1usize;
            loop {
                while let Ok(more) = rx.try_recv() {
                    write_frame(&mut wr, more).await?;
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
    let reader = async move {
        let mut buf = Vec::new();
        loop {
            let h = read_frame(&mut rd, &mut buf).await?;
            if !h.is_response() {
                return Err(std::io::Error::other(
                    "mirror sent a request on a replication link",
                ));
            }
            if let Some(tx) = lock(&pending).remove(&h.request_id) {
                let _ = tx.send(h.status);
            }
        }
    };
    tokio::select! {
        r = writer => r.err().unwrap_or_else(|| std::io::Error::other("link closed")),
        r = reader => match r { Err(e) => e, Ok(()) => std::io::Error::other("reader ended") },
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(
    wr: &mut BufWriter<W>,
    frame: LinkFrame,
) -> std::io::Result<()> {
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
