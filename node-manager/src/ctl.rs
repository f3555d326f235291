//! Client of a backend's control socket (`<socket>.ctl`, line-delimited
//! JSON; see `basalt_vhost_backend::control_socket`).

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

async fn exchange(path: &Path, req: &Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(path).await.map_err(|e| e.to_string())?;
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

/// Sends one request; `Ok` with the reply when the backend said ok.
pub async fn call(path: &Path, req: Value) -> Result<Value, CtlError> {
    call_within(path, req, TIMEOUT).await
}

async fn call_within(path: &Path, req: Value, timeout: Duration) -> Result<Value, CtlError> {
    let unreachable = |msg: String| CtlError::Unreachable {
        path: path.display().to_string(),
        msg,
    };
    let v = tokio::time::timeout(timeout, exchange(path, &req))
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

pub async fn resize(path: &Path, size_bytes: u64) -> Result<Value, CtlError> {
    call(path, json!({"op": "resize", "size_bytes": size_bytes})).await
}

pub async fn layout(path: &Path, primary: &str, epoch: u64) -> Result<Value, CtlError> {
    call(
        path,
        json!({"op": "layout", "primary": primary, "epoch": epoch}),
    )
    .await
}

pub async fn stats(path: &Path) -> Result<Value, CtlError> {
    call_within(path, json!({"op": "stats"}), STATS_TIMEOUT).await
}
