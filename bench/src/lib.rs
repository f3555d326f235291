//! `basalt-bench`: a vhost-user-blk frontend that runs on the host, without a
//! VM (libblkio drives the socket with real virtqueues in shared memory), and
//! the side-by-side comparison of Basalt with qemu-storage-daemon.
//! See `docs/bench/README.md`.

pub mod compare;
pub mod job;
pub mod layoutbench;
pub mod procstat;
pub mod report;
pub mod secreport;
pub mod snapbench;
pub mod stamp;
