//! Client of a backend's control socket (`<socket>.ctl`, line-delimited
//! JSON; see `basalt_vhost_backend::control_socket`).
//!
//! The socket is in a directory the backend's user may write, so before
//! sending anything the client checks (SO_PEERCRED) that the listening end
//! belongs to the backend process it expects: a link planted under the
//! socket's name would lead elsewhere.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Bound on one request/reply exchange.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a stats request (heartbeats must not wait on a stuck backend).
pub const STATS_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the backend's control socket {path}: {msg}; the backend may be restarting, retry")]
    Unreachable { path: String, msg: String },
    #[error("the backend refused: {0}")]
    Refused(String),
}

async fn exchange(path: &Path, pid: u32, req: &Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(path).await.map_err(|e| e.to_string())?;
    let peer = s.peer_cred().map_err(|e| e.to_string())?.pid();
    if peer != Some(pid as i32) {
        return Err(format!(
            "served by process {peer:?}, not by the backend (pid {pid}); not talking to it"
        ));
    }
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    BufReader::new(s)
        .read_line(&mut reply)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&reply).map_err(|e| format!("bad reply {reply:?}: {e}"))
}

/// Sends one request to backend `pid`; `Ok` with the reply when it said ok.
pub async fn call(path: &Path, pid: u32, req: Value) -> Result<Value, CtlError> {
    call_within(path, pid, req, TIMEOUT).await
}

async fn call_within(
    path: &Path,
    pid: u32,
    req: Value,
    timeout: Duration,
) -> Result<Value, CtlError> {
    let unreachable = |msg: String| CtlError::Unreachable {
        path: path.display().to_string(),
        msg,
    };
    let v = tokio::time::timeout(timeout, exchange(path, pid, &req))
        .await
        .map_err(|_| unreachable(format!("no reply within {timeout:?}")))?
        .map_err(unreachable)?;
    if v["ok"].as_bool() == Some(true) {
        Ok(v)
    } else {
        Err(CtlError::Refused(
            v["error"].as_str().unwrap_or("no reason given").to_owned(),
        ))
    }
}

pub async fn resize(path: &Path, pid: u32, size_bytes: u64) -> Result<Value, CtlError> {
    call(path, pid, json!({"op": "resize", "size_bytes": size_bytes})).await
}

pub async fn layout(path: &Path, pid: u32, primary: &str, epoch: u64) -> Result<Value, CtlError> {
    call(
        path,
        pid,
        json!({"op": "layout", "primary": primary, "epoch": epoch}),
    )
    .await
}

pub async fn stats(path: &Path, pid: u32) -> Result<Value, CtlError> {
    call_within(path, pid, json!({"op": "stats"}), STATS_TIMEOUT).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control socket served by another process than the expected
    /// backend gets no request.
    #[tokio::test]
    async fn refuses_a_socket_of_another_process() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("x.ctl");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let got = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut line = String::new();
            let _ = BufReader::new(s).read_line(&mut line).await;
            line
        });
        let e = stats(&path, std::process::id() + 1).await.unwrap_err();
        assert!(e.to_string().contains("not by the backend"), "{e}");
        assert_eq!(got.await.unwrap(), "", "a request was sent");
    }
}
