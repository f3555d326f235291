//! Registration and heartbeats against a real `basalt-control`: the node
//! shows up UP with the status of its attachments (backend pid, restarts,
//! state), and comes back after the control service is restarted. A node
//! without a certificate joins with a one-time token.
//!
//! The control service bootstraps the cluster identity (`--bootstrap`: its
//! CA and certificate in `<state-dir>/tls`, an admin token in
//! `<state-dir>/admin.token`) and serves TLS only. The test loads that CA
//! to issue the node's certificate, and lists nodes as the admin (ListNodes
//! is open to admins only).

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use basalt_auth::testing::TestPki;
use basalt_auth::{server_only_tls, Ca, Credentials, Principal};
use basalt_proto::control as cpb;
use basalt_proto::control::control_client::ControlClient;
use basalt_tests::cluster::{create_volume, StorageProc};
use basalt_tests::controlplane::free_ports;
use basalt_tests::procs::{bin, wait_for, Proc};
use common::*;
use tonic::transport::Channel;

const MIB: u64 = 1 << 20;

/// One test at a time: `free_ports` gives tests of one process the same
/// port, and a control service started on a taken port would leave the
/// test talking to another test's control service.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The control service's TLS directory.
fn control_tls_dir(dir: &Path) -> PathBuf {
    dir.join("control").join("tls")
}

/// Starts `basalt-control --bootstrap` and waits until its CA and admin
/// token exist and it listens.
fn start_control(dir: &Path, port: u16) -> Result<Proc> {
    let mut cmd = Command::new(bin("basalt-control")?);
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
        .arg(dir.join("control"))
        .args(["--heartbeat-interval-ms", "100", "--bootstrap"]);
    let mut p = Proc::spawn("basalt-control", &mut cmd, dir.join("control.log"))?;
    let tls = control_tls_dir(dir);
    wait_for(&mut p, TIMEOUT, || {
        (tls.join("ca.crt").exists()
            && tls.join("ca.key").exists()
            && dir.join("control").join("admin.token").exists()
            && TcpStream::connect(("127.0.0.1", port)).is_ok())
        .then_some(())
    })?;
    Ok(p)
}

/// The cluster CA the control service bootstrapped.
fn load_control_ca(dir: &Path) -> Result<Ca> {
    let tls = control_tls_dir(dir);
    let read = |name: &str| {
        std::fs::read_to_string(tls.join(name))
            .with_context(|| format!("reading {}", tls.join(name).display()))
    };
    Ok(Ca::load(&read("ca.crt")?, &read("ca.key")?)?)
}

/// How the test calls the control service: as the admin `--bootstrap`
/// made, verifying the control service against the cluster CA.
struct Admin {
    ca_pem: String,
    token: String,
}

impl Admin {
    fn load(dir: &Path) -> Result<Admin> {
        let ca = control_tls_dir(dir).join("ca.crt");
        Ok(Admin {
            ca_pem: std::fs::read_to_string(&ca)
                .with_context(|| format!("reading {}", ca.display()))?,
            token: basalt_auth::read_token(&dir.join("control").join("admin.token"))?,
        })
    }

    async fn client(&self, url: &str) -> Result<ControlClient<Channel>> {
        let tls = server_only_tls(&self.ca_pem, &Principal::control());
        Ok(ControlClient::new(
            basalt_auth::endpoint(url, tls)?.connect().await?,
        ))
    }

    /// `msg` with the admin's token.
    fn request<T>(&self, msg: T) -> Result<tonic::Request<T>> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut()
            .insert("authorization", format!("Bearer {}", self.token).parse()?);
        Ok(req)
    }
}

/// Node `n1` as the control service lists it (`None`: not registered).
fn node_status(rt: &tokio::runtime::Runtime, url: &str, me: &Admin) -> Result<Option<cpb::Node>> {
    rt.block_on(async {
        let nodes = me
            .client(url)
            .await?
            .list_nodes(me.request(cpb::ListNodesRequest {})?)
            .await?
            .into_inner()
            .nodes;
        Ok(nodes.into_iter().find(|n| n.node_id == NODE_ID))
    })
}

/// Waits until the control service lists node `n1` and `pred` holds for
/// it; on timeout, says why with the last error and both logs.
fn wait_status(
    rt: &tokio::runtime::Runtime,
    url: &str,
    me: &Admin,
    what: &str,
    (control, node): (&Proc, &NodeProc),
    pred: impl Fn(&cpb::Node) -> bool,
) -> Result<cpb::Node> {
    let mut last = String::from("not listed");
    let mut found = None;
    wait_until(what, TIMEOUT, || match node_status(rt, url, me) {
        Ok(Some(n)) if pred(&n) => {
            found = Some(n);
            true
        }
        Ok(n) => {
            last = format!("{n:?}");
            false
        }
        Err(e) => {
            last = format!("{e:#}");
            false
        }
    })
    .with_context(|| {
        format!(
            "last answer: {last}\ncontrol log:\n{}\nnode log:\n{}",
            control.log_tail(30),
            node.proc.log_tail(30)
        )
    })?;
    found.context("found")
}

