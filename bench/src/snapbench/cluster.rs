//! A cluster of real processes for the snapshot benchmark: `basalt-control`,
//! storage servers registered with it and one `basalt-node`, started from the
//! release binaries next to `basalt-bench`, plus the `basalt` CLI. (The same
//! flags and readiness checks as the end-to-end tests' `ManagedCluster`,
//! without depending on the tests crate.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Directory holding the workspace's binaries: the one `basalt-bench` runs from.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    match dir.file_name() {
        Some(n) if n == "deps" => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// Path of a workspace binary; errors with the build command if missing.
pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.exists() {
        bail!(
            "{} not found: run `cargo build --release --bins` first",
            p.display()
        );
    }
    Ok(p)
}

/// A child process whose output goes to a log file; killed on drop.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Result<Proc> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| log.display().to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Proc {
            name: name.to_owned(),
            log,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                bail!(
                    "{} exited ({st}); log tail:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Finds `n` consecutive free loopback ports.
fn free_ports(n: u16) -> Result<u16> {
    let seed = std::process::id() as u16;
    for attempt in 0..200u16 {
        let base = 20000 + (seed.wrapping_mul(31).wrapping_add(attempt.wrapping_mul(97)) % 30000);
        if (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return Ok(base);
        }
    }
    bail!("no {n} consecutive free ports")
}

/// Flags of the control service that the benchmark changes between phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlKnobs {
    /// `--hydration-rate-mib` (0 = unlimited).
    pub hydration_rate_mib: u64,
    /// `--snapshot-rate-mib` (0 = unlimited).
    pub snapshot_rate_mib: u64,
}

pub struct Cluster {
    pub root: PathBuf,
    pub base: u16,
    pub control: Proc,
    pub servers: Vec<Proc>,
    pub node: Proc,
    /// `--destination` flags, first = default.
    destinations: Vec<String>,
    pub knobs: ControlKnobs,
    /// `--snapshot-poll-ms` of the control service.
    pub poll_ms: u64,
    basalt: PathBuf,
}

