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

use basalt_proto::wire::{Header, PeerRole, Status};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::frames::{connect_hello, encode_frame, read_frame};
use crate::meta::PeerMeta;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Status>>>>;

struct Conn {
    tx: mpsc::UnboundedSender<Vec<u8>>,
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
    pub fn send(&self, mut header: Header, payload: &[u8]) -> oneshot::Receiver<Status> {
        let (tx, rx) = oneshot::channel();
        let guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let Some(conn) = guard.as_ref() else {
            let _ = tx.send(Status::MirrorUnavailable);
            return rx;
        };
        header.request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&conn.pending).insert(header.request_id, tx);
        if conn.tx.send(encode_frame(&header, payload)).is_err() {
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
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    pending: Pending,
) -> std::io::Error {
    let (mut rd, wr) = stream.into_split();
    let writer = async move {
        let mut wr = BufWriter::with_capacity(256 << 10, wr);
        while let Some(frame) = rx.recv().await {
            wr.write_all(&frame).await?;
            while let Ok(more) = rx.try_recv() {
                wr.write_all(&more).await?;
            }
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
