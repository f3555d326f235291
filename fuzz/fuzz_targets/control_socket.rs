//! The backend's control socket (`vhost-backend/src/control_socket.rs`).
//!
//! Input: one mode byte, then bytes.
//! - mode even: the bytes are split into lines and each UTF-8 line goes to
//!   `ControlState::handle_line`, checked against a model of the volume's
//!   size and layout;
//! - mode odd: the bytes are sent over a real unix socket pair to
//!   `serve_conn` (the connection loop: line splitting, the 4096-byte line
//!   limit, UTF-8, blank lines), and the replies are checked.
//!
//! Invariants checked:
//! - never panics; every reply is a JSON object with a boolean `ok`, and an
//!   `error` string when `ok` is false;
//! - a request succeeds exactly when the model says it is valid; a refused
//!   request changes nothing; resize only grows, by whole sectors, and sets
//!   exactly the size asked; layout epochs never move back; stats report
//!   the model's size, primary and epoch;
//! - `serve_conn` answers exactly one line per non-blank request line, stops
//!   after an over-long line, and ends cleanly at end of input.

#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};

use basalt_vhost_backend::config::{Args, Config};
use basalt_vhost_backend::control_socket::{serve_conn, ControlState, MAX_LINE};
use basalt_vhost_backend::volume::Volume;
use clap::Parser;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SIZE: u64 = 1 << 20;
const PRIMARY: &str = "127.0.0.1:9";
const EPOCH: u64 = 2;

fn config() -> Config {
    // The node's credentials the backend loads, kept for the process.
    static C: OnceLock<(tempfile::TempDir, Config)> = OnceLock::new();
    C.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = dir.path().join("tls");
        basalt_auth::testing::TestPki::new().install(&tls, basalt_auth::Role::Node, "fuzz");
        let tls = tls.to_str().expect("a UTF-8 path").to_owned();
        let a = Args::try_parse_from([
            "basalt-vhost-blk",
            "--socket",
            "/nonexistent/fuzz.sock",
            "--volume-id",
            "3",
            "--size-bytes",
            &SIZE.to_string(),
            "--primary",
            PRIMARY,
            "--epoch",
            &EPOCH.to_string(),
            "--tls-dir",
            &tls,
            "--grant-file",
            "/nonexistent/fuzz.grant",
        ])
        .expect("args");
        (dir, Config::try_from(a).expect("config"))
    })
    .1
    .clone()
}

fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

struct Model {
    size: u64,
    primary: String,
    epoch: u64,
}

fn check_reply_shape(reply: &Value) -> bool {
    let ok = reply
        .get("ok")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("reply without a boolean ok: {reply}"));
    if !ok {
        assert!(
            reply["error"].is_string(),
            "refusal without an error: {reply}"
        );
    }
    ok
}

fn handle(state: &ControlState, vol: &Volume, m: &mut Model, line: &str) {
    let reply = state.handle_line(line);
    let ok = check_reply_shape(&reply);
    // Serialising the reply (what serve_conn does) must not fail.
    let _ = reply.to_string();
    let req: Option<Value> = serde_json::from_str(line).ok();
    let op = req
        .as_ref()
        .and_then(|r| r.get("op"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let expect_ok = match (op.as_deref(), &req) {
        (Some("resize"), Some(r)) => match r.get("size_bytes").and_then(Value::as_u64) {
            Some(n) if n > 0 && n % 512 == 0 && n >= m.size => {
                assert_eq!(reply["size_bytes"].as_u64(), Some(n));
                m.size = n;
                true
            }
            _ => false,
        },
        (Some("layout"), Some(r)) => {
            let p = r.get("primary").and_then(Value::as_str);
            let e = r.get("epoch").and_then(Value::as_u64);
            match (p, e) {
                (Some(p), Some(e)) if valid_host_port(p) && e >= 1 && e >= m.epoch => {
                    m.primary = p.to_owned();
                    m.epoch = e;
                    true
                }
                _ => false,
            }
        }
        (Some("stats"), Some(_)) => {
            assert_eq!(reply["size_bytes"].as_u64(), Some(m.size));
            assert_eq!(reply["epoch"].as_u64(), Some(m.epoch));
            assert_eq!(reply["primary"].as_str(), Some(m.primary.as_str()));
            true
        }
        _ => false,
    };
    assert_eq!(ok, expect_ok, "line {line:?} got {reply}");
    assert_eq!(vol.blk.capacity_sectors() * 512, m.size);
    let l = vol.layout.snapshot();
    assert_eq!((l.primary.as_str(), l.epoch), (m.primary.as_str(), m.epoch));
    assert_eq!(vol.layout.epoch(), m.epoch);
}

/// How many replies `serve_conn` owes for `input`, and whether it stops
/// early on an over-long line.
fn expected_replies(input: &[u8]) -> usize {
    let mut pos = 0;
    let mut n = 0;
    while pos < input.len() {
        let window = &input[pos..input.len().min(pos + MAX_LINE + 1)];
        let line = match window.iter().position(|&b| b == b'\n') {
            Some(i) => &window[..=i],
            None => window,
        };
        pos += line.len();
        if line.len() > MAX_LINE {
            return n + 1;
        }
        match std::str::from_utf8(line) {
            Ok(s) if s.trim().is_empty() => {}
            _ => n += 1,
        }
    }
    n
}

fn over_socket(state: &ControlState, input: &[u8]) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut w = ours.try_clone().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        // The server may stop reading (over-long line): a broken pipe is fine.
        let _ = w.write_all(&data);
        let _ = w.shutdown(Shutdown::Write);
    });
    let mut r = ours;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    });
    serve_conn(theirs, state).expect("serve_conn failed on a healthy socket");
    writer.join().unwrap();
    let out = reader.join().unwrap();
    let text = std::str::from_utf8(&out).expect("replies are UTF-8");
    assert!(text.is_empty() || text.ends_with('\n'));
    let mut n = 0;
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).expect("reply is JSON");
        check_reply_shape(&v);
        n += 1;
    }
    assert_eq!(n, expected_replies(input), "reply count");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let vol = Arc::new(Volume::new(config()));
    let state = ControlState::new(vol.clone());
    if mode & 1 == 1 {
        over_socket(&state, rest);
        return;
    }
    let mut m = Model {
        size: SIZE,
        primary: PRIMARY.to_owned(),
        epoch: EPOCH,
    };
    for line in rest.split(|&b| b == b'\n').take(64) {
        if let Ok(s) = std::str::from_utf8(line) {
            handle(&state, &vol, &mut m, s);
        }
    }
});
