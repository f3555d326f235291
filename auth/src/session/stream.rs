//! Readers and writers of sealed records, blocking (`std::io`) and async
//! (tokio). A writer seals what it is given as records of at most
//! [`MAX_PLAINTEXT`] bytes; a reader opens records into its buffer and hands
//! out their plaintext, so it needs no `BufReader` above it.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::record::{Opener, Sealer, LEN_LEN, MAX_PLAINTEXT, MAX_RECORD};

/// The buffer of a reader: raw bytes read ahead, and the plaintext of the
/// last record opened, in place.
struct OpenBuf {
    /// None: frames in the clear (raw bytes are plaintext).
    opener: Option<Opener>,
    buf: Box<[u8]>,
    /// Plaintext not yet handed out: `buf[plain.0..plain.1]`.
    plain: (usize, usize),
    /// Raw bytes not yet opened: `buf[raw.0..raw.1]`.
    raw: (usize, usize),
}

enum Step<'a> {
    /// Plaintext is available.
    Ready,
    /// Read more raw bytes into this slice.
    Want(&'a mut [u8]),
}

impl OpenBuf {
    fn new(opener: Option<Opener>) -> OpenBuf {
        OpenBuf {
            opener,
            // Room for a whole record and a read ahead of the next.
            buf: vec![0u8; 2 * MAX_RECORD].into_boxed_slice(),
            plain: (0, 0),
            raw: (0, 0),
        }
    }

    fn step(&mut self) -> io::Result<Step<'_>> {
        if self.plain.0 < self.plain.1 {
            return Ok(Step::Ready);
        }
        let (start, end) = self.raw;
        let Some(opener) = self.opener.as_mut() else {
            if start < end {
                self.plain = (start, end);
                self.raw = (end, end);
                return Ok(Step::Ready);
            }
            self.raw = (0, 0);
            self.plain = (0, 0);
            return Ok(Step::Want(&mut self.buf[..]));
        };
        if end - start >= LEN_LEN {
            let mut prefix = [0u8; LEN_LEN];
            prefix.copy_from_slice(&self.buf[start..start + LEN_LEN]);
            let body = Opener::body_len(prefix)?;
            let whole = LEN_LEN + body;
            if end - start >= whole {
                let at = start + LEN_LEN;
                let n = opener.open_in_place(&mut self.buf[at..at + body])?;
                self.plain = (at, at + n);
                self.raw = (start + whole, end);
                return Ok(Step::Ready);
            }
        }
        // Keep the partial record at the front, so a whole one fits.
        if start > 0 && end + MAX_RECORD > self.buf.len() {
            self.buf.copy_within(start..end, 0);
            self.raw = (0, end - start);
        }
        let end = self.raw.1;
        Ok(Step::Want(&mut self.buf[end..]))
    }

    fn filled(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return if self.raw.0 == self.raw.1 {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a sealed record",
                ))
            };
        }
        self.raw.1 += n;
        Ok(())
    }

    fn take(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.plain.1 - self.plain.0);
        out[..n].copy_from_slice(&self.buf[self.plain.0..self.plain.0 + n]);
        self.plain.0 += n;
        n
    }
}

/// Opens the sealed records read from `R`.
pub struct OpenReader<R> {
    inner: R,
    buf: OpenBuf,
}

