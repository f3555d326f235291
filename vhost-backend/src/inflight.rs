//! Per-queue table of requests in flight to the primary.
//!
//! A slab of slots allocated once per queue and reused: a slot keeps its
//! [`Request`] (and the capacity of its vectors) between uses, so steady-state
//! I/O does not allocate. A request split into several wire requests
//! ("parts") completes when every part has.
//!
//! Wire request ids are `tag << 32 | slot << 8 | part`; the tag changes every
//! time a slot is reused, so a late or duplicated response for an older use
//! of the slot is recognised and ignored.

use crate::request::Request;

/// Most parts one guest request may be split into (bits of [`Slot::done`]).
pub const MAX_PARTS: u32 = 64;

#[derive(Debug, Default)]
pub struct Slot {
    pub req: Request,
    /// Descriptor chain head to return to the used ring.
    pub head: u16,
    /// Position in the available ring it was taken from.
    pub pos: u16,
    /// Number of wire requests.
    pub parts: u32,
    /// Bit `p` set once part `p` is finished (answered or failed).
    pub done: u64,
    /// A part failed with a non-retryable error: complete with IOERR.
    pub failed: bool,
    tag: u32,
    in_use: bool,
}

impl Slot {
    pub fn is_done(&self) -> bool {
        self.done == all_parts(self.parts)
    }

    pub fn part_done(&self, part: u32) -> bool {
        self.done & (1 << part) != 0
    }
}

fn all_parts(parts: u32) -> u64 {
    if parts >= 64 {
        u64::MAX
    } else {
        (1u64 << parts) - 1
    }
}

#[derive(Debug)]
pub struct Inflight {
    slots: Vec<Slot>,
    free: Vec<u16>,
    next_tag: u32,
}

impl Inflight {
    /// A table for at most `capacity` concurrent requests (the queue size:
    /// a well-behaved driver cannot have more chains outstanding).
    pub fn new(capacity: u16) -> Inflight {
        Inflight {
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            free: (0..capacity).rev().collect(),
            next_tag: 1,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    /// Takes a free slot; `None` when full (a misbehaving driver).
    pub fn alloc(&mut self) -> Option<u16> {
        let idx = self.free.pop()?;
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1).max(1);
        let s = &mut self.slots[idx as usize];
        s.tag = tag;
        s.in_use = true;
        s.parts = 0;
        s.done = 0;
        s.failed = false;
        Some(idx)
    }

    pub fn free(&mut self, idx: u16) {
        let s = &mut self.slots[idx as usize];
        if s.in_use {
            s.in_use = false;
            self.free.push(idx);
        }
    }

    /// Frees every slot (the requests are abandoned).
    pub fn clear(&mut self) {
        for i in 0..self.slots.len() {
            self.free(i as u16);
        }
    }

    pub fn slot(&self, idx: u16) -> &Slot {
        &self.slots[idx as usize]
    }

    pub fn slot_mut(&mut self, idx: u16) -> &mut Slot {
        &mut self.slots[idx as usize]
    }

    /// The slot at `idx` if it is in use.
    pub fn get(&self, idx: usize) -> Option<&Slot> {
        self.slots.get(idx).filter(|s| s.in_use)
    }

    pub fn request_id(&self, idx: u16, part: u32) -> u64 {
        (u64::from(self.slots[idx as usize].tag) << 32) | (u64::from(idx) << 8) | u64::from(part)
    }

    /// Resolves a response's request id to `(slot, part)` if it names an
    /// unfinished part of a request in flight.
    pub fn lookup(&self, id: u64) -> Option<(u16, u32)> {
        let tag = (id >> 32) as u32;
        let idx = ((id >> 8) & 0xffff) as u16;
        let part = (id & 0xff) as u32;
        if (id >> 24) & 0xff != 0 {
            return None;
        }
        let s = self.slots.get(idx as usize)?;
        if !s.in_use || s.tag != tag || part >= s.parts || s.part_done(part) {
            return None;
        }
        Some((idx, part))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_reuse() {
        let mut t = Inflight::new(2);
        let a = t.alloc().unwrap();
        let b = t.alloc().unwrap();
        assert_ne!(a, b);
        assert!(t.alloc().is_none());
        assert_eq!(t.len(), 2);
        t.free(a);
        t.free(a); // double free is harmless
        assert_eq!(t.len(), 1);
        assert_eq!(t.alloc(), Some(a));
        t.clear();
        assert!(t.is_empty());
    }

    #[test]
    fn ids_resolve_and_go_stale() {
        let mut t = Inflight::new(4);
        let a = t.alloc().unwrap();
        t.slot_mut(a).parts = 3;
        let id = t.request_id(a, 2);
        assert_eq!(t.lookup(id), Some((a, 2)));
        assert_eq!(t.lookup(t.request_id(a, 3)), None, "part out of range");
        t.slot_mut(a).done |= 1 << 2;
        assert_eq!(t.lookup(id), None, "part already done");
        assert!(!t.slot(a).is_done());
        t.slot_mut(a).done = 0b111;
        assert!(t.slot(a).is_done());
        t.free(a);
        assert_eq!(t.lookup(id), None, "freed");
        let again = t.alloc().unwrap();
        t.slot_mut(again).parts = 3;
        assert_eq!(again, a);
        assert_eq!(t.lookup(id), None, "old tag after reuse");
        assert!(t.lookup(u64::MAX).is_none());
        assert!(t.lookup(1 << 24).is_none());
    }

    #[test]
    fn all_parts_mask() {
        assert_eq!(all_parts(1), 1);
        assert_eq!(all_parts(64), u64::MAX);
        let mut s = Slot {
            parts: 0,
            ..Default::default()
        };
        assert!(s.is_done(), "zero parts: done at once");
        s.parts = 64;
        s.done = u64::MAX;
        assert!(s.is_done());
    }
}
