//! Completions are published to the used ring in the order their chains
//! were taken from the available ring.
//!
//! Why: if the backend dies, QEMU (without the inflight-tracking protocol
//! feature, which vhost-user-backend does not offer) rewinds the ring to the
//! used index when the restarted backend reconnects, and hands it every chain
//! from there again. That is exactly right when the used ring is an in-order
//! prefix of the available ring: the chains after it are the ones that never
//! completed, and each is executed again (reads and writes are idempotent;
//! nothing the guest saw as complete is repeated). With out-of-order
//! publication the rewind would repeat completed chains and skip pending
//! ones. The cost is head-of-line blocking of completions, small here since
//! one primary connection answers a queue's requests nearly in order.

/// A finished chain: head index and bytes written into it.
pub type Used = (u16, u32);

#[derive(Debug)]
pub struct InOrder {
    /// Available-ring position of the oldest chain not yet published.
    next: u16,
    /// Chains taken and not yet published.
    outstanding: usize,
    /// Finished chains waiting for the older ones, by position modulo size.
    ready: Vec<Option<Used>>,
}

impl InOrder {
    /// `size`: the largest queue size (a power of two), so positions of
    /// chains outstanding at once never collide modulo it.
    pub fn new(size: u16) -> InOrder {
        InOrder {
            next: 0,
            outstanding: 0,
            ready: vec![None; usize::from(size.max(1))],
        }
    }

    fn index(&self, pos: u16) -> usize {
        usize::from(pos) % self.ready.len()
    }

    /// A chain was taken from the available ring at `pos`.
    pub fn taken(&mut self, pos: u16) {
        if self.outstanding == 0 {
            // Idle: the ring may have been reset or rebased since.
            self.next = pos;
        }
        self.outstanding += 1;
    }

    /// The chain taken at `pos` finished.
    pub fn finished(&mut self, pos: u16, used: Used) {
        let i = self.index(pos);
        self.ready[i] = Some(used);
    }

    /// Moves the finished chains that no older chain is waiting for to `out`.
    pub fn drain_into(&mut self, out: &mut Vec<Used>) {
        while self.outstanding > 0 {
            let i = self.index(self.next);
            let Some(u) = self.ready[i].take() else {
                break;
            };
            out.push(u);
            self.next = self.next.wrapping_add(1);
            self.outstanding -= 1;
        }
    }

    /// Forgets everything (the rings are gone or abandoned).
    pub fn reset(&mut self) {
        self.outstanding = 0;
        self.ready.iter_mut().for_each(|r| *r = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_in_ring_order_only() {
        let mut o = InOrder::new(4);
        let mut out = Vec::new();
        for pos in [65534u16, 65535, 0] {
            o.taken(pos);
        }
        o.finished(0, (30, 1));
        o.finished(65535, (20, 1));
        o.drain_into(&mut out);
        assert!(out.is_empty(), "the oldest chain is still pending");
        o.finished(65534, (10, 1));
        o.drain_into(&mut out);
        assert_eq!(out, vec![(10, 1), (20, 1), (30, 1)]);
        // Idle again: a rebased ring starts wherever it says.
        o.taken(7);
        o.finished(7, (1, 1));
        out.clear();
        o.drain_into(&mut out);
        assert_eq!(out, vec![(1, 1)]);
    }

    #[test]
    fn reset_forgets_pending_chains() {
        let mut o = InOrder::new(8);
        o.taken(1);
        o.taken(2);
        o.finished(2, (5, 1));
        o.reset();
        let mut out = Vec::new();
        o.taken(9);
        o.finished(9, (6, 1));
        o.drain_into(&mut out);
        assert_eq!(out, vec![(6, 1)]);
    }
}
