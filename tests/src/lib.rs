//! Harness for Basalt's end-to-end tests: real `basalt-storage` and
//! `basalt-vhost-blk` processes on loopback, and a real QEMU guest.

pub mod blk;
pub mod cluster;
pub mod controlplane;
pub mod faultproxy;
pub mod faults;
pub mod guest;
pub mod procs;
pub mod rogue;
pub mod snaps;
