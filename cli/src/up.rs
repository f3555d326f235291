//! `basalt up`: a local cluster on embedded defaults — the control service,
//! storage servers and one node manager — with all state under one directory.
//! Prints one line when everything is ready; stops everything on
//! Ctrl-C/SIGTERM (node manager first, then storage servers, then control).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use basalt_proto::control as pb;

use crate::args::UpArgs;
use crate::auth::{connect_with, Access, Client};

struct Member {
    name: String,
    log: PathBuf,
    child: Child,
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().unwrap_or(Path::new(".")).join(name);
    if !p.exists() {
        bail!("{} not found next to basalt: build the workspace (cargo build --release --workspace --bins)", p.display());
    }
    Ok(p)
}

fn spawn(name: &str, cmd: &mut Command, logs: &Path) -> anyhow::Result<Member> {
    let log = logs.join(format!("{name}.log"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Member {
        name: name.to_owned(),
        log,
        child,
    })
}

fn tail(p: &Path) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let v: Vec<&str> = t.lines().collect();
    v[v.len().saturating_sub(10)..].join("\n")
}

fn check(members: &mut [Member]) -> anyhow::Result<()> {
    for m in members {
        if let Some(st) = m.child.try_wait()? {
            bail!(
                "{} exited ({st}); log {}:\n{}",
                m.name,
                m.log.display(),
                tail(&m.log)
            );
        }
    }
    Ok(())
}

fn stop_all(members: &mut Vec<Member>) {
    // Reverse start order: node manager, storage servers, control.
    while let Some(mut m) = members.pop() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(m.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(m.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = m.child.kill();
        let _ = m.child.wait();
    }
}

async fn ready(endpoint: &str, access: &Access, servers: usize) -> bool {
    let Ok(mut c) = connect_with(endpoint, access).await else {
        return false;
    };
    let Ok(ss) = c
        .list_storage_servers(pb::ListStorageServersRequest {})
        .await
    else {
        return false;
    };
    let Ok(ns) = c.list_nodes(pb::ListNodesRequest {}).await else {
        return false;
    };
    ss.into_inner()
        .servers
        .iter()
        .filter(|s| s.state == "UP")
        .count()
        >= servers
        && ns.into_inner().nodes.iter().any(|n| n.state == "UP")
}

/// Waits for the control service to answer with the admin token it wrote
/// at bootstrap.
async fn control_up(
    members: &mut [Member],
    endpoint: &str,
    ca: &Path,
    token_file: &Path,
) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ca.exists() && token_file.exists() {
            let access = Access::new(ca, basalt_auth::read_token(token_file)?)?;
            if let Ok(c) = connect_with(endpoint, &access).await {
                return Ok(c);
            }
        }
        check(members)?;
        if Instant::now() > deadline {
            bail!("the control service did not come up within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The flags with which a storage server or node manager whose TLS
/// directory is `tls_dir` gets its certificate: none when it has one, else
/// a one-time join token made for it now (written next to `tls_dir`).
pub async fn join_flags(
    c: &mut Client,
    role: &str,
    id: &str,
    tls_dir: &Path,
    ca: &Path,
) -> anyhow::Result<Vec<String>> {
    if tls_dir.join(basalt_auth::files::CERT).exists() {
        return Ok(Vec::new());
    }
    let t = c
        .create_join_token(pb::CreateJoinTokenRequest {
            role: role.into(),
            id: id.into(),
            ttl_secs: 600,
        })
        .await
        .map_err(crate::commands::st)?
        .into_inner();
    let file = tls_dir.with_file_name("join.token");
    basalt_auth::files::write(&file, &format!("{}\n", t.token), 0o600)?;
    Ok(vec![
        "--join-token-file".into(),
        file.display().to_string(),
        "--ca-file".into(),
        ca.display().to_string(),
    ])
}

pub async fn up(a: &UpArgs) -> anyhow::Result<()> {
    if a.servers == 0 || a.servers > 16 {
        bail!("--servers must be 1..=16");
    }
    if a.base_port.checked_add(11 + 2 * a.servers).is_none() {
        bail!("--base-port too high");
    }
    let dir = std::path::absolute(&a.state_dir)?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let control_addr = format!("127.0.0.1:{}", a.base_port);
    let endpoint = format!("http://{control_addr}");
    let hb = a.heartbeat_ms.max(50);
    let mut members = Vec::new();
    let ca = dir
        .join("control")
        .join("tls")
        .join(basalt_auth::files::CA_CERT);
    let token_file = dir.join("control").join("admin.token");
    let r = async {
        members.push(spawn(
            "control",
            Command::new(bin("basalt-control")?)
                .args(["--listen", &control_addr, "--bootstrap", "--state-dir"])
                .arg(dir.join("control"))
                .args(["--heartbeat-interval-ms", &hb.to_string(), "--down-after-ms", &(hb * 4).to_string()]),
            &logs,
        )?);
        let mut c = control_up(&mut members, &endpoint, &ca, &token_file).await?;
        for i in 0..a.servers {
            let id = format!("s{}", i + 1);
            let data = format!("127.0.0.1:{}", a.base_port + 10 + 2 * i);
            let admin = format!("127.0.0.1:{}", a.base_port + 11 + 2 * i);
            let data_dir = dir.join("storage").join(&id);
            let join = join_flags(&mut c, "storage", &id, &data_dir.join("tls"), &ca).await?;
            members.push(spawn(
                &format!("storage-{id}"),
                Command::new(bin("basalt-storage")?)
                    .args(["--server-id", &id, "--listen", &data, "--admin-listen", &admin, "--control", &endpoint, "--data-dir"])
                    .arg(&data_dir)
                    .args(&join),
                &logs,
            )?);
        }
        let node_dir = dir.join("node");
        let join = join_flags(&mut c, "node", &a.node_id, &node_dir.join("tls"), &ca).await?;
        members.push(spawn(
            "node",
            Command::new(bin("basalt-node")?)
                .args(["--node-id", &a.node_id, "--listen", &format!("127.0.0.1:{}", a.base_port + 1), "--control", &endpoint])
                .arg("--state-dir")
                .arg(&node_dir)
                .arg("--backend-bin")
                .arg(bin("basalt-vhost-blk")?)
                .args(&join),
            &logs,
        )?);
        let access = Access::new(&ca, basalt_auth::read_token(&token_file)?)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(&endpoint, &access, a.servers as usize).await {
            check(&mut members)?;
            if Instant::now() > deadline {
                bail!("cluster not ready after 60 s; logs in {}", logs.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "basalt up: cluster ready — control {endpoint}, {} storage servers, node {} (state in {})",
            a.servers,
            a.node_id,
            dir.display()
        );
        println!(
            "basalt up: mutual TLS on every API; for the CLI:\n  export BASALT_CONTROL={endpoint} BASALT_CA_FILE={} BASALT_TOKEN_FILE={}",
            ca.display(),
            token_file.display()
        );
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tick.tick() => check(&mut members)?,
            }
        }
        println!("basalt up: stopping");
        anyhow::Ok(())
    }
    .await;
    stop_all(&mut members);
    stop_backends(&dir);
    r
}

/// Backends outlive the node manager by design; a local cluster stopping
/// stops them too. Their attachment records stay, so the next `basalt up`
/// starts them again.
fn stop_backends(dir: &Path) {
    let Ok(b) = bin("basalt-vhost-blk") else {
        return;
    };
    for (pid, socket) in basalt_node::procfs::backends_in(&b, &dir.join("node").join("run")) {
        // SAFETY: signalling a backend this cluster's node manager started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        println!("basalt up: stopped backend for {socket}");
    }
}
