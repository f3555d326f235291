//! Rate limiting for log lines a guest or a flapping server could trigger at
//! will: at most one line per interval, the rest counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimiter {
    origin: Instant,
    interval_ms: u64,
    /// Milliseconds since `origin` before which nothing more is logged.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimiter {
    pub fn new(interval: Duration) -> RateLimiter {
        RateLimiter {
            origin: Instant::now(),
            interval_ms: interval.as_millis().max(1) as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when the caller may log now, `n` being how many events were
    /// suppressed since the last line; `None` when it must stay quiet.
    pub fn check(&self) -> Option<u64> {
        let now = self.origin.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_counts() {
        let r = RateLimiter::new(Duration::from_millis(50));
        assert_eq!(r.check(), Some(0));
        assert_eq!(r.check(), None);
        assert_eq!(r.check(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.check(), Some(2));
    }
}
