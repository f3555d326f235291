//! One virtqueue's engine.
//!
//! Two threads work on a queue and share only this queue's state:
//! - the vhost-user-backend worker thread of the queue (`submit.rs`): on a
//!   kick it pops the available chains, parses them, registers them in the
//!   in-flight table and writes their frames to the primary; it is the only
//!   writer of the primary connection (it also resubmits after a reconnect);
//! - the completion thread (`complete.rs`): owns the read side of the
//!   connection, completes requests into the used ring, signals the guest,
//!   and reconnects when the connection fails.
//!
//! Lock order: `tx` (worker only, plus drain as a barrier) before `state`
//! before the vring. No lock is held across a socket write except `tx`,
//! which the completion thread never takes, so a full socket cannot stall
//! completions.

mod complete;
pub mod frames;
pub mod order;
mod submit;

use std::net::{Shutdown, TcpStream};

use basalt_auth::session::SealWriter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost_user_backend::{VringMutex, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::inflight::Inflight;
use crate::ratelimit::RateLimiter;
use crate::request::{Request, RequestKind};
use crate::stats::{bump, QueueCounters};
use crate::virtio_blk::{STATUS_IOERR, STATUS_OK};
use crate::volume::Volume;

pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap<()>>;
pub type Vring = VringMutex<GuestMem>;

/// A completed chain: its available-ring position, head index and bytes
/// written into it.
type Used = (u16, u16, u32);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A connection the completion thread established, waiting for the worker.
struct Pending {
    stream: SealWriter<TcpStream>,
    epoch: u64,
}

struct State {
    inflight: Inflight,
    /// Publication in available-ring order (see `order.rs`).
    order: order::InOrder,
    /// Chains ready to publish, in order (kept to reuse its allocation).
    out: Vec<order::Used>,
    pending: Option<Pending>,
    /// Clone of the live connection, to shut it down from anywhere.
    live: Option<TcpStream>,
    /// Changes whenever a connection is established or lost.
    gen: u64,
    /// Epoch of the live connection.
    epoch: u64,
}

/// Worker-side state.
struct Tx {
    stream: Option<SealWriter<TcpStream>>,
    epoch: u64,
    gen: u64,
    /// Frames waiting to be written.
    buf: Vec<u8>,
    /// Chains completed by the worker itself (errors, GET_ID).
    done: Vec<Used>,
    /// Parse target when the in-flight table is full.
    scratch: Request,
}

pub struct QueueEngine {
    index: u16,
    vol: Arc<Volume>,
    mem: GuestMem,
    state: Mutex<State>,
    /// Signalled when the in-flight table becomes empty.
    idle: Condvar,
    /// Wakes the completion thread from a retry pause.
    wake: Condvar,
    tx: Mutex<Tx>,
    vring: OnceLock<Vring>,
    /// Written by the completion thread when the worker has a new connection
    /// to adopt (and requests to resubmit).
    resubmit_evt: EventFd,
    counters: Arc<QueueCounters>,
    event_idx: AtomicBool,
    stop: AtomicBool,
    draining: AtomicBool,
    guest_log: RateLimiter,
    conn_log: RateLimiter,
    completer: Mutex<Option<JoinHandle<()>>>,
}

impl QueueEngine {
    pub fn new(index: u16, vol: Arc<Volume>, mem: GuestMem) -> std::io::Result<QueueEngine> {
        let qsize = vol.config.queue_size;
        let log_interval = vol.config.log_interval;
        let counters = vol
            .stats
            .queue(usize::from(index))
            .cloned()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("no counters for queue {index}"),
                )
            })?;
        Ok(QueueEngine {
            counters,
            index,
            mem,
            state: Mutex::new(State {
                inflight: Inflight::new(qsize),
                order: order::InOrder::new(qsize),
                out: Vec::with_capacity(usize::from(qsize)),
                pending: None,
                live: None,
                gen: 0,
                epoch: 0,
            }),
            idle: Condvar::new(),
            wake: Condvar::new(),
            tx: Mutex::new(Tx {
                stream: None,
                epoch: 0,
                gen: 0,
                buf: Vec::with_capacity(64 << 10),
                done: Vec::with_capacity(usize::from(qsize)),
                scratch: Request::default(),
            }),
            vring: OnceLock::new(),
            resubmit_evt: EventFd::new(EFD_NONBLOCK)?,
            event_idx: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            guest_log: RateLimiter::new(log_interval),
            conn_log: RateLimiter::new(log_interval),
            completer: Mutex::new(None),
            vol,
        })
    }

    pub fn resubmit_fd(&self) -> &EventFd {
        &self.resubmit_evt
    }

    pub fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn counters(&self) -> &QueueCounters {
        &self.counters
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Starts the completion thread, which connects to the primary.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let me = self.clone();
        let h = std::thread::Builder::new()
            .name(format!("basalt-cq{}", self.index))
            .spawn(move || me.run_completions())?;
        *lock(&self.completer) = Some(h);
        Ok(())
    }

    /// Waits until nothing is in flight, at most `timeout`; then abandons
    /// what is left. With `stop_accepting`, no new chains are taken first.
    pub fn drain(&self, deadline: Instant, stop_accepting: bool) -> bool {
        if stop_accepting {
            self.draining.store(true, Ordering::Release);
        }
        // Barrier: a kick in progress finishes registering its chains (but
        // a worker stuck writing to a hung primary does not hold us past
        // the deadline).
        while let Err(std::sync::TryLockError::WouldBlock) = self.tx.try_lock() {
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let st = lock(&self.state);
        let wait = deadline.saturating_duration_since(Instant::now());
        let (mut st, _) = self
            .idle
            .wait_timeout_while(st, wait, |s| !s.inflight.is_empty())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if st.inflight.is_empty() {
            return true;
        }
        tracing::error!(
            queue = self.index,
            requests = st.inflight.len(),
            "abandoning in-flight requests: the primary did not answer before the drain timeout \
             (--drain-timeout-ms); the guest will not see them complete"
        );
        st.inflight.clear();
        st.order.reset();
        false
    }

    /// Forgets every request in flight (device reset: the rings are gone).
    pub fn abandon(&self) {
        let mut st = lock(&self.state);
        if !st.inflight.is_empty() {
            tracing::warn!(
                queue = self.index,
                requests = st.inflight.len(),
                "device reset with requests in flight; dropping them"
            );
        }
        st.inflight.clear();
        st.order.reset();
        self.idle.notify_all();
    }

    /// Stops the completion thread and closes the connection.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        {
            let mut st = lock(&self.state);
            st.pending = None;
            if let Some(s) = st.live.take() {
                let _ = s.shutdown(Shutdown::Both);
            }
            st.inflight.clear();
            self.idle.notify_all();
            self.wake.notify_all();
        }
        if let Some(h) = lock(&self.completer).take() {
            let _ = h.join();
        }
        lock(&self.tx).stream = None;
    }

    fn pause(&self, d: Duration) {
        let st = lock(&self.state);
        let _ = self.wake.wait_timeout_while(st, d, |_| !self.stopped());
    }

    /// Writes the status of a finished request, frees its slot and returns
    /// what to put in the used ring.
    fn finish(&self, st: &mut State, slot: u16, mem: &GuestMemoryMmap<()>) -> Used {
        let s = st.inflight.slot(slot);
        let ok = !s.failed;
        let written = mem
            .write_obj(if ok { STATUS_OK } else { STATUS_IOERR }, s.req.status)
            .is_ok();
        let c = self.counters();
        match s.req.kind {
            RequestKind::In => bump(&c.reads, 1),
            RequestKind::Out => bump(&c.writes, 1),
            RequestKind::Flush => bump(&c.flushes, 1),
            RequestKind::Discard => bump(&c.discards, 1),
            RequestKind::WriteZeroes => bump(&c.write_zeroes, 1),
            RequestKind::GetId => {}
        }
        match (ok, s.req.kind) {
            (false, _) => bump(&c.errors, 1),
            (true, RequestKind::In) => bump(&c.bytes_read, s.req.len),
            (true, RequestKind::Out) => bump(&c.bytes_written, s.req.len),
            _ => {}
        }
        let used = match (written, ok, s.req.kind) {
            (false, _, _) => 0,
            (true, true, RequestKind::In) => s.req.len as u32 + 1,
            _ => 1,
        };
        let (pos, head) = (s.pos, s.head);
        st.inflight.free(slot);
        if st.inflight.is_empty() {
            self.idle.notify_all();
        }
        (pos, head, used)
    }

    /// Puts completed chains in the used ring, in available-ring order (a
    /// chain waits for the older ones), and notifies the guest if it asked
    /// to be (EVENT_IDX).
    fn publish(&self, done: &mut Vec<Used>) {
        if done.is_empty() {
            return;
        }
        let Some(vring) = self.vring.get() else {
            done.clear();
            return;
        };
        // Lock order: state before vring.
        let mut st = lock(&self.state);
        let State { order, out, .. } = &mut *st;
        for (pos, head, len) in done.drain(..) {
            order.finished(pos, (head, len));
        }
        order.drain_into(out);
        if out.is_empty() {
            return;
        }
        let mut v = vring.get_mut();
        if !v.get_queue().ready() {
            // The ring was stopped (GET_VRING_BASE) or reset: it is not ours.
            out.clear();
            return;
        }
        for (head, len) in out.drain(..) {
            if let Err(e) = v.add_used(head, len) {
                self.guest_error(format_args!(
                    "cannot return descriptor {head} to the used ring: {e}"
                ));
            }
        }
        if v.needs_notification().unwrap_or(true) {
            if let Err(e) = v.signal_used_queue() {
                self.guest_error(format_args!("cannot signal the guest: {e}"));
            }
        }
    }

    fn guest_error(&self, what: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.guest_log.check() {
            tracing::warn!(
                queue = self.index,
                suppressed,
                "guest request error: {what}"
            );
        }
    }
}
