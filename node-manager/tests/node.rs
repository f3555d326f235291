//! The node manager with real processes: a storage server, `basalt-node`
//! and the `basalt-vhost-blk` backends it runs. Needs
//! `cargo build --workspace --bins` first.

mod common;

use anyhow::Result;
use basalt_tests::cluster::{create_volume, StorageProc};
use common::*;
use tonic::Code;

const MIB: u64 = 1 << 20;

#[test]
fn attach_supervise_readopt_resize_detach() -> Result<()> {
    let root = tempfile::tempdir()?;
    let s1 = StorageProc::start(root.path(), "s1")?;
    create_volume(1, 16 * MIB, &s1, &[])?;
    let primary = s1.data.to_string();
    let mut node = NodeProc::start(&root.path().join("node"), &[])?;

    // Attach: socket 0600 in a 0700 directory, backend running, launch flags.
    let a = node.attach(attach_req(1, 16 * MIB, &primary))?;
    let socket = node.run_dir().join("vol-1.sock");
    assert_eq!(a.socket_path, socket.display().to_string());
    assert!(a.backend_pid > 0 && alive(a.backend_pid));
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(&node.run_dir()), 0o700);
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
    assert!(!node.run_dir().join("vol-1.sock.ctl").exists());
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
