//! Local control channel of a backend: a unix socket next to the vhost-user
//! socket (`<socket>.ctl`, mode 0600) speaking line-delimited JSON. The node
//! manager uses it; nothing on it is trusted.
//!
//! Requests (one JSON object per line) and replies:
//! - `{"op":"resize","size_bytes":N}` — grow the disk (N ≥ current size, a
//!   multiple of 512). The capacity in config space changes at once, queues
//!   check bounds against it on every request, and the VMM is sent a
//!   config-change notification. Reply `{"ok":true,"size_bytes":N,
//!   "config_change_sent":BOOL}` (see [`ControlState::resize`]).
//! - `{"op":"layout","primary":"HOST:PORT","epoch":N}` — install a new
//!   layout ([`Layout::update`]); the epoch may not move back.
//! - `{"op":"stats"}` — `{"ok":true,"size_bytes":…,"epoch":…,"primary":…,
//!   "reads":…,"writes":…,"errors":…,…}`.
//!
//! Errors are `{"ok":false,"error":"…"}`; the connection stays usable.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use basalt_proto::wire::SECTOR_SIZE;
use serde_json::{json, Value};

use crate::volume::Volume;

/// Longest request line accepted.
pub const MAX_LINE: usize = 4096;
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 8;
/// An idle connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ControlSocketError {
    #[error(
        "cannot listen on control socket {path}: {source}; check that the directory is writable"
    )]
    Bind { path: PathBuf, source: io::Error },
}

/// The control socket path belonging to a vhost-user socket path.
pub fn control_socket_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".ctl");
    PathBuf::from(s)
}

/// What the control channel acts on.
#[derive(Clone)]
pub struct ControlState {
    vol: Arc<Volume>,
}

impl ControlState {
    pub fn new(vol: Arc<Volume>) -> ControlState {
        ControlState { vol }
    }

    /// Handles one request line; always returns a reply object.
    pub fn handle_line(&self, line: &str) -> Value {
        match self.handle(line) {
            Ok(v) => v,
            Err(e) => json!({"ok": false, "error": e}),
        }
    }

    fn handle(&self, line: &str) -> Result<Value, String> {
        let req: Value = serde_json::from_str(line)
            .map_err(|e| format!("request is not JSON: {e}; send one JSON object per line"))?;
        let op = req
            .get("op")
            .and_then(Value::as_str)
            .ok_or("request lacks \"op\" (resize, layout or stats)")?;
        match op {
            "resize" => {
                let size = req
                    .get("size_bytes")
                    .and_then(Value::as_u64)
                    .ok_or("resize needs \"size_bytes\" (an unsigned integer)")?;
                self.resize(size)
            }
            "layout" => {
                let primary = req
                    .get("primary")
                    .and_then(Value::as_str)
                    .ok_or("layout needs \"primary\" (HOST:PORT)")?;
                let epoch = req
                    .get("epoch")
                    .and_then(Value::as_u64)
                    .ok_or("layout needs \"epoch\" (an unsigned integer)")?;
                self.layout(primary, epoch)
            }
            "stats" => Ok(self.stats()),
            other => Err(format!("unknown op {other:?}; use resize, layout or stats")),
        }
    }

    /// Grows the disk. The new capacity is visible at once in config
    /// space, queues bound requests by it from now on, and the VMM gets a
    /// config-change notification ([`crate::config_notify`]) so the guest
    /// re-reads it. `config_change_sent` in the reply says whether that
    /// message went out (not when no VMM is connected, the VMM did not set
    /// up the channel, or the size did not change).
    pub fn resize(&self, size_bytes: u64) -> Result<Value, String> {
        let current = self.vol.blk.capacity_sectors() * SECTOR_SIZE;
        if size_bytes == 0 || size_bytes % SECTOR_SIZE != 0 {
            return Err(format!(
                "size_bytes {size_bytes} is not a positive multiple of {SECTOR_SIZE}"
            ));
        }
        if size_bytes < current {
            return Err(format!(
                "size_bytes {size_bytes} is smaller than the current {current}; volumes only grow"
            ));
        }
        self.vol.blk.set_capacity_sectors(size_bytes / SECTOR_SIZE);
        let sent = if size_bytes == current {
            false
        } else {
            match self.vol.notifier.notify() {
                Ok(sent) => sent,
                Err(e) => {
                    tracing::warn!("cannot send the config-change notification: {e}");
                    false
                }
            }
        };
        tracing::info!(
            from = current,
            to = size_bytes,
            notified = sent,
            "volume resized"
        );
        Ok(json!({"ok": true, "size_bytes": size_bytes, "config_change_sent": sent}))
    }

