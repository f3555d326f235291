//! The `basalt` command-line tool.

pub mod args;
pub mod auth;
pub mod commands;
pub mod destination;
pub mod output;
pub mod progress;
pub mod schedule;
pub mod size;
pub mod snapshot;
pub mod tenancy;
pub mod transfer;
pub mod up;
pub mod volume_io;
