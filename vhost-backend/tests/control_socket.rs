//! The backend's control socket seen from a real vhost-user frontend:
//! an online resize shows up in config space and moves the end of the
//! disk; a layout update is installed; hostile lines change nothing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use basalt_storage::testing::LocalServer;
use basalt_vhost_backend::control_socket::{self, control_socket_path};
use basalt_vhost_backend::virtio_blk::{STATUS_IOERR, STATUS_OK};
use basalt_vhost_backend::{Config, Server};
use common::frontend::{TestFrontend, D};
use common::{args, init_logging, Opts};
use serde_json::Value;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::VhostBackend;
use virtio_bindings::virtio_blk::*;

const HDR: u64 = 0x1_0000;
const STATUS: u64 = 0x2_0000;
const DATA: u64 = 0x3_0000;

fn ask(path: &Path, line: &str) -> anyhow::Result<Value> {
    let c = UnixStream::connect(path)?;
    let mut w = c.try_clone()?;
    w.write_all(line.as_bytes())?;
    w.write_all(b"\n")?;
    let mut reply = String::new();
    BufReader::new(c).read_line(&mut reply)?;
    Ok(serde_json::from_str(&reply)?)
}

fn capacity(f: &mut TestFrontend) -> anyhow::Result<u64> {
    Ok(u64::from_le_bytes(f.config()?[0..8].try_into()?))
}

/// Reads one sector at `sector`; returns the status byte.
fn read_sector(f: &mut TestFrontend, sector: u64) -> anyhow::Result<u8> {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    f.write(HDR, &h);
    f.write(STATUS, &[0xEE]);
    f.submit(&[D(HDR, 16, false), D(DATA, 512, true), D(STATUS, 1, true)])?;
    f.wait_used()?;
    Ok(f.read(STATUS, 1)[0])
}

