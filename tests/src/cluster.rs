//! A local Basalt data path made of real processes: storage servers on
//! loopback, volumes created through their admin gRPC API, and a
//! `basalt-vhost-blk` backend serving a vhost-user socket.
//!
//! There is no control service: every identity comes from one test CA per
//! test process, [`test_pki`]. Storage servers get their certificates in
//! `<data-dir>/tls`; the admin API is called as the control service of that
//! CA ([`Admin::connect`]); a backend given `--control` gets a node
//! manager's certificate ([`BackendProc::start`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use basalt_auth::testing::TestPki;
use basalt_auth::{Credentials, Principal, Role};
use basalt_proto::storage_admin as pb;
use basalt_proto::storage_admin::storage_admin_client::StorageAdminClient;

use crate::procs::{bin, wait_for, Proc};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The test CA of every process these helpers start (one per test
/// process): it issues the storage servers' and backends' certificates
/// and the control credentials [`Admin`] calls with.
pub fn test_pki() -> &'static TestPki {
    static PKI: OnceLock<std::sync::Arc<TestPki>> = OnceLock::new();
    PKI.get_or_init(shared_test_pki)
}

/// [`test_pki`], shared (the same CA).
pub fn shared_test_pki() -> std::sync::Arc<TestPki> {
    static PKI: OnceLock<std::sync::Arc<TestPki>> = OnceLock::new();
    PKI.get_or_init(|| std::sync::Arc::new(TestPki::new()))
        .clone()
}

/// The node id whose certificate backends started with `--control` present.
pub const BACKEND_NODE_ID: &str = "e2e-node";

/// One `basalt-storage` process.
pub struct StorageProc {
    pub id: String,
    pub dir: PathBuf,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub proc: Proc,
}

impl StorageProc {
    /// Starts a server with its data under `root/<id>`, on kernel-chosen ports.
    pub fn start(root: &Path, id: &str) -> Result<StorageProc> {
        Self::start_with(root, id, &[])
    }

    /// [`StorageProc::start`] with more flags (not kept across restarts).
    pub fn start_with(root: &Path, id: &str, extra: &[&str]) -> Result<StorageProc> {
        let dir = root.join(id);
        let (proc, data, admin) = Self::launch(
            &dir,
            id,
            "127.0.0.1:0".parse()?,
            "127.0.0.1:0".parse()?,
            extra,
        )?;
        Ok(StorageProc {
            id: id.to_owned(),
            dir,
            data,
            admin,
            proc,
        })
    }

    fn launch(
        dir: &Path,
        id: &str,
        data: SocketAddr,
        admin: SocketAddr,
        extra: &[&str],
    ) -> Result<(Proc, SocketAddr, SocketAddr)> {
        std::fs::create_dir_all(dir)?;
        // Its identity, where it looks by default (`<data-dir>/tls`).
        test_pki()
            .issue(Role::Storage, id)
            .save(&dir.join("data").join("tls"))
            .with_context(|| format!("installing the credentials of storage server {id}"))?;
        let ready = dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Command::new(bin("basalt-storage")?);
        cmd.args(["--server-id", id, "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen",
                &data.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .args(["--mirror-reconnect-ms", "50"])
            .args(extra)
            .arg("--ready-file")
            .arg(&ready);
        let mut proc = Proc::spawn(
            &format!("basalt-storage {id}"),
            &mut cmd,
            dir.join("server.log"),
        )?;
        let v: serde_json::Value = wait_for(&mut proc, READY_TIMEOUT, || {
            std::fs::read(&ready)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
        })?;
        let addr = |k: &str| -> Result<SocketAddr> {
            v[k].as_str()
                .context("ready file lacks address")?
                .parse()
                .context("bad address in ready file")
        };
        Ok((proc, addr("data")?, addr("admin")?))
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts the server again on the same ports and data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill9();
        let (proc, _, _) = Self::launch(&self.dir, &self.id, self.data, self.admin, &[])?;
        self.proc = proc;
        Ok(())
    }

    /// Path of a copy's data file.
    pub fn copy_file(&self, volume_id: u64) -> PathBuf {
        self.dir
            .join("data/copies")
            .join(volume_id.to_string())
            .join("data")
    }

    pub fn admin(&self) -> Result<Admin> {
        Admin::connect(self.admin, &self.id)
    }
}

/// Blocking client of a storage server's admin API, over mutual TLS as the
/// control service (the only caller the admin API accepts).
pub struct Admin {
    rt: tokio::runtime::Runtime,
    client: StorageAdminClient<tonic::transport::Channel>,
}

impl Admin {
    /// Connects to storage server `server_id` at `addr` (one started by
    /// [`StorageProc`]) as the control service of [`test_pki`].
    pub fn connect(addr: SocketAddr, server_id: &str) -> Result<Admin> {
        Self::connect_with(addr, server_id, &test_pki().control())
    }

    /// Connects to storage server `server_id` at `addr` presenting `creds`
    /// (e.g. a managed cluster's control credentials, loaded with
    /// [`Credentials::load`] from the control service's tls directory);
    /// the server must prove it is `server_id` under the same CA.
    pub fn connect_with(addr: SocketAddr, server_id: &str, creds: &Credentials) -> Result<Admin> {
        let server = Principal::new(Role::Storage, server_id)?;
        let endpoint = basalt_auth::endpoint(&addr.to_string(), creds.client_tls(&server))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let channel = rt
            .block_on(endpoint.connect())
            .with_context(|| format!("connecting to the admin API of {server_id} at {addr}"))?;
        Ok(Admin {
            rt,
            client: StorageAdminClient::new(channel),
        })
    }

    pub fn create_copy(
        &mut self,
        volume_id: u64,
        size_bytes: u64,
        layout: pb::CopyLayout,
    ) -> Result<pb::CopyInfo> {
        let req = pb::CreateCopyRequest {
            volume_id,
            size_bytes,
            layout: Some(layout),
            source: None,
        };
        let r = self.rt.block_on(self.client.create_copy(req))?;
        r.into_inner().copy.context("no copy in response")
    }

    pub fn describe(&mut self, volume_id: u64) -> Result<pb::CopyInfo> {
        let r = self.rt.block_on(
            self.client
                .describe_copy(pb::DescribeCopyRequest { volume_id }),
        )?;
        r.into_inner().copy.context("no copy in response")
    }

    pub fn set_layout(&mut self, volume_id: u64, layout: pb::CopyLayout) -> Result<pb::CopyInfo> {
        let req = pb::SetLayoutRequest {
            volume_id,
            layout: Some(layout),
        };
        let r = self.rt.block_on(self.client.set_layout(req))?;
        r.into_inner().copy.context("no copy in response")
    }
}

/// Creates a volume with a primary on `primary` and mirrors on `mirrors`.
pub fn create_volume(
    volume_id: u64,
    size_bytes: u64,
    primary: &StorageProc,
    mirrors: &[&StorageProc],
) -> Result<()> {
    for m in mirrors {
        m.admin()?.create_copy(
            volume_id,
            size_bytes,
            pb::CopyLayout {
                role: pb::CopyRole::Mirror as i32,
                epoch: 1,
                mirrors: vec![],
                primary_server_id: primary.id.clone(),
                syncing: vec![],
                attachment: 0,
            },
        )?;
    }
    let peers = mirrors
        .iter()
        .map(|m| pb::Peer {
            server_id: m.id.clone(),
            address: m.data.to_string(),
            delta: false,
            seed_snapshot: 0,
        })
        .collect();
    primary.admin()?.create_copy(
        volume_id,
        size_bytes,
        pb::CopyLayout {
            role: pb::CopyRole::Primary as i32,
            epoch: 1,
            mirrors: peers,
            primary_server_id: String::new(),
            syncing: vec![],
            attachment: 0,
        },
    )?;
    Ok(())
}

/// One `basalt-vhost-blk` process.
pub struct BackendProc {
    pub socket: PathBuf,
    pub proc: Proc,
}

/// Options for [`BackendProc::start`].
pub struct BackendOpts<'a> {
    pub volume_id: u64,
    pub size_bytes: u64,
    pub primary: SocketAddr,
    pub queues: u16,
    pub read_only: bool,
    pub extra: &'a [&'a str],
}

