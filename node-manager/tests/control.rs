//! Registration and heartbeats against a real `basalt-control`: the node
//! shows up UP with the status of its attachments (backend pid, restarts,
//! state), and comes back after the control service is restarted.

mod common;

use std::process::Command;

use anyhow::Result;
use basalt_proto::control as cpb;
use basalt_proto::control::control_client::ControlClient;
use basalt_tests::cluster::{create_volume, StorageProc};
use basalt_tests::controlplane::free_ports;
use basalt_tests::procs::{bin, Proc};
use common::*;

const MIB: u64 = 1 << 20;

fn start_control(dir: &std::path::Path, port: u16) -> Result<Proc> {
    let mut cmd = Command::new(bin("basalt-control")?);
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
        .arg(dir.join("control"))
        .args(["--heartbeat-interval-ms", "100"]);
    Proc::spawn("basalt-control", &mut cmd, dir.join("control.log"))
}

fn node_status(rt: &tokio::runtime::Runtime, url: &str) -> Option<cpb::Node> {
    rt.block_on(async {
        let mut c = ControlClient::connect(url.to_owned()).await.ok()?;
        let nodes = c
            .list_nodes(cpb::ListNodesRequest {})
            .await
            .ok()?
            .into_inner()
            .nodes;
        nodes.into_iter().find(|n| n.node_id == "n1")
    })
}

#[test]
fn registers_and_heartbeats_attachment_status() -> Result<()> {
    let root = tempfile::tempdir()?;
    let port = free_ports(1)?;
    let url = format!("http://127.0.0.1:{port}");
    let mut control = start_control(root.path(), port)?;
    let s1 = StorageProc::start(root.path(), "s1")?;
    create_volume(3, 4 * MIB, &s1, &[])?;
    let mut node = NodeProc::start(&root.path().join("node"), &["--control", &url])?;
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
    wait_until("node registered with its attachment", TIMEOUT, || {
        node_status(&rt, &url).is_some_and(|n| has_backend(&n, a.backend_pid))
    })?;
    let n = node_status(&rt, &url).expect("registered");
    assert_eq!(n.address, node.grpc.to_string());

    // A restarted backend is reported with its new pid and restart count.
    kill(a.backend_pid, libc::SIGKILL);
    wait_until("restart reported", TIMEOUT, || {
        node_status(&rt, &url).is_some_and(|n| {
            n.attachments
                .iter()
                .any(|s| s.volume_id == 3 && s.restarts == 1 && s.state == "RUNNING")
        })
    })?;

    // Control restarted (in-memory status lost): heartbeats fill it again.
    control.kill9();
    control = start_control(root.path(), port)?;
    wait_until("status after control restart", TIMEOUT, || {
        node_status(&rt, &url).is_some_and(|n| {
            n.state == "UP"
                && n.attachments
                    .iter()
                    .any(|s| s.volume_id == 3 && s.restarts == 1)
        })
    })?;
    control.check_alive()?;
    node.detach(3)?;
    Ok(())
}
