//! Harness: a real `basalt-storage`, a real `basalt-node` (restartable),
//! and a blocking NodeAgent client.
//!
//! Identities: one throwaway CA per test process ([`pki`]) issues the node
//! manager's certificate (node `n1`, installed in `<state-dir>/tls` before
//! it starts) and the control-service certificate the NodeAgent client
//! presents. A test with a real control service passes that service's CA
//! instead ([`NodeProc::start_with`]).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use basalt_auth::testing::TestPki;
use basalt_auth::{Principal, Role};
use basalt_node::procfs;
use basalt_proto::node as pb;
use basalt_proto::node::node_agent_client::NodeAgentClient;
use basalt_tests::procs::{bin, wait_for, Proc};
use serde_json::Value;
use tonic::transport::{Channel, ClientTlsConfig};

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The node id every [`NodeProc`] runs as.
pub const NODE_ID: &str = "n1";

/// Who the node manager under test is (the name its server proves).
pub fn node_principal() -> Principal {
    Principal::new(Role::Node, NODE_ID).expect("a valid node id")
}

/// This test process's cluster CA.
/// (The same as the storage servers' of `basalt_tests::cluster`, so
/// backends reach them.)
pub fn pki() -> Arc<TestPki> {
    basalt_tests::cluster::shared_test_pki()
}