    fn layout(&self, primary: &str, epoch: u64) -> Result<Value, String> {
        if !valid_host_port(primary) {
            return Err(format!("primary {primary:?} is not HOST:PORT"));
        }
        if epoch == 0 {
            return Err("epoch must be at least 1".into());
        }
        self.vol
            .layout
            .update(primary.to_owned(), epoch)
            .map_err(|e| e.to_string())?;
        tracing::info!(primary, epoch, "layout updated");
        Ok(json!({"ok": true, "primary": primary, "epoch": epoch}))
    }

    fn stats(&self) -> Value {
        let t = self.vol.stats.total();
        let l = self.vol.layout.snapshot();
        json!({
            "ok": true,
            "volume_id": self.vol.config.volume_id,
            "size_bytes": self.vol.blk.capacity_sectors() * SECTOR_SIZE,
            "primary": l.primary,
            "epoch": l.epoch,
            "read_only": self.vol.config.read_only,
            "queues": self.vol.config.queues,
            "reads": t.reads,
            "writes": t.writes,
            "flushes": t.flushes,
            "discards": t.discards,
            "write_zeroes": t.write_zeroes,
            "bytes_read": t.bytes_read,
            "bytes_written": t.bytes_written,
            "errors": t.errors,
            "retries": t.retries,
            "reconnects": t.reconnects,
        })
    }
}

fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

