//! Completion side of a queue: connection management and responses.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_auth::session::OpenReader;
use basalt_proto::wire::{read_frame, Header, Status, HEADER_LEN};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

use super::frames::{opcode, part_span, scatter};
use super::{lock, Pending, QueueEngine, Used};
use crate::failover::Reported;
use crate::layout::LayoutSnapshot;
use crate::primary::{self, ConnectError};
use crate::request::RequestKind;
use crate::stats::bump;

/// Why a connection was given up.
enum End {
    Stopped,
    Io(io::Error),
    Protocol(&'static str),
    Retry(Status),
    /// The primary refused our role or volume: the layout may be out of date.
    Refused(Status),
    Stale {
        ours: u64,
        theirs: u64,
    },
    /// No answer to any request in flight for this long.
    Timeout(Duration),
    /// Our attachment was superseded: fenced for good.
    Fenced,
}

/// What to ask the control service after a connection ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ask {
    Nothing,
    /// The primary cannot be reached: fail over if control cannot either.
    Report,
    /// The primary refused us: what is the current layout?
    Refresh,
}

/// Waits up to `timeout` (zero: just looks) for `fd` to be readable.
fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n != 0
}

impl QueueEngine {
    pub(super) fn run_completions(self: Arc<Self>) {
        let mut payload = Vec::new();
        let mut done: Vec<Used> = Vec::with_capacity(usize::from(self.vol.config.queue_size));
        let mut pause = false;
        while !self.stopped() {
            if pause {
                self.pause(self.vol.config.retry_interval);
            }
            pause = true;
            if self.vol.layout.is_fenced() {
                // Nothing is sent any more; whatever a worker registered
                // meanwhile fails.
                self.fail_inflight(&mut done);
                continue;
            }
            let seen = self.vol.layout.snapshot();
            let (ask, lost) = match self.establish(&seen) {
                Err(ask) => (ask, false),
                Ok(reader) => {
                    let end = self.read_responses(reader, &mut payload, &mut done);
                    self.publish(&mut done);
                    self.disconnect();
                    let ask = match &end {
                        End::Timeout(_) => Ask::Report,
                        End::Refused(_) | End::Stale { .. } => Ask::Refresh,
                        End::Fenced => {
                            self.vol.layout.fence();
                            Ask::Nothing
                        }
                        _ => Ask::Nothing,
                    };
                    let lost = matches!(end, End::Io(_));
                    self.report(end);
                    (ask, lost)
                }
            };
            if self.stopped() {
                break;
            }
            // A lost connection is retried at once: if the primary is gone,
            // the refused reconnect reports it without waiting.
            let reported = match ask {
                Ask::Nothing if lost => Reported::Changed,
                Ask::Nothing => Reported::Unchanged,
                Ask::Report => self.vol.failover.report(self.index, &seen),
                Ask::Refresh => self.vol.failover.refresh(self.index, &seen),
            };
            match reported {
                Reported::Changed => pause = false,
                Reported::Fenced => self.fail_inflight(&mut done),
                Reported::Unchanged => {}
            }
        }
    }

    /// Connects to the primary of `layout`; on failure, says what to ask
    /// the control service.
    fn establish(&self, layout: &LayoutSnapshot) -> Result<OpenReader<TcpStream>, Ask> {
        let conn = match primary::connect(&layout.primary, &self.vol.connect) {
            Ok(c) => c,
            Err(e) => {
                if let Some(n) = self.conn_log.check() {
                    tracing::warn!(
                        queue = self.index,
                        suppressed = n,
                        "{e} (retrying every {:?})",
                        self.vol.config.retry_interval
                    );
                }
                return Err(match e {
                    ConnectError::Connect { .. } | ConnectError::Handshake { .. } => Ask::Report,
                    ConnectError::Rejected { .. } => Ask::Refresh,
                    _ => Ask::Nothing,
                });
            }
        };
        let primary::Connection {
            raw: live,
            reader,
            writer: w,
        } = conn;
        let in_flight = {
            let mut st = lock(&self.state);
            if self.stopped() {
                return Err(Ask::Nothing);
            }
            st.gen += 1;
            st.epoch = layout.epoch;
            st.pending = Some(Pending {
                stream: w,
                epoch: layout.epoch,
            });
            st.live = Some(live);
            st.inflight.len()
        };
        bump(&self.counters().reconnects, 1);
        tracing::info!(queue = self.index, primary = %layout.primary, epoch = layout.epoch, in_flight, "connected to primary");
        if let Err(e) = self.resubmit_evt.write(1) {
            tracing::error!(queue = self.index, "cannot wake the queue worker: {e}");
        }
        Ok(reader)
    }

    /// Fails every request in flight (the guest sees IOERR): this backend
    /// was fenced.
    fn fail_inflight(&self, done: &mut Vec<Used>) {
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap<()> = &guard;
        let mut st = lock(&self.state);
        let slots: Vec<u16> = (0..st.inflight.capacity())
            .filter(|&i| st.inflight.get(i).is_some())
            .map(|i| i as u16)
            .collect();
        for slot in slots {
            st.inflight.slot_mut(slot).failed = true;
            done.push(self.finish(&mut st, slot, mem));
        }
        drop(st);
        self.publish(done);
    }

