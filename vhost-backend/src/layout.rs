//! Where the volume's primary copy lives, and with which epoch we talk to it.
//!
//! Read by the queues only when they (re)connect, never on the I/O path.
//! Updated with [`Layout::update`] after a failover, by the control-service
//! client (`failover.rs`) or by the node manager through the control socket;
//! queues pick the new primary and epoch up at their next reconnect.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

/// The part of a volume's layout a backend needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutSnapshot {
    /// Data-plane address (HOST:PORT) of the primary copy.
    pub primary: String,
    /// Layout epoch carried by every request.
    pub epoch: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error(
        "refusing to move epoch back from {current} to {requested}: layouts only move forward"
    )]
    EpochRegression { current: u64, requested: u64 },
    #[error("this backend's attachment was superseded (the volume was attached elsewhere or detached): it takes no layout any more")]
    Fenced,
}

/// Shared, per-volume layout.
#[derive(Debug)]
pub struct Layout {
    inner: RwLock<LayoutSnapshot>,
    epoch: AtomicU64,
    /// This backend's attachment was superseded (forced attach elsewhere, or
    /// detach): for good, whatever it learns later.
    fenced: AtomicBool,
}

impl Layout {
    pub fn new(primary: String, epoch: u64) -> Layout {
        Layout {
            inner: RwLock::new(LayoutSnapshot { primary, epoch }),
            epoch: AtomicU64::new(epoch),
            fenced: AtomicBool::new(false),
        }
    }

    /// Marks this backend fenced: every request in flight and every later
    /// one fails (the guest sees I/O errors); nothing is sent again.
    /// Returns whether it was not fenced before.
    pub fn fence(&self) -> bool {
        !self.fenced.swap(true, Ordering::AcqRel)
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// The current layout (taken at connect time).
    pub fn snapshot(&self) -> LayoutSnapshot {
        match self.inner.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The current epoch, without taking the lock.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Installs a new layout (from the control service). The epoch may not
    /// move backwards; an equal epoch may change the address.
    pub fn update(&self, primary: String, epoch: u64) -> Result<(), LayoutError> {
        let mut g = match self.inner.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if self.is_fenced() {
            return Err(LayoutError::Fenced);
        }
        if epoch < g.epoch {
            return Err(LayoutError::EpochRegression {
                current: g.epoch,
                requested: epoch,
            });
        }
        *g = LayoutSnapshot { primary, epoch };
        self.epoch.store(epoch, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_moves_forward_only() {
        let l = Layout::new("a:1".into(), 3);
        assert_eq!(l.epoch(), 3);
        l.update("b:2".into(), 4).unwrap();
        assert_eq!(
            l.snapshot(),
            LayoutSnapshot {
                primary: "b:2".into(),
                epoch: 4
            }
        );
        assert!(l.update("c:3".into(), 2).is_err());
        assert_eq!(l.epoch(), 4);
        l.update("c:3".into(), 4).unwrap();
        assert_eq!(l.snapshot().primary, "c:3");
        assert!(l.fence());
        assert!(!l.fence());
        assert_eq!(l.update("d:4".into(), 9), Err(LayoutError::Fenced));
        assert_eq!(l.snapshot().primary, "c:3");
    }
}