impl BackendProc {
    /// Starts a backend listening on `dir/vol-<id>.sock` and waits for the
    /// socket. Unless `o.extra` says otherwise, it gets the certificate of
    /// node [`BACKEND_NODE_ID`] from [`test_pki`] in `dir/node-tls` and a
    /// grant for the volume (and `--attachment`, default 0), as a node
    /// manager's backend would.
    pub fn start(dir: &Path, o: &BackendOpts<'_>) -> Result<BackendProc> {
        let socket = dir.join(format!("vol-{}.sock", o.volume_id));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(bin("basalt-vhost-blk")?);
        let flag = |name: &str| {
            o.extra
                .iter()
                .any(|a| *a == name || a.starts_with(&format!("{name}=")))
        };
        if !flag("--tls-dir") {
            let tls = dir.join("node-tls");
            test_pki()
                .issue(Role::Node, BACKEND_NODE_ID)
                .save(&tls)
                .context("installing the backend's node credentials")?;
            cmd.arg("--tls-dir").arg(tls);
        }
        if !flag("--grant-file") {
            let attachment = o
                .extra
                .windows(2)
                .find(|w| w[0] == "--attachment")
                .and_then(|w| w[1].parse().ok())
                .unwrap_or(0);
            let grant = test_pki().ca.sign_grant(&basalt_auth::Grant {
                volume_id: o.volume_id,
                attachment,
                node: BACKEND_NODE_ID.into(),
                read_only: o.read_only,
                expires_unix: basalt_auth::grant::now_unix() + 86400,
            })?;
            let file = dir.join(format!("vol-{}.grant", o.volume_id));
            basalt_auth::grant::save(&file, &grant)?;
            cmd.arg("--grant-file").arg(file);
        }
        cmd.arg("--socket")
            .arg(&socket)
            .args(["--volume-id", &o.volume_id.to_string()])
            .args(["--size-bytes", &o.size_bytes.to_string()])
            .args(["--primary", &o.primary.to_string()])
            .args(["--queues", &o.queues.to_string()])
            .args(o.extra);
        if o.read_only {
            cmd.arg("--read-only");
        }
        let log = dir.join(format!("backend-{}.log", o.volume_id));
        let mut proc = Proc::spawn("basalt-vhost-blk", &mut cmd, log)?;
        wait_for(&mut proc, READY_TIMEOUT, || socket.exists().then_some(()))?;
        Ok(BackendProc { socket, proc })
    }
}

/// Compares two copies' data files; returns the number of bytes compared.
pub fn assert_identical(a: &Path, b: &Path) -> Result<u64> {
    use std::io::Read;
    let mut fa = std::fs::File::open(a).with_context(|| a.display().to_string())?;
    let mut fb = std::fs::File::open(b).with_context(|| b.display().to_string())?;
    let (la, lb) = (fa.metadata()?.len(), fb.metadata()?.len());
    anyhow::ensure!(la == lb, "copies differ in size: {la} vs {lb}");
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < la {
        let n = ((la - off) as usize).min(ba.len());
        fa.read_exact(&mut ba[..n])?;
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            anyhow::bail!("copies differ at byte {}", off + i as u64);
        }
        off += n as u64;
    }
    Ok(la)
}