/// Binds `path` (replacing a stale file, mode 0600) and serves it on a
/// background thread for the life of the process.
pub fn spawn(path: &Path, state: ControlState) -> Result<(), ControlSocketError> {
    let bind_err = |source| ControlSocketError::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    // Bind under a temporary name and rename, so the final path appears
    // only once it is listening with mode 0600 (a readiness signal).
    let tmp = {
        let mut s = path.as_os_str().to_owned();
        s.push(".tmp");
        PathBuf::from(s)
    };
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(bind_err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    std::fs::rename(&tmp, path).map_err(bind_err)?;
    std::thread::Builder::new()
        .name("control-socket".into())
        .spawn(move || accept_loop(listener, state))
        .map_err(bind_err)?;
    Ok(())
}

fn accept_loop(listener: UnixListener, state: ControlState) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let (state, active2) = (state.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || {
                if let Err(e) = serve_conn(conn, &state) {
                    tracing::debug!("control connection ended: {e}");
                }
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Serves one connection: a reply line per request line.
pub fn serve_conn(conn: UnixStream, state: &ControlState) -> io::Result<()> {
    conn.set_read_timeout(Some(IDLE_TIMEOUT))?;
    conn.set_write_timeout(Some(IDLE_TIMEOUT))?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let too_long = line.len() > MAX_LINE;
        let reply = if too_long {
            json!({"ok": false, "error": format!("request longer than {MAX_LINE} bytes")})
        } else {
            match std::str::from_utf8(&line) {
                Ok(s) if s.trim().is_empty() => continue,
                Ok(s) => state.handle_line(s.trim()),
                Err(_) => json!({"ok": false, "error": "request is not UTF-8"}),
            }
        };
        let mut out = reply.to_string();
        out.push('\n');
        writer.write_all(out.as_bytes())?;
        if too_long {
            // The rest of the line cannot be resynchronised reliably.
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Args, Config};
    use clap::Parser;

    fn state() -> ControlState {
        let a = Args::try_parse_from([
            "x",
            "--socket",
            "/tmp/unused.sock",
            "--volume-id",
            "3",
            "--size-bytes",
            "1048576",
            "--primary",
            "127.0.0.1:9",
            "--epoch",
            "2",
            "--grant-file",
            "/tmp/unused.grant",
            "--tls-dir",
            crate::config::node_tls(),
        ])
        .unwrap();
        ControlState::new(Arc::new(Volume::new(Config::try_from(a).unwrap())))
    }

    fn ok(v: &Value) -> bool {
        v["ok"].as_bool() == Some(true)
    }

    #[test]
    fn resize_grows_only_by_sectors() {
        let s = state();
        assert!(ok(&s.handle_line(r#"{"op":"resize","size_bytes":2097152}"#)));
        assert_eq!(s.vol.blk.capacity_sectors(), 4096);
        assert_eq!(s.vol.blk.read(0, 8).unwrap(), 4096u64.to_le_bytes());
        // Same size again is fine (idempotent).
        assert!(ok(&s.handle_line(r#"{"op":"resize","size_bytes":2097152}"#)));
        for bad in [
            r#"{"op":"resize","size_bytes":1048576}"#,
            r#"{"op":"resize","size_bytes":2097153}"#,
            r#"{"op":"resize","size_bytes":0}"#,
            r#"{"op":"resize","size_bytes":-5}"#,
            r#"{"op":"resize","size_bytes":"big"}"#,
            r#"{"op":"resize"}"#,
        ] {
            let r = s.handle_line(bad);
            assert!(!ok(&r) && r["error"].is_string(), "{bad}: {r}");
        }
        assert_eq!(s.vol.blk.capacity_sectors(), 4096);
    }

    #[test]
    fn layout_and_stats() {
        let s = state();
        assert!(ok(&s.handle_line(
            r#"{"op":"layout","primary":"10.0.0.2:7500","epoch":3}"#
        )));
        let st = s.handle_line(r#"{"op":"stats"}"#);
        assert_eq!(st["epoch"], 3);
        assert_eq!(st["primary"], "10.0.0.2:7500");
        assert_eq!(st["size_bytes"], 1048576);
        assert_eq!(st["reads"], 0);
        for bad in [
            r#"{"op":"layout","primary":"10.0.0.2:7500","epoch":2}"#,
            r#"{"op":"layout","primary":"nohost","epoch":5}"#,
            r#"{"op":"layout","primary":"h:1","epoch":0}"#,
            r#"{"op":"layout","epoch":5}"#,
        ] {
            assert!(!ok(&s.handle_line(bad)), "{bad}");
        }
        assert_eq!(s.vol.layout.epoch(), 3);
    }

    #[test]
    fn garbage_never_panics() {
        let s = state();
        for bad in [
            "",
            "{",
            "null",
            "[]",
            "42",
            r#"{"op":42}"#,
            r#"{"op":"format-disk"}"#,
            r#"{"op":"resize","size_bytes":1e30}"#,
            r#"{"op":"resize","size_bytes":18446744073709551615}"#,
        ] {
            assert!(!ok(&s.handle_line(bad)), "{bad}");
        }
    }

    #[test]
    fn socket_roundtrip_and_hostile_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = control_socket_path(&dir.path().join("v.sock"));
        assert!(path.to_string_lossy().ends_with("v.sock.ctl"));
        let s = state();
        spawn(&path, s.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let c = UnixStream::connect(&path).unwrap();
        let mut w = c.try_clone().unwrap();
        let mut r = BufReader::new(c);
        let mut ask = |req: &[u8]| {
            w.write_all(req).unwrap();
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            serde_json::from_str::<Value>(&l).unwrap()
        };
        assert!(!ok(&ask(b"\xff\xfe\n")));
        assert!(!ok(&ask(b"not json\n")));
        assert!(ok(&ask(b"{\"op\":\"resize\",\"size_bytes\":4194304}\n")));
        assert_eq!(ask(b"{\"op\":\"stats\"}\n")["size_bytes"], 4194304);
        // An over-long line is refused and the connection closed.
        let long = vec![b'x'; MAX_LINE + 10];
        let r2 = ask(&long);
        assert!(!ok(&r2));
        // A new connection still works.
        let c = UnixStream::connect(&path).unwrap();
        let mut w = c.try_clone().unwrap();
        w.write_all(b"{\"op\":\"stats\"}\n").unwrap();
        let mut l = String::new();
        BufReader::new(c).read_line(&mut l).unwrap();
        assert!(l.contains("\"ok\":true"));
    }
}
