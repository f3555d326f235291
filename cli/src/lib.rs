//! The `basalt` command-line tool.

pub mod args;
pub mod commands;
pub mod output;
pub mod progress;
pub mod size;
pub mod snapshot;
pub mod up;
