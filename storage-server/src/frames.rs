//! Async frame I/O on top of `basalt_proto::wire` (the handshake is in
//! `session.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use basalt_proto::wire::{verify_payload, Header, WireError, HEADER_LEN, MAX_PAYLOAD};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

fn invalid(e: WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Reads one validated frame; the payload goes into `payload` (resized).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    payload: &mut Vec<u8>,
) -> io::Result<Header> {
    read_frame_bounded(r, payload, MAX_PAYLOAD as usize).await
}

/// [`read_frame`] accepting at most `max` payload bytes: the bound is
/// checked before anything is allocated for the payload.
pub async fn read_frame_bounded<R: AsyncRead + Unpin>(
    r: &mut R,
    payload: &mut Vec<u8>,
    max: usize,
) -> io::Result<Header> {
    let mut hb = [0u8; HEADER_LEN];
    r.read_exact(&mut hb).await?;
    let h = Header::decode(&hb).map_err(invalid)?;
    if h.payload_len as usize > max {
        // Only handshakes are read with a bound below the header's own.
        return Err(invalid(WireError::Malformed {
            what: "handshake",
            why: "frame larger than a handshake",
        }));
    }
    payload.resize(h.payload_len as usize, 0);
    if h.payload_len > 0 {
        r.read_exact(payload).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid(WireError::Truncated {
                    got: 0,
                    want: h.payload_len as usize,
                })
            } else {
                e
            }
        })?;
    }
    verify_payload(&h, payload).map_err(invalid)?;
    Ok(h)
}

/// Header and payload in one buffer, ready for a single write.
pub fn encode_frame(h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(payload);
    out
}

/// Frame buffers shared by the process's connections: a writer hands a
/// buffer back after writing it, so building or receiving a large frame does
/// not allocate (and fault in) fresh memory each time.
pub mod pool {
    use std::sync::Mutex;

    use basalt_proto::wire::{Header, HEADER_LEN};

    static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    /// Buffers smaller than this are not worth keeping: malloc serves them
    /// from its free lists without touching the kernel.
    pub const MIN_KEEP: usize = 16 << 10;
    /// At most this many buffers are kept.
    const MAX_KEPT: usize = 64;

    fn lock() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
        POOL.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kept buffer (any length, contents unspecified) or an empty one.
    pub fn take_any() -> Vec<u8> {
        lock().pop().unwrap_or_default()
    }

    /// A buffer of exactly `len` bytes (contents unspecified).
    pub fn take(len: usize) -> Vec<u8> {
        let mut b = if len >= MIN_KEEP {
            take_any()
        } else {
            Vec::new()
        };
        // Shrinking is free; growing zeroes only the new tail.
        b.resize(len, 0);
        b
    }

    /// `take`, filled with `h` and `payload`.
    pub fn frame(h: &Header, payload: &[u8]) -> Vec<u8> {
        let mut b = take(HEADER_LEN + payload.len());
        b[..HEADER_LEN].copy_from_slice(&h.encode());
        b[HEADER_LEN..].copy_from_slice(payload);
        b
    }

    /// Returns a buffer that is no longer needed.
    pub fn put(b: Vec<u8>) {
        if b.capacity() >= MIN_KEEP {
            let mut p = lock();
            if p.len() < MAX_KEPT {
                p.push(b);
            }
        }
    }
}

/// A writer that fails with `TimedOut` once a write (or flush) has made no
/// progress for `timeout`: the peer stopped reading. Time spent with
/// nothing to write does not count.
pub struct StallDeadline<W> {
    inner: W,
    timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Whether `timer` runs: a write is blocked since it was set.
    armed: bool,
}

impl<W> StallDeadline<W> {
    /// Must be called inside a tokio runtime.
    pub fn new(inner: W, timeout: Duration) -> StallDeadline<W> {
        StallDeadline {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
        }
    }

    /// After the inner writer returned `Pending`: starts the clock, or
    /// fails if it ran out.
    fn blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.armed {
            self.armed = true;
            let at = tokio::time::Instant::now() + self.timeout;
            self.timer.as_mut().reset(at);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the peer read nothing for {:?} (--peer-timeout-ms): closing",
                    self.timeout
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(&mut self, r: io::Result<T>) -> Poll<io::Result<T>> {
        self.armed = false;
        Poll::Ready(r)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for StallDeadline<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.blocked(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.blocked(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.blocked(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.blocked(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_writer_stalled_past_its_deadline_fails_and_a_slow_one_does_not() {
        rt().block_on(async {
            let timeout = Duration::from_millis(100);
            // Nobody reads: the write blocks once the pipe is full, then fails.
            let (a, _b) = tokio::io::duplex(4096);
            let mut w = StallDeadline::new(a, timeout);
            let t = tokio::time::Instant::now();
            let e = w.write_all(&[0u8; 1 << 16]).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            assert!(t.elapsed() >= timeout);
            // A reader that takes a little at a time, each within the
            // deadline, never trips it, however long the whole write takes.
            let (a, mut b) = tokio::io::duplex(4096);
            let reader = tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut got = 0;
                while got < 1 << 16 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    got += b.read(&mut buf).await.unwrap();
                }
            });
            let mut w = StallDeadline::new(a, timeout);
            let t = tokio::time::Instant::now();
            w.write_all(&[0u8; 1 << 16]).await.unwrap();
            w.flush().await.unwrap();
            reader.await.unwrap();
            assert!(t.elapsed() > timeout, "the slow reader was not slow");
            // Idle time does not count.
            tokio::time::sleep(timeout * 2).await;
            let (a, mut b) = tokio::io::duplex(4096);
            let mut w = StallDeadline::new(a, timeout);
            tokio::time::sleep(timeout * 2).await;
            w.write_all(&[1u8; 100]).await.unwrap();
            let mut buf = [0u8; 100];
            b.read_exact(&mut buf).await.unwrap();
        });
    }
}
