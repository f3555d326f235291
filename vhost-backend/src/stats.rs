//! Per-queue counters: plain atomics, each queue on its own cache line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Live counters of one virtqueue.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct QueueCounters {
    pub(crate) reads: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) discards: AtomicU64,
    pub(crate) write_zeroes: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

/// A point-in-time copy of [`QueueCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Guest read requests completed (any status).
    pub reads: u64,
    /// Guest write requests completed (any status).
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    /// Bytes returned to the guest by successful reads.
    pub bytes_read: u64,
    /// Bytes acknowledged to the guest by successful writes.
    pub bytes_written: u64,
    /// Requests completed with an error status (malformed or failed).
    pub errors: u64,
    /// Connection losses and retryable statuses (each followed by a
    /// reconnect and the resubmission of everything in flight).
    pub retries: u64,
    /// Connections to the primary established (the first one included).
    pub reconnects: u64,
}

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl QueueCounters {
    pub fn snapshot(&self) -> QueueStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        QueueStats {
            reads: g(&self.reads),
            writes: g(&self.writes),
            flushes: g(&self.flushes),
            discards: g(&self.discards),
            write_zeroes: g(&self.write_zeroes),
            bytes_read: g(&self.bytes_read),
            bytes_written: g(&self.bytes_written),
            errors: g(&self.errors),
            retries: g(&self.retries),
            reconnects: g(&self.reconnects),
        }
    }
}

/// Counters of all queues of a volume; outlives VMM sessions.
#[derive(Debug)]
pub struct Stats {
    queues: Box<[Arc<QueueCounters>]>,
}

impl Stats {
    pub fn new(queues: usize) -> Stats {
        Stats {
            queues: (0..queues)
                .map(|_| Arc::new(QueueCounters::default()))
                .collect(),
        }
    }

    pub fn queue(&self, index: usize) -> Option<&Arc<QueueCounters>> {
        self.queues.get(index)
    }

    /// One snapshot per queue, in queue order.
    pub fn snapshot(&self) -> Vec<QueueStats> {
        self.queues.iter().map(|q| q.snapshot()).collect()
    }

    /// Sum over all queues.
    pub fn total(&self) -> QueueStats {
        self.snapshot()
            .into_iter()
            .fold(QueueStats::default(), |a, q| QueueStats {
                reads: a.reads + q.reads,
                writes: a.writes + q.writes,
                flushes: a.flushes + q.flushes,
                discards: a.discards + q.discards,
                write_zeroes: a.write_zeroes + q.write_zeroes,
                bytes_read: a.bytes_read + q.bytes_read,
                bytes_written: a.bytes_written + q.bytes_written,
                errors: a.errors + q.errors,
                retries: a.retries + q.retries,
                reconnects: a.reconnects + q.reconnects,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_total() {
        let s = Stats::new(2);
        bump(&s.queue(0).unwrap().reads, 2);
        bump(&s.queue(1).unwrap().reads, 3);
        bump(&s.queue(1).unwrap().bytes_written, 4096);
        assert_eq!(s.snapshot()[1].reads, 3);
        let t = s.total();
        assert_eq!((t.reads, t.bytes_written), (5, 4096));
        assert!(s.queue(2).is_none());
    }
}