#[test]
fn registers_and_heartbeats_attachment_status() -> Result<()> {
    let _serial = serial();
    let root = tempfile::tempdir()?;
    let port = free_ports(1)?;
    let url = format!("https://127.0.0.1:{port}");
    let mut control = start_control(root.path(), port)?;
    // The node's certificate comes from the cluster CA.
    let pki = Arc::new(TestPki {
        ca: load_control_ca(root.path())?,
    });
    let me = Admin::load(root.path())?;
    let ca_file = control_tls_dir(root.path()).join("ca.crt");
    let ca_file = ca_file.to_str().context("a UTF-8 temporary path")?;
    let s1 = StorageProc::start(root.path(), "s1")?;
    create_volume(3, 4 * MIB, &s1, &[])?;
    let mut node = NodeProc::start_with(
        &root.path().join("node"),
        &["--control", &url, "--ca-file", ca_file],
        pki.clone(),
    )?;
    let a = node.attach(attach_req(3, 4 * MIB, &s1.data.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let has_backend = |n: &cpb::Node, pid: u32| {
        n.state == "UP"
            && n.attachments
                .iter()
                .any(|s| s.volume_id == 3 && s.backend_pid == pid && s.state == "RUNNING")
    };
    let n = wait_status(
        &rt,
        &url,
        &me,
        "node registered with its attachment",
        (&control, &node),
        |n| has_backend(n, a.backend_pid),
    )?;
    assert_eq!(n.address, node.grpc.to_string());

    // A restarted backend is reported with its new pid and restart count.
    kill(a.backend_pid, libc::SIGKILL);
    wait_status(&rt, &url, &me, "restart reported", (&control, &node), |n| {
        n.attachments
            .iter()
            .any(|s| s.volume_id == 3 && s.restarts == 1 && s.state == "RUNNING")
    })?;

    // Control restarted (in-memory status lost): heartbeats fill it again.
    control.kill9();
    control = start_control(root.path(), port)?;
    wait_status(
        &rt,
        &url,
        &me,
        "status after control restart",
        (&control, &node),
        |n| {
            n.state == "UP"
                && n.attachments
                    .iter()
                    .any(|s| s.volume_id == 3 && s.restarts == 1)
        },
    )?;
    control.check_alive()?;
    node.detach(3)?;
    Ok(())
}

#[test]
fn joins_with_a_one_time_token() -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let _serial = serial();
    let root = tempfile::tempdir()?;
    let port = free_ports(1)?;
    let url = format!("https://127.0.0.1:{port}");
    let control = start_control(root.path(), port)?;
    let me = Admin::load(root.path())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = rt
        .block_on(async {
            let req = me.request(cpb::CreateJoinTokenRequest {
                role: "node".into(),
                id: NODE_ID.into(),
                ttl_secs: 0,
            })?;
            anyhow::Ok(me.client(&url).await?.create_join_token(req).await?)
        })?
        .into_inner()
        .token;
    let token_file = root.path().join("join.token");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&token_file)?
        .write_all(token.as_bytes())?;
    let token_file = token_file.to_str().context("a UTF-8 temporary path")?;
    let ca_file = control_tls_dir(root.path()).join("ca.crt");
    let ca_file = ca_file.to_str().context("a UTF-8 temporary path")?;
    let join = [
        "--control",
        &url,
        "--ca-file",
        ca_file,
        "--join-token-file",
        token_file,
    ];

    // No certificate: it joins, stores the certificate and registers.
    let pki = Arc::new(TestPki {
        ca: load_control_ca(root.path())?,
    });
    let mut node = NodeProc::start_joining(&root.path().join("node"), &join, pki)?;
    let tls = node.state_dir().join("tls");
    assert_eq!(Credentials::load(&tls)?.principal, node_principal());
    wait_status(
        &rt,
        &url,
        &me,
        "joined node registered",
        (&control, &node),
        |n| n.state == "UP",
    )?;
    assert!(node.list()?.is_empty());

    // Restarted, it keeps its certificate (the token is not used again).
    let cert = std::fs::read_to_string(tls.join("tls.crt"))?;
    node.restart_after_kill9()?;
    assert_eq!(std::fs::read_to_string(tls.join("tls.crt"))?, cert);
    assert!(node.list()?.is_empty());

    // The token was for one join: another node manager cannot use it.
    let mut args = vec!["--node-id", NODE_ID];
    args.extend_from_slice(&join);
    let (status, out) = run_node_to_exit(&args, &root.path().join("other"))?;
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("refused to join"), "{out}");
    Ok(())
}
