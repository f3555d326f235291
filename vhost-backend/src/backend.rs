//! The vhost-user backend of one VMM session: virtio-blk device model
//! plugged into rust-vmm's `vhost-user-backend`.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use std::os::fd::AsRawFd;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::queue::{GuestMem, QueueEngine, Vring};
use crate::virtio_blk::{device_features, protocol_features};
use crate::volume::Volume;

/// Epoll data of the per-queue "new connection" event (above the queue
/// indices and the library's own exit/enable event).
fn resubmit_event_id(num_queues: usize) -> u64 {
    num_queues as u64 + 1
}

pub struct BlkBackend {
    vol: Arc<Volume>,
    queues: Vec<Arc<QueueEngine>>,
    acked_features: AtomicU64,
}

impl BlkBackend {
    pub fn new(vol: Arc<Volume>, mem: GuestMem) -> io::Result<BlkBackend> {
        let queues = (0..vol.config.queues)
            .map(|i| QueueEngine::new(i, vol.clone(), mem.clone()).map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(BlkBackend {
            vol,
            queues,
            acked_features: AtomicU64::new(0),
        })
    }

    /// Hooks each queue's resubmit event into its worker thread's epoll
    /// loop, then starts the completion threads (which connect).
    pub fn attach(&self, handlers: &[Arc<VringEpollHandler<Arc<BlkBackend>>>]) -> io::Result<()> {
        let id = resubmit_event_id(self.queues.len());
        for (q, h) in self.queues.iter().zip(handlers) {
            h.register_listener(q.resubmit_fd().as_raw_fd(), EventSet::IN, id)?;
        }
        for q in &self.queues {
            q.start()?;
        }
        Ok(())
    }

    /// Stops taking new requests and waits (at most the drain timeout) for
    /// those in flight.
    pub fn drain(&self) {
        let deadline = Instant::now() + self.vol.config.drain_timeout;
        for q in &self.queues {
            q.drain(deadline, true);
        }
    }

    /// Ends the session: completion threads stop, connections close, what
    /// was in flight is forgotten.
    pub fn shutdown(&self) {
        for q in &self.queues {
            q.shutdown();
        }
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features.load(Ordering::Relaxed)
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.queues.len()
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.vol.config.queue_size)
    }

    fn features(&self) -> u64 {
        device_features(self.vol.config.read_only)
    }

    fn acked_features(&self, features: u64) {
        self.acked_features.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    fn reset_device(&self) {
        for q in &self.queues {
            q.abandon();
        }
    }

    fn set_event_idx(&self, enabled: bool) {
        for q in &self.queues {
            q.set_event_idx(enabled);
        }
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // An empty answer tells the frontend the request was invalid.
        self.vol.blk.read(offset, size).unwrap_or_default()
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "virtio-blk config space is read-only (no CONFIG_WCE)",
        ))
    }

    fn set_backend_req_fd(&self, backend: vhost::vhost_user::Backend) {
        self.vol.notifier.set(backend);
    }

    fn update_memory(&self, _mem: GuestMem) -> io::Result<()> {
        // The queues hold the same GuestMemoryAtomic, already updated.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker thread per queue.
        (0..self.queues.len()).map(|i| 1u64 << i).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::error!("cannot create a worker exit event: {e}");
                None
            }
        }
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if let Some(q) = self.queues.get(queue_index as usize) {
            q.drain(Instant::now() + self.vol.config.drain_timeout, false);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // Errors returned here would kill the worker thread; everything that
        // can go wrong is reported and handled per request instead.
        let Some(q) = self.queues.get(thread_id) else {
            return Ok(());
        };
        if u64::from(device_event) == resubmit_event_id(self.queues.len()) {
            q.handle_resubmit_event();
        } else if let Some(vring) = vrings.get(usize::from(device_event)) {
            q.handle_kick(vring);
        }
        Ok(())
    }
}
