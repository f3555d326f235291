//! Basalt vhost-user-blk backend: serves one volume to a VMM and forwards
//! every request to the storage server holding the volume's primary copy.
//!
//! Modules:
//! - [`config`]: flags and validated configuration;
//! - [`config_notify`]: config-change notification to the VMM after a resize;
//! - [`control_socket`]: `<socket>.ctl`, resize / layout / stats for the node manager;
//! - [`server`]: the serve loop (one VMM session after another) and signals;
//! - [`backend`]: the `vhost-user-backend` device implementation;
//! - [`queue`]: per-virtqueue engine (worker + completion thread);
//! - [`request`]: parsing and validation of guest requests;
//! - [`inflight`]: per-queue table of requests in flight;
//! - [`primary`]: connection and handshake to the primary;
//! - [`layout`]: primary address and epoch, updatable by a control client;
//! - [`virtio_blk`]: features and config space; [`stats`]; [`ratelimit`].

pub mod backend;
pub mod config;
pub mod config_notify;
pub mod control_socket;
pub mod failover;
pub mod inflight;
pub mod layout;
pub mod primary;
pub mod queue;
pub mod ratelimit;
pub mod request;
pub mod server;
pub mod stats;
pub mod virtio_blk;
pub mod volume;

pub use config::{Args, Config, ConfigError};
pub use server::{start_backend, ServeError, Server, StopHandle};
pub use stats::{QueueStats, Stats};
