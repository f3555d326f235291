//! The node manager with real processes: a storage server, `basalt-node`
//! and the `basalt-vhost-blk` backends it runs. Needs
//! `cargo build --workspace --bins` first.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{ensure, Result};
use basalt_node::procfs;
use basalt_tests::cluster::{create_volume, StorageProc};
use basalt_tests::procs::bin;
use common::*;
use serde_json::Value;
use tonic::Code;

const MIB: u64 = 1 << 20;

/// Sockets of the backends running for this node.
fn backend_sockets(node: &NodeProc) -> Result<Vec<String>> {
    Ok(
        procfs::backends_in(&bin("basalt-vhost-blk")?, &node.run_dir())
            .into_iter()
            .map(|(_, s)| s)
            .collect(),
    )
}

fn record(node: &NodeProc, volume_id: u64) -> Result<Value> {
    let p = node
        .state_dir()
        .join(format!("attachments/{volume_id}.json"));
    Ok(serde_json::from_slice(&std::fs::read(p)?)?)
}

/// Tests of owners and of other users' access need root.
fn ensure_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "this test checks owners and acts as other users: run it as root"
    );
    Ok(())
}

/// Lets other users pass through a test's temporary directory (0700).
fn let_others_through(dir: &Path) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    Ok(())
}

#[test]
fn attach_supervise_readopt_resize_detach() -> Result<()> {
    let root = tempfile::tempdir()?;
    let s1 = StorageProc::start(root.path(), "s1")?;
    create_volume(1, 16 * MIB, &s1, &[])?;
    let primary = s1.data.to_string();
    let mut node = NodeProc::start(&root.path().join("node"), &[])?;

    // Attach: socket 0600 in its own 0700 directory in the 0711 run
    // directory, backend running, launch flags.
    let a = node.attach(attach_req(1, 16 * MIB, &primary))?;
    let socket = node.run_dir().join("vol-1/sock");
    assert_eq!(a.socket_path, socket.display().to_string());
    assert!(a.backend_pid > 0 && alive(a.backend_pid));
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(&node.run_dir().join("vol-1")), 0o700);
    assert_eq!(mode(&node.run_dir()), 0o711);
    assert_eq!(
        a.qemu_args,
        [
            "-chardev".to_owned(),
            format!(
                "socket,id=basalt-vol1,path={},reconnect=1",
                socket.display()
            ),
            "-device".to_owned(),
            "vhost-user-blk-pci,chardev=basalt-vol1,num-queues=2".to_owned(),
        ]
    );
    assert_eq!(a.cloud_hypervisor_args[0], "--disk");
    assert!(a.cloud_hypervisor_args[1].contains("vhost_user=true,socket="));
    assert!(node.state_dir().join("attachments/1.json").exists());
    assert!(node.state_dir().join("logs/vol-1.log").exists());
    assert_eq!(ctl(&socket, r#"{"op":"stats"}"#)?["size_bytes"], 16 * MIB);

    // Idempotent; different parameters conflict.
    assert_eq!(
        node.attach(attach_req(1, 16 * MIB, &primary))?.backend_pid,
        a.backend_pid
    );
    let e = node.attach(attach_req(1, 32 * MIB, &primary)).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // kill -9 the backend: restarted on the same socket.
    kill(a.backend_pid, libc::SIGKILL);
    wait_until("backend restart", TIMEOUT, || {
        node.info(1).ok().flatten().is_some_and(|i| {
            i.restarts == 1 && i.state == "RUNNING" && i.backend_pid != a.backend_pid
        })
    })?;
    let pid2 = node.info(1)?.map(|i| i.backend_pid).unwrap_or(0);
    assert!(alive(pid2) && socket.exists());
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(ctl(&socket, r#"{"op":"stats"}"#)?["ok"], true);

    // kill -9 the node manager: the backend keeps running and is re-adopted.
    node.restart_after_kill9()?;
    assert!(alive(pid2));
    let i = node.info(1)?.expect("attachment re-adopted");
    assert_eq!(
        (i.backend_pid, i.restarts, i.state.as_str()),
        (pid2, 1, "RUNNING")
    );

    // An adopted backend (not our child) is supervised too.
    kill(pid2, libc::SIGKILL);
    wait_until("adopted backend restart", TIMEOUT, || {
        node.info(1)
            .ok()
            .flatten()
            .is_some_and(|i| i.restarts == 2 && i.state == "RUNNING" && i.backend_pid != pid2)
    })?;
    let pid3 = node.info(1)?.map(|i| i.backend_pid).unwrap_or(0);

    // Online resize: the backend's capacity grows; shrinking is refused.
    node.resize(1, 32 * MIB)?;
    assert_eq!(ctl(&socket, r#"{"op":"stats"}"#)?["size_bytes"], 32 * MIB);
    assert_eq!(node.info(1)?.map(|i| i.size_bytes), Some(32 * MIB));
    let e = node.resize(1, 8 * MIB).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(ctl(&socket, r#"{"op":"stats"}"#)?["size_bytes"], 32 * MIB);

    // New layout (epoch forward only).
    node.update_layout(1, &primary, 2)?;
    assert_eq!(ctl(&socket, r#"{"op":"stats"}"#)?["epoch"], 2);
    let e = node.update_layout(1, &primary, 1).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(node.info(1)?.map(|i| i.epoch), Some(2));

    // A restarted backend starts with the current size and epoch.
    kill(pid3, libc::SIGKILL);
    wait_until("restart after resize", TIMEOUT, || {
        node.info(1)
            .ok()
            .flatten()
            .is_some_and(|i| i.restarts == 3 && i.state == "RUNNING")
    })?;
    let st = ctl(&socket, r#"{"op":"stats"}"#)?;
    assert_eq!(
        (st["size_bytes"].as_u64(), st["epoch"].as_u64()),
        (Some(32 * MIB), Some(2))
    );
    let pid4 = node.info(1)?.map(|i| i.backend_pid).unwrap_or(0);

    // Detach: backend gone, socket, control socket and record removed.
    node.detach(1)?;
    assert!(!alive(pid4));
    assert!(!socket.exists());
    assert!(!node.run_dir().join("vol-1").exists());
    assert!(!node.state_dir().join("attachments/1.json").exists());
    assert!(node.list()?.is_empty());
    node.detach(1)?;
    let log = std::fs::read_to_string(node.state_dir().join("logs/vol-1.log"))?;
    assert!(
        log.contains("termination signal"),
        "backend was not stopped with SIGTERM:\n{log}"
    );
    Ok(())
}

#[test]
fn bad_requests_change_nothing() -> Result<()> {
    let root = tempfile::tempdir()?;
    let s1 = StorageProc::start(root.path(), "s1")?;
    create_volume(5, 4 * MIB, &s1, &[])?;
    let primary = s1.data.to_string();
    let mut node = NodeProc::start(&root.path().join("node"), &[])?;

    let mut bad = vec![
        attach_req(5, 0, &primary),
        attach_req(5, 1000, &primary),
        attach_req(5, 4 * MIB, "not-an-address"),
        attach_req(5, 4 * MIB, "127.0.0.1:0"),
    ];
    let mut r = attach_req(5, 4 * MIB, &primary);
    r.epoch = 0;
    bad.push(r);
    let mut r = attach_req(5, 4 * MIB, &primary);
    r.queues = 99;
    bad.push(r);
    let mut r = attach_req(5, 4 * MIB, &primary);
    r.queues = 17;
    bad.push(r);
    // Over 64 TiB (the control service's largest volume).
    bad.push(attach_req(5, (64 << 40) + 512, &primary));
    bad.push(attach_req(5, u64::MAX - 511, &primary));
    for r in bad {
        let e = node.attach(r.clone()).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{r:?}: {e:?}");
    }
    assert_eq!(node.resize(77, 8 * MIB).unwrap_err().code(), Code::NotFound);
    assert_eq!(
        node.update_layout(77, &primary, 2).unwrap_err().code(),
        Code::NotFound
    );
    node.detach(77)?; // detaching what is not attached succeeds

    node.attach(attach_req(5, 4 * MIB, &primary))?;
    assert_eq!(node.resize(5, 0).unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(
        node.resize(5, 4 * MIB + 1).unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        node.resize(5, (64 << 40) + 512).unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        node.update_layout(5, "nope", 3).unwrap_err().code(),
        Code::InvalidArgument
    );
    let i = node.info(5)?.expect("attached");
    assert_eq!((i.size_bytes, i.epoch, i.restarts), (4 * MIB, 1, 0));
    assert_eq!(node.list()?.len(), 1);
    node.detach(5)?;

    // Nothing left behind.
    assert!(node.list()?.is_empty());
    let records = std::fs::read_dir(node.state_dir().join("attachments"))?.count();
    assert_eq!(records, 0);
    let sockets = std::fs::read_dir(node.run_dir())?.count();
    assert_eq!(sockets, 0);
    assert!(backend_sockets(&node)?.is_empty());
    Ok(())
}

#[test]
fn backend_that_cannot_start_is_unavailable_with_its_log() -> Result<()> {
    let root = tempfile::tempdir()?;
    let script = root.path().join("failing-backend");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'backend says: no disk for you' >&2\nexit 3\n",
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    let bin = script.display().to_string();
    let mut node = NodeProc::start(
        &root.path().join("node"),
        &["--backend-bin", &bin, "--backend-start-timeout-ms", "5000"],
    )?;
    let e = node
        .attach(attach_req(9, 4 * MIB, "127.0.0.1:7500"))
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("no disk for you"), "{e:?}");
    assert!(node.list()?.is_empty());
    assert!(!node.state_dir().join("attachments/9.json").exists());
    // The node keeps serving.
    assert!(node.list()?.is_empty());
    Ok(())
}

#[test]
fn attachment_generations() -> Result<()> {
    let root = tempfile::tempdir()?;
    let s1 = StorageProc::start(root.path(), "s1")?;
    create_volume(2, 8 * MIB, &s1, &[])?;
    let primary = s1.data.to_string();
    let mut node = NodeProc::start(&root.path().join("node"), &[])?;
    let socket = node.run_dir().join("vol-2/sock");
    let req = |attachment: u64, epoch: u64| {
        let mut r = attach_req(2, 8 * MIB, &primary);
        r.attachment = attachment;
        r.epoch = epoch;
        r
    };
    let epoch = |node: &mut NodeProc| -> Result<(Option<u64>, Option<u64>, u64)> {
        let st = ctl(&node.run_dir().join("vol-2/sock"), r#"{"op":"stats"}"#)?;
        Ok((
            node.info(2)?.map(|i| i.epoch),
            st["epoch"].as_u64(),
            record(node, 2)?["params"]["epoch"].as_u64().unwrap_or(0),
        ))
    };

    // The attachment is given to the backend, recorded and reported.
    let a = node.attach(req(5, 1))?;
    assert_eq!(
        cmdline_flag(a.backend_pid, "--attachment").as_deref(),
        Some("5")
    );
    assert_eq!(node.info(2)?.map(|i| i.attachment), Some(5));
    assert_eq!(record(&node, 2)?["params"]["attachment"], 5);

    // Same parameters and attachment: the existing backend. Same
    // attachment, other parameters: conflict.
    assert_eq!(node.attach(req(5, 1))?.backend_pid, a.backend_pid);
    let e = node.attach(req(5, 2)).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // A lower (superseded) attachment is refused; nothing changes.
    let e = node.attach(req(4, 1)).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("superseded attachment"), "{e:?}");
    let i = node.info(2)?.expect("still attached");
    assert_eq!(
        (i.attachment, i.backend_pid, i.restarts),
        (5, a.backend_pid, 0)
    );
    assert!(alive(a.backend_pid));

    // UpdateLayout for another attachment is refused; nothing changes.
    for other in [0, 4, 6] {
        let e = node.update_layout_for(2, &primary, 2, other).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{other}: {e:?}");
    }
    assert_eq!(epoch(&mut node)?, (Some(1), Some(1), 1));

    // For ours: forward only, and by a plausible step.
    node.update_layout_for(2, &primary, 3, 5)?;
    assert_eq!(epoch(&mut node)?, (Some(3), Some(3), 3));
    let e = node.update_layout_for(2, &primary, 2, 5).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = node
        .update_layout_for(2, &primary, 3 + (1 << 20) + 1, 5)
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(epoch(&mut node)?, (Some(3), Some(3), 3));

    // A higher attachment with an older epoch is refused too.
    let e = node.attach(req(6, 2)).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(node.info(2)?.map(|i| i.backend_pid), Some(a.backend_pid));

    // A higher attachment (attached here again after being superseded):
    // the old backend is stopped, a new one runs with the new attachment.
    let b = node.attach(req(6, 3))?;
    assert_ne!(b.backend_pid, a.backend_pid);
    assert!(!alive(a.backend_pid));
    assert_eq!(b.socket_path, socket.display().to_string());
    assert_eq!(
        cmdline_flag(b.backend_pid, "--attachment").as_deref(),
        Some("6")
    );
    let i = node.info(2)?.expect("attached");
    assert_eq!(
        (i.attachment, i.backend_pid, i.restarts, i.state.as_str()),
        (6, b.backend_pid, 0, "RUNNING")
    );
    assert_eq!(record(&node, 2)?["params"]["attachment"], 6);
    assert_eq!(ctl(&socket, r#"{"op":"stats"}"#)?["epoch"], 3);
    assert_eq!(mode(&socket), 0o600);

    // The old attachment is stale now, for Attach and UpdateLayout.
    let e = node.attach(req(5, 3)).unwrap_err();
    assert!(e.message().contains("superseded attachment"), "{e:?}");
    let e = node.update_layout_for(2, &primary, 4, 5).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(epoch(&mut node)?, (Some(3), Some(3), 3));

    // A restarted backend keeps its attachment, and so does a restarted
    // node manager.
    kill(b.backend_pid, libc::SIGKILL);
    wait_until("backend restart", TIMEOUT, || {
        node.info(2)
            .ok()
            .flatten()
            .is_some_and(|i| i.restarts == 1 && i.state == "RUNNING")
    })?;
    let pid2 = node.info(2)?.map(|i| i.backend_pid).unwrap_or(0);
    assert_eq!(cmdline_flag(pid2, "--attachment").as_deref(), Some("6"));
    node.restart_after_kill9()?;
    let i = node.info(2)?.expect("re-adopted");
    assert_eq!((i.attachment, i.backend_pid), (6, pid2));

    // The largest step is allowed.
    node.update_layout_for(2, &primary, 3 + (1 << 20), 6)?;
    assert_eq!(node.info(2)?.map(|i| i.epoch), Some(3 + (1 << 20)));
    node.detach(2)?;
    assert!(!alive(pid2));
    Ok(())
}

#[test]
fn max_attachments_is_enforced() -> Result<()> {
    let root = tempfile::tempdir()?;
    let s1 = StorageProc::start(root.path(), "s1")?;
    for id in 1..=3 {
        create_volume(id, 4 * MIB, &s1, &[])?;
    }
    let primary = s1.data.to_string();
    let mut node = NodeProc::start(&root.path().join("node"), &["--max-attachments", "2"])?;
    let a1 = node.attach(attach_req(1, 4 * MIB, &primary))?;
    node.attach(attach_req(2, 4 * MIB, &primary))?;

    // The third is refused and nothing is started or left for it.
    let e = node.attach(attach_req(3, 4 * MIB, &primary)).unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-attachments"), "{e:?}");
    assert_eq!(node.list()?.len(), 2);
    assert!(!node.state_dir().join("attachments/3.json").exists());
    assert!(!node.run_dir().join("vol-3").exists());
    let sockets = backend_sockets(&node)?;
    assert_eq!(sockets.len(), 2, "{sockets:?}");
    assert!(!sockets.iter().any(|s| s.contains("vol-3")), "{sockets:?}");

    // At the cap, an attached volume is still attached again (the same
    // backend) or replaced by a newer attachment.
    assert_eq!(
        node.attach(attach_req(1, 4 * MIB, &primary))?.backend_pid,
        a1.backend_pid
    );
    let mut r = attach_req(2, 4 * MIB, &primary);
    r.attachment = 1;
    node.attach(r)?;
    assert_eq!(node.info(2)?.map(|i| i.attachment), Some(1));

    // A detach makes room.
    node.detach(1)?;
    node.attach(attach_req(3, 4 * MIB, &primary))?;
    assert_eq!(node.list()?.len(), 2);
    node.detach(2)?;
    node.detach(3)?;
    Ok(())
}

#[test]
fn run_dir_layout_owners_and_modes() -> Result<()> {
    ensure_root()?;
    let root = tempfile::tempdir()?;
    let_others_through(root.path())?;
    let s1 = StorageProc::start(root.path(), "s1")?;
    create_volume(1, 4 * MIB, &s1, &[])?;
    let mut node = NodeProc::start(&root.path().join("node"), &["--socket-owner", "4242:4343"])?;
    let a = node.attach(attach_req(1, 4 * MIB, &s1.data.to_string()))?;
    let run = node.run_dir();
    let dir = run.join("vol-1");
    let socket = dir.join("sock");
    let ctl_socket = dir.join("sock.ctl");
    assert_eq!(a.socket_path, socket.display().to_string());

    // The run directory stays ours; the attachment's directory lets the
    // socket owner's group pass; the socket is the owner's; the control
    // socket stays the backend's.
    assert_eq!(owner_mode(&run), (0, 0, 0o711));
    assert_eq!(owner_mode(&dir), (0, 4343, 0o710));
    assert_eq!(owner_mode(&socket), (4242, 4343, 0o600));
    assert_eq!(owner_mode(&ctl_socket), (0, 0, 0o600));

    // State: passable (the run directory is in it), records and logs private.
    let state = node.state_dir();
    assert_eq!(owner_mode(&state).2, 0o711);
    assert_eq!(owner_mode(&state.join("attachments")).2, 0o700);
    assert_eq!(owner_mode(&state.join("attachments/1.json")).2, 0o600);
    assert_eq!(owner_mode(&state.join("logs")).2, 0o700);
    assert_eq!(owner_mode(&state.join("logs/vol-1.log")).2, 0o600);

    // The VMM's user reaches its socket and nothing else; another user
    // reaches nothing.
    assert!(may_write_as(4242, 4343, &socket));
    assert!(!may_write_as(4242, 4343, &ctl_socket));
    assert!(!may_write_as(4242, 4343, &dir));
    assert!(!may_write_as(4242, 4343, &run));
    assert!(!may_write_as(4444, 4444, &socket));

    // The same after a restart of the backend.
    kill(a.backend_pid, libc::SIGKILL);
    wait_until("backend restart", TIMEOUT, || {
        node.info(1)
            .ok()
            .flatten()
            .is_some_and(|i| i.restarts == 1 && i.state == "RUNNING")
    })?;
    assert_eq!(owner_mode(&socket), (4242, 4343, 0o600));
    assert_eq!(owner_mode(&dir), (0, 4343, 0o710));
    assert_eq!(owner_mode(&run), (0, 0, 0o711));
    assert!(may_write_as(4242, 4343, &socket));
    node.detach(1)?;
    assert!(!dir.exists());
    Ok(())
}

#[test]
fn symlinks_planted_in_the_run_dir_are_not_followed() -> Result<()> {
    ensure_root()?;
    let root = tempfile::tempdir()?;
    let s1 = StorageProc::start(root.path(), "s1")?;
    create_volume(1, 4 * MIB, &s1, &[])?;
    create_volume(2, 4 * MIB, &s1, &[])?;
    let primary = s1.data.to_string();
    // Files outside that a followed chown or chmod would change.
    let outside_dir = root.path().join("outside-dir");
    std::fs::create_dir(&outside_dir)?;
    std::fs::set_permissions(&outside_dir, std::fs::Permissions::from_mode(0o755))?;
    let outside_file = root.path().join("outside-file");
    std::fs::write(&outside_file, "precious")?;
    std::fs::set_permissions(&outside_file, std::fs::Permissions::from_mode(0o640))?;
    let mut node = NodeProc::start(&root.path().join("node"), &["--socket-owner", "4242:4343"])?;
    let run = node.run_dir();

    // A symlink where volume 1's directory goes; a directory for volume 2
    // (mode 0777) with symlinks where its sockets go.
    std::os::unix::fs::symlink(&outside_dir, run.join("vol-1"))?;
    std::fs::create_dir(run.join("vol-2"))?;
    std::fs::set_permissions(run.join("vol-2"), std::fs::Permissions::from_mode(0o777))?;
    std::os::unix::fs::symlink(&outside_file, run.join("vol-2/sock"))?;
    std::os::unix::fs::symlink(&outside_file, run.join("vol-2/sock.ctl"))?;

    node.attach(attach_req(1, 4 * MIB, &primary))?;
    node.attach(attach_req(2, 4 * MIB, &primary))?;

    // The targets are untouched ...
    assert_eq!(owner_mode(&outside_dir), (0, 0, 0o755));
    assert_eq!(owner_mode(&outside_file), (0, 0, 0o640));
    assert_eq!(std::fs::read_to_string(&outside_file)?, "precious");
    assert_eq!(std::fs::read_dir(&outside_dir)?.count(), 0);
    // ... and the links were replaced by the real thing.
    let m = std::fs::symlink_metadata(run.join("vol-1"))?;
    assert!(m.is_dir() && !m.file_type().is_symlink());
    assert_eq!(owner_mode(&run.join("vol-1")), (0, 4343, 0o710));
    assert_eq!(owner_mode(&run.join("vol-2")), (0, 4343, 0o710));
    for v in ["vol-1", "vol-2"] {
        let sock = run.join(v).join("sock");
        assert!(std::fs::symlink_metadata(&sock)?.file_type().is_socket());
        assert_eq!(owner_mode(&sock), (4242, 4343, 0o600));
        assert_eq!(ctl(&sock, r#"{"op":"stats"}"#)?["ok"], true);
    }
    node.detach(1)?;
    node.detach(2)?;
    assert_eq!(owner_mode(&outside_dir), (0, 0, 0o755));
    assert_eq!(owner_mode(&outside_file), (0, 0, 0o640));
    assert_eq!(std::fs::read_dir(&run)?.count(), 0);
    Ok(())
}

#[test]
fn a_backend_that_plants_links_is_refused() -> Result<()> {
    ensure_root()?;
    let root = tempfile::tempdir()?;
    let target = root.path().join("target");
    std::fs::write(&target, "precious")?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640))?;
    let pids = root.path().join("pids");
    std::fs::create_dir(&pids)?;
    // Stands in for a compromised backend: instead of binding its sockets
    // it links a file outside under their names (volume 1: symlinks,
    // volume 2: hard links), hoping root changes that file's owner or mode.
    let fake = script(
        root.path(),
        "planting-backend",
        &format!(
            r#"#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in --socket) sock="$2"; shift;; --volume-id) vol="$2"; shift;; esac
  shift
done
echo $$ > "{pids}/$vol"
case "$vol" in
  1) ln -s "{target}" "$sock.ctl"; ln -s "{target}" "$sock";;
  *) ln "{target}" "$sock.ctl"; ln "{target}" "$sock";;
esac
exec sleep 600
"#,
            pids = pids.display(),
            target = target.display()
        ),
    )?;
    let fake = fake.display().to_string();
    let mut node = NodeProc::start(
        &root.path().join("node"),
        &["--backend-bin", &fake, "--socket-owner", "4242:4343"],
    )?;
    for (vol, what) in [(1, "is a symlink"), (2, "is a regular file")] {
        let e = node
            .attach(attach_req(vol, 4 * MIB, "127.0.0.1:7500"))
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains(what), "{e:?}");
        assert!(e.message().contains("refusing"), "{e:?}");
        // The file is untouched, the fake backend stopped, nothing kept.
        assert_eq!(owner_mode(&target), (0, 0, 0o640));
        assert_eq!(std::fs::read_to_string(&target)?, "precious");
        let pid: u32 = std::fs::read_to_string(pids.join(vol.to_string()))?
            .trim()
            .parse()?;
        assert!(!alive(pid), "fake backend {pid} still running");
        assert!(!node.run_dir().join(format!("vol-{vol}")).exists());
        assert!(!node
            .state_dir()
            .join(format!("attachments/{vol}.json"))
            .exists());
    }
    // The hard links were removed with the attachment's directory.
    assert_eq!(std::fs::metadata(&target)?.nlink(), 1);
    assert!(node.list()?.is_empty());
    Ok(())
}

#[test]
fn backends_run_as_the_backend_user() -> Result<()> {
    ensure_root()?;
    let root = tempfile::tempdir()?;
    let_others_through(root.path())?;
    let s1 = StorageProc::start(root.path(), "s1")?;
    create_volume(1, 4 * MIB, &s1, &[])?;
    let mut node = NodeProc::start(
        &root.path().join("node"),
        &[
            "--backend-user",
            "65534:65534",
            "--socket-owner",
            "4242:4343",
        ],
    )?;
    // As docs/node-manager.md says: the backend user must read the node's
    // key (storage servers require the node's certificate).
    let key = root.path().join("node/state/tls/tls.key");
    std::os::unix::fs::chown(&key, Some(65534), Some(65534))?;
    let a = node.attach(attach_req(1, 4 * MIB, &s1.data.to_string()))?;
    let dir = node.run_dir().join("vol-1");
    let socket = dir.join("sock");
    assert_eq!(process_ids(a.backend_pid), Some((65534, 65534)));
    // The backend's user owns the directory (it creates its sockets there).
    assert_eq!(owner_mode(&dir), (65534, 4343, 0o710));
    assert_eq!(owner_mode(&socket), (4242, 4343, 0o600));
    assert_eq!(owner_mode(&dir.join("sock.ctl")), (65534, 65534, 0o600));
    assert_eq!(owner_mode(&node.run_dir()), (0, 0, 0o711));
    assert!(may_write_as(4242, 4343, &socket));
    // The node manager still drives it over its control socket.
    node.resize(1, 8 * MIB)?;
    assert_eq!(ctl(&socket, r#"{"op":"stats"}"#)?["size_bytes"], 8 * MIB);

    // A restarted backend runs as that user too.
    kill(a.backend_pid, libc::SIGKILL);
    wait_until("backend restart", TIMEOUT, || {
        node.info(1)
            .ok()
            .flatten()
            .is_some_and(|i| i.restarts == 1 && i.state == "RUNNING")
    })?;
    let pid2 = node.info(1)?.map(|i| i.backend_pid).unwrap_or(0);
    assert_eq!(process_ids(pid2), Some((65534, 65534)));
    assert_eq!(owner_mode(&socket), (4242, 4343, 0o600));
    node.detach(1)?;
    assert!(!alive(pid2));
    assert!(!dir.exists());
    Ok(())
}

#[test]
fn a_record_of_the_older_layout_keeps_working() -> Result<()> {
    let root = tempfile::tempdir()?;
    let s1 = StorageProc::start(root.path(), "s1")?;
    create_volume(4, 4 * MIB, &s1, &[])?;
    let primary = s1.data.to_string();
    // A record written before attachments and per-attachment directories:
    // the socket directly in the run directory, no attachment, no owner;
    // its backend is gone (pid 0).
    let dir = root.path().join("node");
    let run = dir.join("state/run");
    let legacy = run.join("vol-4.sock");
    std::fs::create_dir_all(dir.join("state/attachments"))?;
    std::fs::write(
        dir.join("state/attachments/4.json"),
        serde_json::json!({
            "params": {"volume_id": 4, "size_bytes": 4 * MIB, "primary": primary,
                       "epoch": 1, "read_only": false, "queues": 1},
            "socket": legacy, "pid": 0, "start_time": 0, "restarts": 0
        })
        .to_string(),
    )?;
    let mut node = NodeProc::start(&dir, &[])?;
    wait_until("old record restarted", TIMEOUT, || {
        node.info(4)
            .ok()
            .flatten()
            .is_some_and(|i| i.state == "RUNNING" && i.restarts == 1)
    })?;
    let i = node.info(4)?.expect("recovered");
    assert_eq!(i.attachment, 0);
    assert_eq!(i.socket_path, legacy.display().to_string());
    assert_eq!(
        cmdline_flag(i.backend_pid, "--attachment").as_deref(),
        Some("0")
    );
    assert_eq!(mode(&legacy), 0o600);
    assert_eq!(ctl(&legacy, r#"{"op":"stats"}"#)?["ok"], true);

    // A newer attachment moves it to its own directory.
    let mut r = attach_req(4, 4 * MIB, &primary);
    r.queues = 1;
    r.attachment = 1;
    let a = node.attach(r)?;
    assert_eq!(a.socket_path, run.join("vol-4/sock").display().to_string());
    assert!(!alive(i.backend_pid));
    assert!(std::fs::symlink_metadata(&legacy).is_err());
    assert_eq!(record(&node, 4)?["params"]["attachment"], 1);
    node.detach(4)?;
    assert_eq!(std::fs::read_dir(&run)?.count(), 0);
    Ok(())
}