impl Cluster {
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.base)
    }

    fn start_control(
        root: &Path,
        base: u16,
        destinations: &[String],
        knobs: ControlKnobs,
        poll_ms: u64,
    ) -> Result<Proc> {
        let mut cmd = Command::new(bin("basalt-control")?);
        for d in destinations {
            cmd.arg("--destination").arg(d);
        }
        cmd.args(["--listen", &format!("127.0.0.1:{base}"), "--bootstrap"])
            .arg("--state-dir")
            .arg(root.join("control"))
            .args([
                "--hydration-rate-mib",
                &knobs.hydration_rate_mib.to_string(),
            ])
            .args(["--snapshot-rate-mib", &knobs.snapshot_rate_mib.to_string()])
            .args(["--snapshot-poll-ms", &poll_ms.to_string()])
            // Heartbeats as `basalt up`; DOWN after the default 5 s, so a
            // saturated 2-core machine does not fence a busy server.
            .args(["--heartbeat-interval-ms", "500", "--down-after-ms", "5000"]);
        Proc::spawn("basalt-control", &mut cmd, root.join("control.log"))
    }

    /// `--join-token-file` and `--ca-file` for a process whose TLS
    /// directory has no certificate yet (a token made with the CLI).
    fn join_args(root: &Path, base: u16, role: &str, id: &str, tls: &Path) -> Result<Vec<String>> {
        if tls.join("tls.crt").exists() {
            return Ok(Vec::new());
        }
        let file = tls.with_file_name("join.token");
        let f = file.display().to_string();
        let (ok, _, err) = cli_at(
            &bin("basalt")?,
            root,
            base,
            &[
                "join-token",
                "create",
                "--role",
                role,
                "--id",
                id,
                "--output-file",
                &f,
            ],
        )?;
        if !ok {
            bail!("join-token create {role} {id}: {err}");
        }
        Ok(vec![
            "--join-token-file".into(),
            f,
            "--ca-file".into(),
            ca_file(root).display().to_string(),
        ])
    }

    fn start_server(root: &Path, base: u16, i: usize) -> Result<Proc> {
        let id = format!("s{}", i + 1);
        let data_dir = root.join("storage").join(&id);
        let join = Self::join_args(root, base, "storage", &id, &data_dir.join("tls"))?;
        let mut cmd = Command::new(bin("basalt-storage")?);
        cmd.args(&join);
        cmd.args(["--server-id", &id])
            .args(["--control", &format!("http://127.0.0.1:{base}")])
            .args([
                "--listen",
                &format!("127.0.0.1:{}", base + 10 + 2 * i as u16),
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

    fn start_node(root: &Path, base: u16) -> Result<Proc> {
        let join = Self::join_args(root, base, "node", "node1", &root.join("node").join("tls"))?;
        let mut cmd = Command::new(bin("basalt-node")?);
        cmd.args(&join);
        cmd.args(["--node-id", "node1"])
            .args(["--listen", &format!("127.0.0.1:{}", base + 1)])
            .args(["--control", &format!("http://127.0.0.1:{base}")])
            .arg("--state-dir")
            .arg(root.join("node"))
            .arg("--backend-bin")
            .arg(bin("basalt-vhost-blk")?)
            .args(["--heartbeat-interval-ms", "500"]);
        Proc::spawn("basalt-node node1", &mut cmd, root.join("node1.log"))
    }

    /// Starts control, `servers` storage servers and a node manager under
    /// `root`, and waits until control sees them all up.
    pub fn start(
        root: &Path,
        servers: usize,
        destinations: Vec<String>,
        knobs: ControlKnobs,
        poll_ms: u64,
    ) -> Result<Cluster> {
        std::fs::create_dir_all(root)?;
        let base = free_ports(12 + 2 * servers as u16)?;
        let mut control = Self::start_control(root, base, &destinations, knobs, poll_ms)?;
        // It bootstraps the cluster identity (CA, admin token), then listens.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(
            cli_at(&bin("basalt")?, root, base, &["node", "list"]),
            Ok((true, _, _))
        ) {
            control.check_alive()?;
            if Instant::now() > deadline {
                bail!("control not ready after 30 s:\n{}", control.log_tail(30));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let servers = (0..servers)
            .map(|i| Self::start_server(root, base, i))
            .collect::<Result<Vec<_>>>()?;
        let node = Self::start_node(root, base)?;
        let mut c = Cluster {
            root: root.to_path_buf(),
            base,
            control,
            servers,
            node,
            destinations,
            knobs,
            poll_ms,
            basalt: bin("basalt")?,
        };
        c.wait_ready()?;
        Ok(c)
    }

    /// Stops the control service and starts it again on the same state with
    /// other knobs (volumes, attachments and backends keep running).
    pub fn restart_control(&mut self, knobs: ControlKnobs) -> Result<()> {
        if knobs == self.knobs {
            return Ok(());
        }
        self.control.stop(Duration::from_secs(5));
        self.knobs = knobs;
        self.control = Self::start_control(
            &self.root,
            self.base,
            &self.destinations,
            knobs,
            self.poll_ms,
        )?;
        self.wait_ready()
    }

    /// Waits until every storage server and the node are UP.
    pub fn wait_ready(&mut self) -> Result<()> {
        let want = self.servers.len();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let servers = self.cli_json(&["server", "list"]);
            let nodes = self.cli_json(&["node", "list"]);
            if let (Ok(Value::Array(s)), Ok(Value::Array(n))) = (servers, nodes) {
                let up = |v: &Vec<Value>| v.iter().filter(|x| x["state"] == "UP").count();
                if up(&s) == want && up(&n) >= 1 {
                    return Ok(());
                }
            }
            self.control.check_alive()?;
            for s in &mut self.servers {
                s.check_alive()?;
            }
            self.node.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "cluster not ready after 60 s; control log tail:\n{}",
                    self.control.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The command line of the CLI against this cluster (for `sh -c`).
    pub fn cli_cmdline(&self, args: &[&str]) -> String {
        let mut s = format!(
            "'{}' --control {} --ca-file '{}' --token-file '{}'",
            self.basalt.display(),
            self.endpoint(),
            ca_file(&self.root).display(),
            token_file(&self.root).display()
        );
        for a in args {
            s.push_str(&format!(" '{a}'"));
        }
        s
    }

    /// Runs the CLI; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> Result<(bool, String, String)> {
        cli_at(&self.basalt, &self.root, self.base, args)
    }

    /// Runs the CLI with `--output json`; fails on error.
    pub fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let mut a = vec!["--output", "json"];
        a.extend_from_slice(args);
        let (ok, out, err) = self.cli(&a)?;
        if !ok {
            bail!("basalt {} failed: {}", args.join(" "), err.trim());
        }
        serde_json::from_str(&out)
            .with_context(|| format!("bad JSON from basalt {}: {out}", args.join(" ")))
    }

    /// Index of storage server `server_id` ("s1" → 0).
    pub fn server_index(&self, server_id: &str) -> Result<usize> {
        server_id
            .strip_prefix('s')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n >= 1 && n <= self.servers.len())
            .map(|n| n - 1)
            .with_context(|| format!("unknown storage server id {server_id:?}"))
    }

    pub fn server_pid(&self, server_id: &str) -> Result<u32> {
        let i = self.server_index(server_id)?;
        self.servers[i]
            .pid()
            .with_context(|| format!("storage server {server_id} has no pid"))
    }

    pub fn server_log(&self, server_id: &str) -> Result<PathBuf> {
        Ok(self.servers[self.server_index(server_id)?].log.clone())
    }

    /// Pids of the backends this cluster's node manager started (their
    /// sockets are under `root/node/run`).
    pub fn backend_pids(&self) -> Vec<u32> {
        let run = self.root.join("node").join("run");
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = raw
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_backend = args
                .first()
                .is_some_and(|a| Path::new(a).file_name() == Some("basalt-vhost-blk".as_ref()));
            if is_backend
                && args
                    .windows(2)
                    .any(|w| w[0] == "--socket" && Path::new(&w[1]).starts_with(&run))
            {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for Cluster {
    /// Backends outlive their node manager by design; stop the ones this
    /// cluster started.
    fn drop(&mut self) {
        for pid in self.backend_pids() {
            // SAFETY: signalling a backend this cluster's node manager started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn ca_file(root: &Path) -> PathBuf {
    root.join("control").join("tls").join("ca.crt")
}

fn token_file(root: &Path) -> PathBuf {
    root.join("control").join("admin.token")
}

/// Runs the CLI as the admin `--bootstrap` created; returns (success,
/// stdout, stderr).
fn cli_at(basalt: &Path, root: &Path, base: u16, args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(basalt)
        .args(["--control", &format!("127.0.0.1:{base}")])
        .arg("--ca-file")
        .arg(ca_file(root))
        .arg("--token-file")
        .arg(token_file(root))
        .env_remove("BASALT_TOKEN")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running basalt")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
