//! The `basalt-vhost-blk` binary: flag validation, serving, and a clean exit
//! on SIGTERM while a frontend is connected.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use basalt_storage::testing::LocalServer;
use common::blk::Blk;
use common::{init_logging, pattern};

const BIN: &str = env!("CARGO_BIN_EXE_basalt-vhost-blk");

#[test]
fn invalid_flags_exit_with_a_clear_message() -> anyhow::Result<()> {
    let out = Command::new(BIN)
        .args([
            "--socket",
            "/tmp/x.sock",
            "--volume-id",
            "1",
            "--size-bytes",
            "1000",
            "--primary",
            "127.0.0.1:1",
            "--tls-dir",
            "/nonexistent",
            "--grant-file",
            "/nonexistent/grant",
        ])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--size-bytes 1000"), "{err}");
    let out = Command::new(BIN).arg("--help").output()?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--retry-interval-ms"));
    Ok(())
}

#[test]
fn serves_and_exits_cleanly_on_sigterm() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let sdir = dir.path().join("storage");
    std::fs::create_dir_all(&sdir)?;
    let storage = LocalServer::start(&sdir, "s1")?;
    storage.create_primary(5, 8 << 20)?;
    let socket = dir.path().join("vhost.sock");
    let opts = common::Opts {
        volume_id: 5,
        ..common::Opts::default()
    };
    let (tls_dir, grant_file) = common::node_files(&socket, &opts);
    // A stale socket file is replaced.
    std::fs::write(&socket, b"stale")?;
    let mut child = Command::new(BIN)
        .args([
            "--socket",
            socket.to_str().unwrap_or_default(),
            "--volume-id",
            "5",
            "--size-bytes",
        ])
        .arg((8u64 << 20).to_string())
        .args(["--primary", &storage.data_addr.to_string(), "--queues", "1"])
        .arg("--tls-dir")
        .arg(&tls_dir)
        .arg("--grant-file")
        .arg(&grant_file)
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut blk = loop {
        match Blk::connect(&socket, 1, 1 << 20) {
            Ok(b) => break b,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e),
        }
    };
    pattern(3, &mut blk.mem()[..65536]);
    blk.write(0, 0, 0, 65536, 1);
    blk.wait_ok(0, 1)?;
    blk.read(0, 0, 65536, 65536, 2);
    blk.wait_ok(0, 1)?;
    assert!(blk.mem()[..65536] == blk.mem()[65536..131072]);

    // SIGTERM with the frontend still connected.
    // SAFETY: plain kill(2) on our child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            child.kill()?;
            anyhow::bail!("backend did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "socket file left behind");
    drop(blk);
    Ok(())
}
