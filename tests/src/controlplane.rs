//! A managed cluster of real processes: `basalt-control`, storage servers
//! registered with it, and one `basalt-node`; plus the `basalt` CLI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use basalt_cli::auth::{connect_with, Access, Client};
use basalt_proto::control as pb;

use crate::faultproxy::FaultProxy;
use crate::procs::{bin, wait_for, Proc};

/// Proxies in front of one storage server (see [`ManagedCluster::start_proxied`]):
/// everyone reaches its data and admin ports through them, and it reaches
/// the control service through the third, so cutting all three isolates it.
pub struct ServerProxies {
    pub data: FaultProxy,
    pub admin: FaultProxy,
    pub control: FaultProxy,
}

impl ServerProxies {
    pub fn cut(&self) {
        self.data.cut();
        self.admin.cut();
        self.control.cut();
    }

    pub fn heal(&self) {
        self.data.heal();
        self.admin.heal();
        self.control.heal();
    }
}

/// Finds `n` consecutive free loopback ports.
pub fn free_ports(n: u16) -> Result<u16> {
    let seed = std::process::id() as u16;
    for attempt in 0..200u16 {
        let base = 20000 + (seed.wrapping_mul(31).wrapping_add(attempt.wrapping_mul(97)) % 30000);
        if (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return Ok(base);
        }
    }
    bail!("no {n} consecutive free ports")
}

pub struct ManagedCluster {
    pub root: PathBuf,
    pub base: u16,
    pub control: Proc,
    pub servers: Vec<Proc>,
    pub node: Proc,
    pub rt: tokio::runtime::Runtime,
    /// Per server, when started with [`ManagedCluster::start_proxied`].
    pub proxies: Vec<ServerProxies>,
    /// Extra flags of the control service (kept across its restarts).
    pub control_args: Vec<String>,
}