impl<R> OpenReader<R> {
    /// `opener` None: the bytes are frames in the clear.
    pub fn new(inner: R, opener: Option<Opener>) -> Self {
        OpenReader {
            inner,
            buf: OpenBuf::new(opener),
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Whether `min` bytes of plaintext, or a whole record, are buffered:
    /// a read of `min` bytes then needs no more input unless the record is
    /// short.
    pub fn buffered_ready(&self, min: usize) -> bool {
        let b = &self.buf;
        if b.plain.1 - b.plain.0 >= min {
            return true;
        }
        let (start, end) = b.raw;
        if b.opener.is_none() {
            return b.plain.1 - b.plain.0 + (end - start) >= min;
        }
        if end - start < LEN_LEN {
            return false;
        }
        let mut prefix = [0u8; LEN_LEN];
        prefix.copy_from_slice(&b.buf[start..start + LEN_LEN]);
        // A bad length is "ready" too: the read reports it.
        Opener::body_len(prefix).map_or(true, |n| end - start >= LEN_LEN + n)
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match self.buf.step()? {
                Step::Ready => return Ok(self.buf.take(out)),
                Step::Want(spare) => {
                    let n = self.inner.read(spare)?;
                    self.buf.filled(n)?;
                    if n == 0 {
                        return Ok(0);
                    }
                }
            }
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for OpenReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match this.buf.step()? {
                Step::Ready => {
                    let n = this.buf.take(out.initialize_unfilled());
                    out.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Step::Want(spare) => {
                    let mut rb = ReadBuf::new(spare);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) => {
                            let n = rb.filled().len();
                            this.buf.filled(n)?;
                            if n == 0 {
                                return Poll::Ready(Ok(()));
                            }
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }
}

/// Seals what is written to it and writes the records to `W`.
pub struct SealWriter<W> {
    inner: W,
    /// None: frames in the clear.
    sealer: Option<Sealer>,
    /// Sealed bytes not yet written: `out[pos..]`.
    out: Vec<u8>,
    pos: usize,
}

impl<W> SealWriter<W> {
    /// `sealer` None: writes frames in the clear.
    pub fn new(inner: W, sealer: Option<Sealer>) -> Self {
        SealWriter {
            inner,
            sealer,
            out: Vec::new(),
            pos: 0,
        }
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    fn seal(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(MAX_PLAINTEXT);
        match self.sealer.as_mut() {
            Some(s) => s.seal_into(&buf[..n], &mut self.out)?,
            None => self.out.extend_from_slice(&buf[..n]),
        }
        Ok(n)
    }

    /// Seals a prefix of `bufs` (up to a record's worth) as one record.
    fn seal_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut parts: Vec<&[u8]> = Vec::with_capacity(bufs.len());
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(MAX_PLAINTEXT - n);
            parts.push(&b[..take]);
            n += take;
            if n == MAX_PLAINTEXT {
                break;
            }
        }
        match self.sealer.as_mut() {
            Some(s) => s.seal_parts_into(&parts, &mut self.out)?,
            None => parts.iter().for_each(|p| self.out.extend_from_slice(p)),
        }
        Ok(n)
    }

    fn reset(&mut self) {
        self.out.clear();
        self.pos = 0;
        if self.out.capacity() > 4 * MAX_RECORD {
            self.out.shrink_to(MAX_RECORD);
        }
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reset();
        let n = self.seal(buf)?;
        self.inner.write_all(&self.out)?;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.reset();
        let n = self.seal_vectored(bufs)?;
        self.inner.write_all(&self.out)?;
        Ok(n)
    }

    /// Seals all of `buf` and writes the records in one call.
    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        self.reset();
        while !buf.is_empty() {
            let n = self.seal(buf)?;
            buf = &buf[n..];
        }
        self.inner.write_all(&self.out)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: AsyncWrite + Unpin> SealWriter<W> {
    /// Writes out what was sealed and not yet written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pos < self.out.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.out[self.pos..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.pos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.reset();
        Poll::Ready(Ok(()))
    }

    /// Accepts a write once what was sealed before is written: seals it
    /// with `seal` and starts writing; what does not fit is written by the
    /// next call or the flush.
    fn poll_sealed(
        &mut self,
        cx: &mut Context<'_>,
        empty: bool,
        seal: impl FnOnce(&mut Self) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        if empty {
            return Poll::Ready(Ok(0));
        }
        let n = seal(self)?;
        if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SealWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_sealed(cx, buf.is_empty(), |w| w.seal(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let empty = bufs.iter().all(|b| b.is_empty());
        self.get_mut()
            .poll_sealed(cx, empty, |w| w.seal_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
}
