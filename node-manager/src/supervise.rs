//! The supervisor of one attachment: waits for its backend to exit and,
//! unless a detach asked for that, starts it again on the same socket (the
//! VMM reconnects: QEMU with `reconnect=1`) with a growing backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::attachments::{lock, Attachments, Entry, State};
use crate::process::{self, Waiter};

/// Longest pause between restart attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Supervises a running backend until detach.
pub async fn run(att: Arc<Attachments>, entry: Arc<Entry>, mut waiter: Waiter) {
    loop {
        let how = waiter.wait().await;
        let id = entry.params().volume_id;
        if entry.stopping.load(Ordering::SeqCst) {
            lock(&entry.status).state = State::Stopped;
            tracing::info!(volume = id, "backend stopped ({how})");
            return;
        }
        tracing::warn!(
            volume = id,
            "backend exited unexpectedly ({how}); restarting it"
        );
        lock(&entry.status).state = State::Restarting;
        match restart(&att, &entry).await {
            Some(w) => waiter = w,
            None => return,
        }
    }
}

/// For a recorded backend found dead at startup: start it, then supervise.
pub async fn restart_loop(att: Arc<Attachments>, entry: Arc<Entry>) {
    if let Some(w) = restart(&att, &entry).await {
        run(att, entry, w).await;
    }
}

/// Waits for `d` unless a detach comes first (then `false`).
async fn pause(entry: &Entry, d: Duration) -> bool {
    if entry.stopping.load(Ordering::SeqCst) {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => !entry.stopping.load(Ordering::SeqCst),
        _ = entry.stop_notify.notified() => false,
    }
}

/// Starts the backend again (backoff, retried until it works or a detach
/// comes). `None` if detached meanwhile.
async fn restart(att: &Arc<Attachments>, entry: &Arc<Entry>) -> Option<Waiter> {
    let s = &att.settings;
    let mut backoff = s.restart_backoff;
    loop {
        if !pause(entry, backoff).await {
            lock(&entry.status).state = State::Stopped;
            return None;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        let p = entry.params();
        let started = match process::start(&p, &entry.socket, entry.owner, s).await {
            Ok(st) => st,
            Err(e) => {
                tracing::error!(volume = p.volume_id, "restarting the backend failed: {e}");
                continue;
            }
        };
        let must_stop = {
            let mut st = lock(&entry.status);
            st.pid = started.pid;
            st.start_time = started.start_time;
            st.restarts = st.restarts.saturating_add(1);
            st.state = State::Running;
            entry.stopping.load(Ordering::SeqCst)
        };
        if let Err(e) = att.save(entry) {
            tracing::error!(volume = p.volume_id, "{e}");
        }
        tracing::info!(
            volume = p.volume_id,
            pid = started.pid,
            restarts = entry.status().restarts,
            "backend restarted"
        );
        if must_stop {
            // A detach came while we were starting it; it did not signal
            // this process (it was not running yet), so we do.
            process::signal(started.pid, started.start_time, libc::SIGTERM);
        }
        return Some(started.waiter);
    }
}