#[test]
fn resize_is_seen_in_config_space_and_moves_the_end() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let storage_dir = dir.path().join("storage");
    std::fs::create_dir_all(&storage_dir)?;
    let storage = LocalServer::start(&storage_dir, "s1")?;
    // The copy is already 2 MiB (the control service grows copies before
    // it grows the attachment); the backend starts at 1 MiB.
    let o = Opts {
        size: 1 << 20,
        queues: 1,
        ..Opts::default()
    };
    storage.create_primary(o.volume_id, 2 << 20)?;
    let socket = dir.path().join("v.sock");
    let server = Server::bind(Config::try_from(args(
        &socket,
        &storage.data_addr.to_string(),
        &o,
    ))?)?;
    let ctl = control_socket_path(&socket);
    control_socket::spawn(&ctl, server.control_state())?;
    let (stop, layout) = (server.stop_handle(), server.layout());
    let t = std::thread::spawn(move || server.run());

    let mut f = TestFrontend::connect(&socket, 1 << 20)?;
    assert_eq!(capacity(&mut f)?, 2048);
    assert_eq!(read_sector(&mut f, 2048)?, STATUS_IOERR);

    // Refused requests change nothing.
    for bad in [
        r#"{"op":"resize","size_bytes":524288}"#,
        r#"{"op":"resize","size_bytes":1048577}"#,
        r#"{"op":"resize"}"#,
        "{\"op\":",
        r#"{"op":"shred"}"#,
    ] {
        let r = ask(&ctl, bad)?;
        assert_eq!(r["ok"], false, "{bad}: {r}");
    }
    assert_eq!(capacity(&mut f)?, 2048);

    let r = ask(&ctl, r#"{"op":"resize","size_bytes":2097152}"#)?;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(capacity(&mut f)?, 4096);
    assert_eq!(read_sector(&mut f, 2048)?, STATUS_OK);
    assert_eq!(read_sector(&mut f, 4095)?, STATUS_OK);
    assert_eq!(read_sector(&mut f, 4096)?, STATUS_IOERR);

    let st = ask(&ctl, r#"{"op":"stats"}"#)?;
    assert_eq!(st["size_bytes"], 2097152);
    assert!(st["reads"].as_u64().unwrap_or(0) >= 2, "{st}");
    assert!(st["errors"].as_u64().unwrap_or(0) >= 2, "{st}");

    // Same epoch, same address: accepted; older epoch: refused.
    let primary = storage.data_addr.to_string();
    let r = ask(
        &ctl,
        &format!(r#"{{"op":"layout","primary":"{primary}","epoch":1}}"#),
    )?;
    assert_eq!(r["ok"], true, "{r}");
    let r = ask(&ctl, r#"{"op":"layout","primary":"127.0.0.1:1","epoch":0}"#)?;
    assert_eq!(r["ok"], false);
    assert_eq!(layout.snapshot().primary, primary);
    assert_eq!(read_sector(&mut f, 0)?, STATUS_OK);

    drop(f);
    stop.stop();
    t.join()
        .map_err(|_| anyhow::anyhow!("backend panicked"))??;
    Ok(())
}

const BIN: &str = env!("CARGO_BIN_EXE_basalt-vhost-blk");

/// The backend as its own process (the VMM-side socketpair must come from
/// another process, as it does from QEMU), a rust-vmm frontend here that
/// sets up the backend-request channel: a resize sends CONFIG_CHANGE_MSG
/// on it, and the frontend then reads the new capacity.
#[test]
fn resize_sends_config_change_on_the_backend_channel() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let storage_dir = dir.path().join("storage");
    std::fs::create_dir_all(&storage_dir)?;
    let storage = LocalServer::start(&storage_dir, "s1")?;
    storage.create_primary(9, 2 << 20)?;
    let socket = dir.path().join("v.sock");
    let ctl = control_socket_path(&socket);
    let (tls_dir, grant_file) = common::node_files(
        &socket,
        &common::Opts {
            volume_id: 9,
            ..common::Opts::default()
        },
    );
    let mut child = Command::new(BIN)
        .arg("--socket")
        .arg(&socket)
        .args([
            "--volume-id",
            "9",
            "--size-bytes",
            "1048576",
            "--queues",
            "1",
        ])
        .args(["--primary", &storage.data_addr.to_string()])
        .arg("--tls-dir")
        .arg(&tls_dir)
        .arg("--grant-file")
        .arg(&grant_file)
        .stdin(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctl.exists() {
        assert!(child.try_wait()?.is_none(), "backend exited");
        assert!(Instant::now() < deadline, "backend did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let result = (|| -> anyhow::Result<()> {
        let mut fe = Frontend::connect(&socket, 1)?;
        fe.set_owner()?;
        let features = fe.get_features()?;
        fe.set_features(features)?;
        let pf = fe.get_protocol_features()?;
        assert!(
            pf.contains(VhostUserProtocolFeatures::BACKEND_REQ),
            "{pf:?}"
        );
        fe.set_protocol_features(
            pf & (VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::BACKEND_REQ),
        )?;
        let (ours, theirs) = UnixStream::pair()?;
        fe.set_backend_request_fd(&theirs)?;
        drop(theirs);
        let cap = |fe: &mut Frontend| -> anyhow::Result<u64> {
            let (_, cfg) = fe.get_config(0, 60, VhostUserConfigFlags::empty(), &[0u8; 60])?;
            Ok(u64::from_le_bytes(cfg[0..8].try_into()?))
        };
        // A reply on the main channel: the channel fd has been handled.
        assert_eq!(cap(&mut fe)?, 2048);

        let r = ask(&ctl, r#"{"op":"resize","size_bytes":2097152}"#)?;
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["config_change_sent"], true, "{r}");
        ours.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut hdr = [0u8; 12];
        (&ours).read_exact(&mut hdr)?;
        let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
        assert_eq!(word(0), 2, "VHOST_USER_BACKEND_CONFIG_CHANGE_MSG");
        assert_eq!(word(4) & 0x3, 1, "version 1");
        assert_eq!(word(8), 0, "no payload");
        assert_eq!(cap(&mut fe)?, 4096);

        // Same size again: nothing to notify.
        let r = ask(&ctl, r#"{"op":"resize","size_bytes":2097152}"#)?;
        assert_eq!(r["config_change_sent"], false, "{r}");
        Ok(())
    })();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    assert!(!ctl.exists(), "control socket removed on exit");
    result
}