    fn disconnect(&self) {
        let mut st = lock(&self.state);
        st.gen += 1;
        st.pending = None;
        if let Some(s) = st.live.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn report(&self, end: End) {
        let interval = self.vol.config.retry_interval;
        let (q, quiet) = (self.index, self.stopped());
        if !matches!(end, End::Stopped) && !quiet {
            bump(&self.counters().retries, 1);
        }
        match end {
            End::Stopped => {}
            _ if quiet => {}
            End::Io(e) => {
                if let Some(n) = self.conn_log.check() {
                    tracing::warn!(queue = q, suppressed = n, "connection to primary lost ({e}); reconnecting in {interval:?} and resubmitting in-flight requests");
                }
            }
            End::Protocol(what) => {
                if let Some(n) = self.conn_log.check() {
                    tracing::error!(
                        queue = q,
                        suppressed = n,
                        "primary broke the protocol ({what}); reconnecting in {interval:?}"
                    );
                }
            }
            End::Stale { ours, theirs } => {
                if let Some(n) = self.conn_log.check() {
                    tracing::error!(
                        queue = q,
                        suppressed = n,
                        ours,
                        theirs,
                        "primary refused our epoch as stale: this backend has been fenced; requests wait \
                         for a new layout from the control service (retrying every {interval:?})"
                    );
                }
            }
            End::Retry(status) => {
                if let Some(n) = self.conn_log.check() {
                    tracing::warn!(queue = q, suppressed = n, "primary answered {status:?}; reconnecting in {interval:?} and resubmitting in-flight requests");
                }
            }
            End::Refused(status) => {
                if let Some(n) = self.conn_log.check() {
                    tracing::warn!(queue = q, suppressed = n, "primary refused us ({status:?}): asking the control service for the current layout");
                }
            }
            End::Fenced => {
                tracing::error!(
                    queue = q,
                    attachment = self.vol.config.attachment,
                    "the primary refused our attachment as superseded (the volume was attached \
                     elsewhere with force, or detached): failing every request from now on"
                );
            }
            End::Timeout(d) => {
                if let Some(n) = self.conn_log.check() {
                    tracing::warn!(queue = q, suppressed = n, "primary answered nothing for {d:?} (--request-timeout-ms): reporting it to the control service");
                }
            }
        }
    }

    fn read_responses(
        &self,
        mut rd: OpenReader<TcpStream>,
        payload: &mut Vec<u8>,
        done: &mut Vec<Used>,
    ) -> End {
        let fd = rd.get_ref().as_raw_fd();
        let timeout = self.vol.config.request_timeout;
        // Backstop for a primary that stops in the middle of a frame.
        if let Err(e) = rd.get_ref().set_read_timeout(Some(timeout)) {
            return End::Io(e);
        }
        let tick = (timeout / 4).clamp(Duration::from_millis(1), Duration::from_millis(50));
        let mut progress = Instant::now();
        loop {
            // Between frames: wait for data, watching for a primary that
            // answers none of the requests in flight.
            while !rd.buffered_ready(HEADER_LEN) && !wait_readable(fd, tick) {
                if self.stopped() {
                    return End::Stopped;
                }
                if lock(&self.state).inflight.is_empty() {
                    progress = Instant::now();
                } else if progress.elapsed() >= timeout {
                    return End::Timeout(progress.elapsed());
                }
            }
            let h = match read_frame(&mut rd, payload) {
                Ok(h) => h,
                Err(_) if self.stopped() => return End::Stopped,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return End::Timeout(progress.elapsed())
                }
                Err(e) => return End::Io(e),
            };
            progress = Instant::now();
            if let Err(end) = self.on_response(&h, payload, done) {
                return end;
            }
            // Signal the guest once per burst: when no further response is
            // buffered (not even its header) or waiting on the socket.
            if done.len() >= done.capacity()
                || (!rd.buffered_ready(HEADER_LEN) && !wait_readable(fd, Duration::ZERO))
            {
                self.publish(done);
            }
        }
    }

    fn on_response(&self, h: &Header, payload: &[u8], done: &mut Vec<Used>) -> Result<(), End> {
        if !h.is_response() {
            return Err(End::Protocol(
                "a request frame where a response was expected",
            ));
        }
        if h.volume_id != self.vol.config.volume_id {
            return Err(End::Protocol("a response for another volume"));
        }
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap<()> = &guard;
        let mut st = lock(&self.state);
        let Some((slot, part)) = st.inflight.lookup(h.request_id) else {
            // An abandoned request (drain timeout, reset) or a duplicate.
            tracing::debug!(
                queue = self.index,
                id = h.request_id,
                "response for no request in flight; ignored"
            );
            return Ok(());
        };
        let ours = st.epoch;
        let s = st.inflight.slot_mut(slot);
        if h.opcode != opcode(s.req.kind) {
            return Err(End::Protocol("a response with the wrong opcode"));
        }
        match h.status {
            Status::Ok if s.req.kind == RequestKind::In => {
                let (off, len) = part_span(&s.req, part);
                if payload.len() != len as usize {
                    return Err(End::Protocol("a read response of the wrong length"));
                }
                if let Err(e) = scatter(mem, &s.req.data, off, payload) {
                    s.failed = true;
                    self.guest_error(format_args!("{e}"));
                }
            }
            Status::Ok => {}
            Status::StaleEpoch => {
                return Err(End::Stale {
                    ours,
                    theirs: h.epoch,
                });
            }
            Status::WrongRole | Status::NoSuchVolume | Status::LayoutPending => {
                return Err(End::Refused(h.status))
            }
            Status::Fenced => return Err(End::Fenced),
            Status::MirrorUnavailable => return Err(End::Retry(h.status)),
            other => {
                s.failed = true;
                if let Some(n) = self.conn_log.check() {
                    tracing::warn!(
                        queue = self.index,
                        suppressed = n,
                        "primary answered {other:?} to {:?} at offset {}; failing the guest request with IOERR",
                        s.req.kind,
                        h.offset
                    );
                }
            }
        }
        s.done |= 1 << part;
        if s.is_done() {
            done.push(self.finish(&mut st, slot, mem));
        }
        Ok(())
    }
}