/// A TLS NodeAgent client of the node manager at `grpc`.
pub async fn connect_agent(
    grpc: SocketAddr,
    tls: ClientTlsConfig,
) -> Result<NodeAgentClient<Channel>> {
    let channel = basalt_auth::endpoint(&grpc.to_string(), tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to the node manager at {grpc}"))?;
    Ok(NodeAgentClient::new(channel))
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// One `basalt-node` process with its state under `dir`.
pub struct NodeProc {
    pub dir: PathBuf,
    pub grpc: SocketAddr,
    pub proc: Proc,
    /// The CA of the node's certificate and of the client's.
    pub pki: Arc<TestPki>,
    extra: Vec<String>,
    rt: tokio::runtime::Runtime,
    client: NodeAgentClient<Channel>,
}

impl NodeProc {
    /// Starts a node manager with a certificate from this process's [`pki`].
    pub fn start(dir: &Path, extra: &[&str]) -> Result<NodeProc> {
        Self::start_with(dir, extra, pki())
    }

    /// Starts a node manager whose certificate (and the control-service
    /// certificate its client presents) `pki` issues.
    pub fn start_with(dir: &Path, extra: &[&str], pki: Arc<TestPki>) -> Result<NodeProc> {
        pki.install(&dir.join("state").join("tls"), Role::Node, NODE_ID);
        Self::start_joining(dir, extra, pki)
    }

    /// Starts a node manager without installing a certificate: it has one
    /// already, or gets one by joining (`--join-token-file` in `extra`).
    /// Its client presents the control-service certificate of `pki`.
    pub fn start_joining(dir: &Path, extra: &[&str], pki: Arc<TestPki>) -> Result<NodeProc> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (proc, grpc) = Self::launch(dir, &extra)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt.block_on(connect_agent(grpc, Self::control_tls(&pki)))?;
        Ok(NodeProc {
            dir: dir.to_owned(),
            grpc,
            proc,
            pki,
            extra,
            rt,
            client,
        })
    }

    /// The control service's client side towards this node.
    fn control_tls(pki: &TestPki) -> ClientTlsConfig {
        pki.control().client_tls(&node_principal())
    }

    /// ListAttachments over a new connection made with `tls` (a failed
    /// connection is `UNAVAILABLE` with its causes).
    pub fn list_with(
        &self,
        tls: ClientTlsConfig,
    ) -> Result<Vec<pb::AttachmentInfo>, tonic::Status> {
        self.rt.block_on(async {
            let mut c = connect_agent(self.grpc, tls)
                .await
                .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
            c.list_attachments(pb::ListAttachmentsRequest {})
                .await
                .map(|r| r.into_inner().attachments)
        })
    }

    /// Runs `f` on this harness's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn launch(dir: &Path, extra: &[String]) -> Result<(Proc, SocketAddr)> {
        std::fs::create_dir_all(dir)?;
        let ready = dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Command::new(bin("basalt-node")?);
        cmd.args([
            "--node-id",
            NODE_ID,
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .arg("--ready-file")
        .arg(&ready)
        .args([
            "--restart-backoff-ms",
            "50",
            "--backend-stop-timeout-ms",
            "5000",
        ])
        .args(extra);
        let mut proc = Proc::spawn("basalt-node", &mut cmd, dir.join("node.log"))?;
        let v: Value = wait_for(&mut proc, TIMEOUT, || {
            std::fs::read(&ready)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
        })?;
        let grpc = v["grpc"]
            .as_str()
            .context("ready file lacks grpc")?
            .parse()?;
        Ok((proc, grpc))
    }

    /// `kill -9` the node manager and start it again on the same state.
    pub fn restart_after_kill9(&mut self) -> Result<()> {
        self.proc.kill9();
        let (proc, grpc) = Self::launch(&self.dir, &self.extra)?;
        self.proc = proc;
        self.grpc = grpc;
        self.client = self
            .rt
            .block_on(connect_agent(grpc, Self::control_tls(&self.pki)))?;
        Ok(())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.state_dir().join("run")
    }

    /// Attaches; a request without a grant gets one from [`pki`] for its
    /// volume and attachment, as the control service would sign it.
    pub fn attach(
        &mut self,
        mut r: pb::AttachRequest,
    ) -> Result<pb::AttachResponse, tonic::Status> {
        if r.grant.is_empty() {
            r.grant = grant_for(&r);
        }
        self.rt
            .block_on(self.client.attach(r))
            .map(|r| r.into_inner())
    }

    pub fn detach(&mut self, volume_id: u64) -> Result<(), tonic::Status> {
        self.rt
            .block_on(self.client.detach(pb::DetachRequest { volume_id }))
            .map(|_| ())
    }

    pub fn resize(&mut self, volume_id: u64, size_bytes: u64) -> Result<(), tonic::Status> {
        self.rt
            .block_on(self.client.resize(pb::ResizeRequest {
                volume_id,
                size_bytes,
            }))
            .map(|_| ())
    }

    /// UpdateLayout for attachment 0 (what [`attach_req`] attaches).
    pub fn update_layout(
        &mut self,
        volume_id: u64,
        primary_address: &str,
        epoch: u64,
    ) -> Result<(), tonic::Status> {
        self.update_layout_for(volume_id, primary_address, epoch, 0)
    }

    pub fn update_layout_for(
        &mut self,
        volume_id: u64,
        primary_address: &str,
        epoch: u64,
        attachment: u64,
    ) -> Result<(), tonic::Status> {
        self.rt
            .block_on(self.client.update_layout(pb::UpdateLayoutRequest {
                volume_id,
                primary_address: primary_address.to_owned(),
                epoch,
                attachment,
                grant: Vec::new(),
            }))
            .map(|_| ())
    }

    pub fn list(&mut self) -> Result<Vec<pb::AttachmentInfo>> {
        Ok(self
            .rt
            .block_on(self.client.list_attachments(pb::ListAttachmentsRequest {}))?
            .into_inner()
            .attachments)
    }

    pub fn info(&mut self, volume_id: u64) -> Result<Option<pb::AttachmentInfo>> {
        Ok(self.list()?.into_iter().find(|a| a.volume_id == volume_id))
    }
}

impl Drop for NodeProc {
    /// Backends outlive the node manager by design; stop the ones this
    /// test started.
    fn drop(&mut self) {
        self.proc.kill9();
        if let Ok(b) = bin("basalt-vhost-blk") {
            for (pid, _) in procfs::backends_in(&b, &self.run_dir()) {
                kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Runs `basalt-node` with `args`, its state in `state_dir` and a
/// kernel-chosen port, until it exits (it must, within [`TIMEOUT`]);
/// returns its status and output.
pub fn run_node_to_exit(
    args: &[&str],
    state_dir: &Path,
) -> Result<(std::process::ExitStatus, String)> {
    use std::process::Stdio;
    let mut child = Command::new(bin("basalt-node")?)
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "basalt-node did not exit: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status, text))
}

pub fn kill(pid: u32, sig: i32) {
    // SAFETY: signalling a backend process this test started.
    unsafe { libc::kill(pid as i32, sig) };
}

pub fn alive(pid: u32) -> bool {
    procfs::start_time(pid).is_some()
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

/// (uid, gid, mode) of `p` itself (a symlink is not followed).
pub fn owner_mode(p: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p)
        .map(|m| (m.uid(), m.gid(), m.mode() & 0o7777))
        .unwrap_or((u32::MAX, u32::MAX, 0))
}

/// The value of `--flag` in a running process's command line.
pub fn cmdline_flag(pid: u32, flag: &str) -> Option<String> {
    let cmd = procfs::cmdline(pid)?;
    cmd.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone())
}

/// Real uid and gid of a running process (/proc/<pid>/status).
pub fn process_ids(pid: u32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("Uid:")?, field("Gid:")?))
}

/// Whether `uid:gid` may write (connect to) `p`, asked by `test -w` in a
/// shell running as that user.
pub fn may_write_as(uid: u32, gid: u32, p: &Path) -> bool {
    use std::os::unix::process::CommandExt;
    Command::new("/bin/sh")
        .args(["-c", "test -w \"$1\"", "sh"])
        .arg(p)
        .uid(uid)
        .gid(gid)
        .status()
        .is_ok_and(|s| s.success())
}

/// A script standing in for the backend binary.
pub fn script(dir: &Path, name: &str, body: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, body)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    Ok(p)
}

/// One request on a backend's control socket.
pub fn ctl(socket: &Path, line: &str) -> Result<Value> {
    let mut p = socket.as_os_str().to_owned();
    p.push(".ctl");
    let c = UnixStream::connect(PathBuf::from(p)).context("connecting to the control socket")?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut w = c.try_clone()?;
    w.write_all(line.as_bytes())?;
    w.write_all(b"\n")?;
    let mut reply = String::new();
    BufReader::new(c).read_line(&mut reply)?;
    Ok(serde_json::from_str(&reply)?)
}

pub fn attach_req(volume_id: u64, size: u64, primary: &str) -> pb::AttachRequest {
    pb::AttachRequest {
        volume_id,
        size_bytes: size,
        primary_address: primary.to_owned(),
        epoch: 1,
        read_only: false,
        queues: 2,
        attachment: 0,
        grant: Vec::new(),
    }
}

/// The grant the control service would sign for `r` on node [`NODE_ID`].
pub fn grant_for(r: &pb::AttachRequest) -> Vec<u8> {
    pki()
        .ca
        .sign_grant(&basalt_auth::Grant {
            volume_id: r.volume_id,
            attachment: r.attachment,
            node: NODE_ID.into(),
            read_only: r.read_only,
            expires_unix: basalt_auth::grant::now_unix() + 86400,
        })
        .expect("sign a test grant")
}
