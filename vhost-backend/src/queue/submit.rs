//! Worker side of a queue: kicks, parsing, sending, resubmission.

use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::Ordering;

use vhost_user_backend::VringT;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryMmap};

use super::frames::{encode_part, parts_of, scatter, FrameIds};
use super::{lock, QueueEngine, State, Tx, Vring};
use crate::request::{Limits, RequestKind};
use crate::stats::bump;
use crate::virtio_blk::{STATUS_IOERR, STATUS_OK};

/// Frames are written once this many bytes are buffered (and at the end of
/// every kick).
const FLUSH_BYTES: usize = 1 << 20;
/// A send buffer grown past this (by a large request: at most
/// `MAX_REQUEST_BYTES` of frames) is shrunk back after it is written.
const KEEP_BYTES: usize = 4 * FLUSH_BYTES;

type Mem = GuestMemoryMmap<()>;

impl QueueEngine {
    /// Handles a kick: takes every available chain (re-enabling
    /// notifications EVENT_IDX-style until none is left).
    pub fn handle_kick(&self, vring: &Vring) {
        if self.vring.get().is_none() {
            let _ = self.vring.set(vring.clone());
        }
        if self.draining.load(Ordering::Acquire) {
            return;
        }
        let mut tx = lock(&self.tx);
        let guard = self.mem.memory();
        let mem: &Mem = &guard;
        self.adopt_connection(&mut tx, mem);
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                if let Err(e) = vring.disable_notification() {
                    self.guest_error(format_args!("cannot disable notifications: {e}"));
                    break;
                }
            }
            while let Some((pos, chain)) = self.pop(vring, mem) {
                self.submit(&mut tx, mem, pos, chain);
                if tx.buf.len() >= FLUSH_BYTES {
                    self.flush(&mut tx);
                }
            }
            if !event_idx {
                break;
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    self.guest_error(format_args!("cannot enable notifications: {e}"));
                    break;
                }
            }
        }
        self.flush(&mut tx);
        let mut done = std::mem::take(&mut tx.done);
        self.publish(&mut done);
        tx.done = done;
    }

    /// Next available chain. A corrupt avail index is reported (rate-limited)
    /// and leaves the ring alone until the driver fixes it.
    fn pop<'m>(&self, vring: &Vring, mem: &'m Mem) -> Option<(u16, DescriptorChain<&'m Mem>)> {
        let mut v = vring.get_mut();
        let q = v.get_queue_mut();
        let pos = q.next_avail();
        match q.iter(mem) {
            Ok(mut it) => it.next().map(|c| (pos, c)),
            Err(e) => {
                drop(v);
                self.guest_error(format_args!("cannot read the available ring: {e}"));
                None
            }
        }
    }

    /// The completion thread has a new connection: adopt it and resubmit.
    pub fn handle_resubmit_event(&self) {
        let _ = self.resubmit_evt.read();
        let mut tx = lock(&self.tx);
        let guard = self.mem.memory();
        self.adopt_connection(&mut tx, &guard);
        let mut done = std::mem::take(&mut tx.done);
        self.publish(&mut done);
        tx.done = done;
    }

    fn submit(&self, tx: &mut Tx, mem: &Mem, pos: u16, chain: DescriptorChain<&Mem>) {
        let head = chain.head_index();
        let vol = &self.vol;
        let limits = Limits {
            capacity_sectors: vol.blk.capacity_sectors(),
            read_only: vol.config.read_only,
        };
        let mut st = lock(&self.state);
        st.order.taken(pos);
        let Some(slot) = st.inflight.alloc() else {
            drop(st);
            // More chains outstanding than ring entries: a broken driver.
            let status = match tx.scratch.parse(chain, mem, &limits) {
                Ok(()) => Some(tx.scratch.status),
                Err(rej) => rej.status,
            };
            self.guest_error(format_args!(
                "more requests in flight than the queue holds (descriptor {head})"
            ));
            self.fail_now(tx, mem, pos, head, status, STATUS_IOERR);
            return;
        };
        let s = st.inflight.slot_mut(slot);
        s.head = head;
        s.pos = pos;
        if let Err(rej) = s.req.parse(chain, mem, &limits) {
            st.inflight.free(slot);
            drop(st);
            self.guest_error(format_args!("descriptor {head}: {}", rej.error));
            self.fail_now(tx, mem, pos, head, rej.status, rej.error.status());
            return;
        }
        if s.req.kind == RequestKind::GetId {
            let n = (s.req.len as usize).min(vol.config.serial.len());
            let ok = scatter(mem, &s.req.data, 0, &vol.config.serial[..n]).is_ok();
            let status = if ok { STATUS_OK } else { STATUS_IOERR };
            let written = mem.write_obj(status, s.req.status).is_ok();
            st.inflight.free(slot);
            let used = if !written {
                0
            } else if ok {
                n as u32 + 1
            } else {
                1
            };
            tx.done.push((pos, head, used));
            return;
        }
        if vol.layout.is_fenced() {
            let status_addr = s.req.status;
            st.inflight.free(slot);
            drop(st);
            self.fail_now(tx, mem, pos, head, Some(status_addr), STATUS_IOERR);
            return;
        }
        s.parts = parts_of(&s.req);
        if tx.stream.is_some() {
            // Otherwise the request waits for the next connection, whose
            // adoption resubmits everything in flight.
            self.encode_slot(&mut st, slot, tx, mem);
        }
        if st.inflight.slot(slot).is_done() {
            // Nothing to send (an empty range) or every part failed.
            let used = self.finish(&mut st, slot, mem);
            tx.done.push(used);
        }
    }

    /// Appends the frames of every unfinished part of `slot` to `tx.buf`.
    fn encode_slot(&self, st: &mut State, slot: u16, tx: &mut Tx, mem: &Mem) {
        let base = st.inflight.request_id(slot, 0);
        let s = st.inflight.slot_mut(slot);
        for part in 0..s.parts {
            if s.part_done(part) {
                continue;
            }
            let ids = FrameIds {
                request_id: base | u64::from(part),
                volume_id: self.vol.config.volume_id,
                epoch: tx.epoch,
            };
            if let Err(e) = encode_part(&mut tx.buf, mem, &s.req, part, ids) {
                s.failed = true;
                s.done |= 1 << part;
                if let Some(n) = self.guest_log.check() {
                    tracing::warn!(
                        queue = self.index,
                        suppressed = n,
                        "{e}; failing the request"
                    );
                }
            }
        }
    }

    fn fail_now(
        &self,
        tx: &mut Tx,
        mem: &Mem,
        pos: u16,
        head: u16,
        status_addr: Option<vm_memory::GuestAddress>,
        status: u8,
    ) {
        bump(&self.counters().errors, 1);
        let written = status_addr.is_some_and(|a| mem.write_obj(status, a).is_ok());
        tx.done.push((pos, head, u32::from(written)));
    }

    /// Adopts a connection the completion thread established, resubmitting
    /// every unfinished part in flight; or drops a connection known dead.
    fn adopt_connection(&self, tx: &mut Tx, mem: &Mem) {
        let mut st = lock(&self.state);
        let Some(p) = st.pending.take() else {
            if st.gen != tx.gen {
                tx.stream = None;
            }
            return;
        };
        tx.stream = Some(p.stream);
        tx.epoch = p.epoch;
        tx.gen = st.gen;
        let mut resent = 0usize;
        let mut idx = 0usize;
        let capacity = st.inflight.capacity();
        loop {
            while idx < capacity && tx.buf.len() < FLUSH_BYTES {
                let slot = idx as u16;
                idx += 1;
                if st.inflight.get(usize::from(slot)).is_none() {
                    continue;
                }
                resent += 1;
                self.encode_slot(&mut st, slot, tx, mem);
                if st.inflight.slot(slot).is_done() {
                    let used = self.finish(&mut st, slot, mem);
                    tx.done.push(used);
                }
            }
            // Never write while holding `state`: see the module docs.
            drop(st);
            self.flush(tx);
            if idx >= capacity {
                break;
            }
            st = lock(&self.state);
        }
        if resent > 0 {
            tracing::info!(
                queue = self.index,
                requests = resent,
                epoch = tx.epoch,
                "resubmitted in-flight requests"
            );
        }
    }

    /// Writes buffered frames. A failed write drops the connection; the
    /// completion thread notices, reconnects and everything is resubmitted.
    fn flush(&self, tx: &mut Tx) {
        if tx.buf.is_empty() {
            return;
        }
        if let Some(w) = tx.stream.as_mut() {
            if let Err(e) = w.write_all(&tx.buf) {
                tracing::debug!(queue = self.index, "write to primary failed: {e}");
                let _ = w.get_ref().shutdown(Shutdown::Both);
                tx.stream = None;
            }
        }
        tx.buf.clear();
        if tx.buf.capacity() > KEEP_BYTES {
            tx.buf.shrink_to(FLUSH_BYTES);
        }
    }
}
