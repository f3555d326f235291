//! Failpoints: named steps where a test can make a process crash or stall.
//!
//! Armed only through the `BASALT_FAILPOINTS` environment variable of the
//! process, read once: a comma-separated list of `name=action`, where action
//! is `abort` (die at once, like `kill -9`: no destructors, no flushing),
//! `exit` (exit with status 86) or `sleep(MS)`. Unarmed failpoints cost one
//! hash lookup in a map that is empty in production.
//!
//! ```text
//! BASALT_FAILPOINTS=failover.after_persist=abort basalt-control ...
//! ```

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

/// Environment variable holding the armed failpoints.
pub const ENV: &str = "BASALT_FAILPOINTS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Abort,
    Exit,
    Sleep(Duration),
}

fn parse_action(s: &str) -> Option<Action> {
    match s {
        "abort" => Some(Action::Abort),
        "exit" => Some(Action::Exit),
        _ => {
            let ms = s.strip_prefix("sleep(")?.strip_suffix(')')?;
            ms.parse()
                .ok()
                .map(|ms| Action::Sleep(Duration::from_millis(ms)))
        }
    }
}

/// Parses a `BASALT_FAILPOINTS` value; bad entries are reported and skipped.
pub fn parse(spec: &str) -> (HashMap<String, Action>, Vec<String>) {
    let mut armed = HashMap::new();
    let mut bad = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.split_once('=') {
            Some((name, action)) if !name.trim().is_empty() => match parse_action(action.trim()) {
                Some(a) => {
                    armed.insert(name.trim().to_owned(), a);
                }
                None => bad.push(entry.to_owned()),
            },
            _ => bad.push(entry.to_owned()),
        }
    }
    (armed, bad)
}

fn armed() -> &'static HashMap<String, Action> {
    static ARMED: OnceLock<HashMap<String, Action>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let Ok(spec) = std::env::var(ENV) else {
            return HashMap::new();
        };
        let (armed, bad) = parse(&spec);
        for b in bad {
            tracing::error!(
                entry = %b,
                "ignoring malformed {ENV} entry: use name=abort, name=exit or name=sleep(MS)"
            );
        }
        if !armed.is_empty() {
            tracing::warn!(failpoints = ?armed, "failpoints armed (testing only)");
        }
        armed
    })
}

/// The action armed at `name`, if any.
pub fn action(name: &str) -> Option<Action> {
    armed().get(name).copied()
}

/// Runs the action armed at `name` (blocking for `sleep`).
pub fn hit(name: &str) {
    match action(name) {
        None => {}
        Some(Action::Abort) => {
            tracing::error!(failpoint = name, "failpoint: aborting");
            std::process::abort();
        }
        Some(Action::Exit) => {
            tracing::error!(failpoint = name, "failpoint: exiting");
            std::process::exit(86);
        }
        Some(Action::Sleep(d)) => {
            tracing::warn!(failpoint = name, ?d, "failpoint: sleeping");
            std::thread::sleep(d);
        }
    }
}

/// Like [`hit`], but sleeps without blocking the tokio runtime.
pub async fn hit_async(name: &str) {
    match action(name) {
        Some(Action::Sleep(d)) => {
            tracing::warn!(failpoint = name, ?d, "failpoint: sleeping");
            tokio::time::sleep(d).await;
        }
        _ => hit(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_actions_and_reports_bad_entries() {
        let (armed, bad) = parse("a=abort, b=sleep(250),c=exit,d=boom,=abort,e");
        assert_eq!(armed.get("a"), Some(&Action::Abort));
        assert_eq!(
            armed.get("b"),
            Some(&Action::Sleep(Duration::from_millis(250)))
        );
        assert_eq!(armed.get("c"), Some(&Action::Exit));
        assert_eq!(armed.len(), 3);
        assert_eq!(bad, vec!["d=boom", "=abort", "e"]);
    }

    #[test]
    fn unarmed_failpoints_do_nothing() {
        assert_eq!(action("no.such.failpoint"), None);
        hit("no.such.failpoint");
    }
}