impl ManagedCluster {
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.base)
    }

    /// The cluster CA certificate, written by `basalt-control --bootstrap`.
    pub fn ca_file(&self) -> PathBuf {
        Self::ca_file_in(&self.root)
    }

    fn ca_file_in(root: &Path) -> PathBuf {
        root.join("control").join("tls").join("ca.crt")
    }

    /// The cluster CA itself (certificate and key), for tests that must
    /// act as a node holding grants the control service no longer issues.
    pub fn cluster_ca(&self) -> Result<basalt_auth::Ca> {
        let dir = self.root.join("control").join("tls");
        let cert = std::fs::read_to_string(dir.join("ca.crt"))?;
        let key = std::fs::read_to_string(dir.join("ca.key"))?;
        Ok(basalt_auth::Ca::load(&cert, &key)?)
    }

    /// The admin API token file written by `--bootstrap`.
    pub fn admin_token_file(&self) -> PathBuf {
        Self::token_file_in(&self.root)
    }

    fn token_file_in(root: &Path) -> PathBuf {
        root.join("control").join("admin.token")
    }

    fn access_in(root: &Path) -> Result<Access> {
        let token = basalt_auth::read_token(&Self::token_file_in(root))?;
        Access::new(&Self::ca_file_in(root), token)
    }

    /// The admin's access (CA and token).
    pub fn access(&self) -> Result<Access> {
        Self::access_in(&self.root)
    }

    /// The flags with which a storage server or node manager gets its
    /// certificate: none when `tls_dir` has one, else a fresh one-time join
    /// token (made through the API, as an operator would).
    fn join_args_in(
        rt: &tokio::runtime::Runtime,
        root: &Path,
        base: u16,
        role: &str,
        id: &str,
        tls_dir: &Path,
    ) -> Result<Vec<String>> {
        if tls_dir.join(basalt_auth::files::CERT).exists() {
            return Ok(Vec::new());
        }
        let access = Self::access_in(root)?;
        rt.block_on(async {
            let mut c = connect_with(&format!("127.0.0.1:{base}"), &access).await?;
            basalt_cli::up::join_flags(&mut c, role, id, tls_dir, &Self::ca_file_in(root)).await
        })
    }

    fn start_control(root: &Path, base: u16, args: &[String]) -> Result<Proc> {
        Self::start_control_env(root, base, &[], args)
    }

    fn start_control_env(
        root: &Path,
        base: u16,
        env: &[(&str, &str)],
        args: &[String],
    ) -> Result<Proc> {
        let mut cmd = Command::new(bin("basalt-control")?);
        cmd.envs(env.iter().copied());
        cmd.args(args);
        cmd.args(["--listen", &format!("127.0.0.1:{base}"), "--bootstrap"])
            .arg("--state-dir")
            .arg(root.join("control"))
            .args([
                "--heartbeat-interval-ms",
                "200",
                "--down-after-ms",
                "1000",
                "--reconcile-interval-ms",
                "300",
                "--rejoin-wait-ms",
                "3000",
            ]);
        Proc::spawn("basalt-control", &mut cmd, root.join("control.log"))
    }

    pub fn server_id(i: usize) -> String {
        format!("s{}", i + 1)
    }

    pub fn server_data_dir(&self, i: usize) -> PathBuf {
        self.root.join("storage").join(Self::server_id(i))
    }

    fn data_port(base: u16, i: usize) -> u16 {
        base + 10 + 2 * i as u16
    }

    fn start_server(
        rt: &tokio::runtime::Runtime,
        root: &Path,
        base: u16,
        i: usize,
        px: Option<&ServerProxies>,
    ) -> Result<Proc> {
        let id = Self::server_id(i);
        let data_dir = root.join("storage").join(&id);
        let join = Self::join_args_in(rt, root, base, "storage", &id, &data_dir.join("tls"))?;
        let mut cmd = Command::new(bin("basalt-storage")?);
        cmd.args(&join);
        let control = match px {
            Some(p) => format!("http://{}", p.control.addr()),
            None => format!("http://127.0.0.1:{base}"),
        };
        if let Some(p) = px {
            cmd.arg("--advertise")
                .arg(p.data.addr().to_string())
                .arg("--advertise-admin")
                .arg(p.admin.addr().to_string());
        }
        cmd.args(["--server-id", &id, "--control", &control])
            .args([
                "--listen",
                &format!("127.0.0.1:{}", Self::data_port(base, i)),
            ])
            .args([
                "--admin-listen",
                &format!("127.0.0.1:{}", base + 11 + 2 * i as u16),
            ])
            .args(["--mirror-reconnect-ms", "50", "--data-dir"])
            .arg(root.join("storage").join(&id));
        Proc::spawn(
            &format!("basalt-storage {id}"),
            &mut cmd,
            root.join(format!("{id}.log")),
        )
    }

    fn start_node(rt: &tokio::runtime::Runtime, root: &Path, base: u16) -> Result<Proc> {
        Self::start_node_as(rt, root, base, "node1", base + 1, &root.join("node"))
    }

    fn start_node_as(
        rt: &tokio::runtime::Runtime,
        root: &Path,
        base: u16,
        id: &str,
        port: u16,
        state: &Path,
    ) -> Result<Proc> {
        let join = Self::join_args_in(rt, root, base, "node", id, &state.join("tls"))?;
        let mut cmd = Command::new(bin("basalt-node")?);
        cmd.args(&join);
        cmd.args(["--node-id", id, "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--control",
                &format!("http://127.0.0.1:{base}"),
                "--state-dir",
            ])
            .arg(state)
            .arg("--backend-bin")
            .arg(bin("basalt-vhost-blk")?)
            .args(["--heartbeat-interval-ms", "200"]);
        Proc::spawn(
            &format!("basalt-node {id}"),
            &mut cmd,
            root.join(format!("{id}.log")),
        )
    }

    /// Starts a second node manager, `node2` (another "host": its own state
    /// directory and sockets under `root/node2`), and waits until control
    /// sees it up.
    pub fn add_node2(&mut self) -> Result<Proc> {
        let mut p = Self::start_node_as(
            &self.rt,
            &self.root,
            self.base,
            "node2",
            self.base + 2,
            &self.root.join("node2"),
        )?;
        let ep = self.endpoint();
        let access = self.access()?;
        let rt = &self.rt;
        wait_for(&mut p, Duration::from_secs(30), || {
            rt.block_on(async {
                let mut c = connect_with(&ep, &access).await.ok()?;
                nodes_up(&mut c)
                    .await?
                    .iter()
                    .any(|n| n == "node2")
                    .then_some(())
            })
        })?;
        Ok(p)
    }

    /// Starts control, `servers` storage servers and a node manager, and
    /// waits until control sees them all up.
    pub fn start(root: &Path, servers: usize) -> Result<ManagedCluster> {
        Self::start_with(root, servers, false)
    }

    /// Like [`ManagedCluster::start`], with every storage server behind
    /// [`ServerProxies`], so a test can cut one off the network.
    pub fn start_proxied(root: &Path, servers: usize) -> Result<ManagedCluster> {
        Self::start_with(root, servers, true)
    }

    /// Like [`ManagedCluster::start`], with extra flags for the control
    /// service (say, snapshot destinations).
    pub fn start_with_control_args(
        root: &Path,
        servers: usize,
        control_args: &[String],
    ) -> Result<ManagedCluster> {
        Self::start_full(root, servers, false, control_args)
    }

    fn start_with(root: &Path, servers: usize, proxied: bool) -> Result<ManagedCluster> {
        Self::start_full(root, servers, proxied, &[])
    }

    fn start_full(
        root: &Path,
        servers: usize,
        proxied: bool,
        control_args: &[String],
    ) -> Result<ManagedCluster> {
        let base = free_ports(12 + 2 * servers as u16)?;
        let mut control = Self::start_control(root, base, control_args)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // The control service bootstraps the cluster identity, then listens.
        wait_for(&mut control, Duration::from_secs(30), || {
            let access = Self::access_in(root).ok()?;
            rt.block_on(connect_with(&format!("127.0.0.1:{base}"), &access))
                .ok()
                .map(drop)
        })?;
        let proxies = if proxied {
            (0..servers)
                .map(|i| {
                    let at = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
                    Ok(ServerProxies {
                        data: FaultProxy::start(at(Self::data_port(base, i)))?,
                        admin: FaultProxy::start(at(Self::data_port(base, i) + 1))?,
                        control: FaultProxy::start(at(base))?,
                    })
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let servers = (0..servers)
            .map(|i| Self::start_server(&rt, root, base, i, proxies.get(i)))
            .collect::<Result<Vec<_>>>()?;
        let node = Self::start_node(&rt, root, base)?;
        let mut c = ManagedCluster {
            root: root.to_path_buf(),
            base,
            control,
            servers,
            node,
            rt,
            proxies,
            control_args: control_args.to_vec(),
        };
        c.wait_ready()?;
        Ok(c)
    }

    /// A client bound to [`ManagedCluster::rt`]: drive it with `self.rt.block_on`
    /// (its channel's background task runs on that runtime).
    pub fn client(&self) -> Result<Client> {
        let access = self.access()?;
        self.rt.block_on(connect_with(&self.endpoint(), &access))
    }

    /// Waits until every storage server and the node are UP.
    pub fn wait_ready(&mut self) -> Result<()> {
        let want = self.servers.len();
        let ep = self.endpoint();
        let access = self.access()?;
        let rt = &self.rt;
        let check = || {
            rt.block_on(async {
                let mut c = connect_with(&ep, &access).await.ok()?;
                let s = c
                    .list_storage_servers(pb::ListStorageServersRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .servers;
                let n = nodes_up(&mut c).await?;
                (s.iter().filter(|s| s.state == "UP").count() == want && !n.is_empty())
                    .then_some(())
            })
        };
        wait_for(&mut self.control, Duration::from_secs(30), check)
    }

    /// `kill -9` the control service and start it again on the same state.
    pub fn restart_control(&mut self) -> Result<()> {
        self.control.kill9();
        self.control = Self::start_control(&self.root, self.base, &self.control_args)?;
        self.wait_ready()
    }

    /// `kill -9` the control service and start it with `env` added (say,
    /// armed failpoints); does not wait for it to be ready.
    pub fn restart_control_env(&mut self, env: &[(&str, &str)]) -> Result<()> {
        self.control.kill9();
        self.control = Self::start_control_env(&self.root, self.base, env, &self.control_args)?;
        Ok(())
    }

    /// Pids of the backends node1's node manager runs.
    pub fn backend_pids(&self) -> Result<Vec<u32>> {
        self.backend_pids_of("node")
    }

    /// Pids of the backends of the node manager whose state directory is
    /// `root/<state>`.
    pub fn backend_pids_of(&self, state: &str) -> Result<Vec<u32>> {
        let b = bin("basalt-vhost-blk")?;
        Ok(
            basalt_node::procfs::backends_in(&b, &self.root.join(state).join("run"))
                .into_iter()
                .map(|(pid, _)| pid)
                .collect(),
        )
    }

    /// Prints the tail of every process's log (control, servers, node,
    /// backends): what a failed test needs to be understood.
    pub fn dump_logs(&self, lines: usize) {
        let mut procs: Vec<&Proc> = vec![&self.control, &self.node];
        procs.extend(self.servers.iter());
        for p in procs {
            eprintln!(
                "==== {} ({})\n{}",
                p.name,
                p.log.display(),
                p.log_tail(lines)
            );
        }
        let logs = self.root.join("node").join("logs");
        for e in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let v: Vec<&str> = text.lines().collect();
            eprintln!(
                "==== backend ({})\n{}",
                e.path().display(),
                v[v.len().saturating_sub(lines)..].join("\n")
            );
        }
    }

    /// Starts storage server `i` again (after a kill) on the same data dir.
    pub fn restart_server(&mut self, i: usize) -> Result<()> {
        self.servers[i].kill9();
        self.servers[i] =
            Self::start_server(&self.rt, &self.root, self.base, i, self.proxies.get(i))?;
        Ok(())
    }

    /// `kill -9` the node manager (its backends keep running) and start it again.
    pub fn restart_node(&mut self) -> Result<()> {
        self.node.kill9();
        self.node = Self::start_node(&self.rt, &self.root, self.base)?;
        self.wait_ready()
    }

    /// The command line of the CLI against this cluster, as the admin (for
    /// tools that run it with `sh -c`).
    pub fn cli_cmdline(&self, args: &str) -> Result<String> {
        Ok(format!(
            "'{}' --control {} --ca-file '{}' --token-file '{}' {args}",
            bin("basalt")?.display(),
            self.endpoint(),
            self.ca_file().display(),
            self.admin_token_file().display()
        ))
    }

    /// Runs the `basalt` CLI; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = Command::new(bin("basalt")?)
            .arg("--control")
            .arg(self.endpoint())
            .arg("--ca-file")
            .arg(self.ca_file())
            .arg("--token-file")
            .arg(self.admin_token_file())
            .env_remove("BASALT_TOKEN")
            .args(args)
            .output()
            .context("running basalt")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Runs the CLI with `--output json` and parses the result; fails on error.
    pub fn cli_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = vec!["--output", "json"];
        a.extend_from_slice(args);
        let (ok, out, err) = self.cli(&a)?;
        if !ok {
            bail!("basalt {} failed: {err}", args.join(" "));
        }
        serde_json::from_str(&out)
            .with_context(|| format!("bad JSON from basalt {}: {out}", args.join(" ")))
    }

    /// Waits until `pred` holds for the volume's JSON.
    pub fn wait_volume(
        &self,
        vol: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            // The control service may be restarting: errors are retried too.
            let v = self.cli_json(&["volume", "show", vol]);
            if let Ok(v) = &v {
                if pred(v) {
                    return Ok(v.clone());
                }
            }
            if Instant::now() > deadline {
                match v {
                    Ok(v) => bail!("volume {vol} never reached the expected state: {v}"),
                    Err(e) => bail!("volume {vol}: {e:#}"),
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Ids of the node managers the control service sees up (None while it
/// does not answer).
async fn nodes_up(c: &mut Client) -> Option<Vec<String>> {
    let nodes = c
        .list_nodes(pb::ListNodesRequest {})
        .await
        .ok()?
        .into_inner()
        .nodes;
    Some(
        nodes
            .into_iter()
            .filter(|n| n.state == "UP")
            .map(|n| n.node_id)
            .collect(),
    )
}

impl Drop for ManagedCluster {
    /// Backends outlive their node manager by design (they keep serving
    /// guests across its restarts), so a test cluster stops them itself.
    /// A test that panics gets every process's log tail first.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs(60);
        }
        let node2 = self.backend_pids_of("node2").unwrap_or_default();
        for pid in self
            .backend_pids()
            .unwrap_or_default()
            .into_iter()
            .chain(node2)
        {
            // SAFETY: signalling a backend this cluster started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}
