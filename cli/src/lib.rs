//! The `basalt` command-line tool.

pub mod args;
pub mod commands;
pub mod output;
pub mod size;
pub mod up;
