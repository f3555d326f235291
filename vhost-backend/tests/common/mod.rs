//! Shared test harness: a real storage server plus the backend on a temp
//! socket, in-process.
#![allow(dead_code)]

pub mod blk;
pub mod frontend;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use basalt_storage::testing::{LocalServer, TestPki};
use basalt_vhost_backend::layout::Layout;
use basalt_vhost_backend::{Args, Config, ServeError, Server, Stats, StopHandle};
use tempfile::TempDir;

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub volume_id: u64,
    pub size: u64,
    pub queues: u16,
    pub queue_size: u16,
    pub read_only: bool,
    /// Control service URL given to the backend (`--control`).
    pub control: Option<String>,
    /// The node's credentials (`--tls-dir`), required with `control`: see
    /// [`node_credentials`].
    pub tls_dir: Option<PathBuf>,
    pub request_timeout_ms: u64,
    /// Attachment generation (`--attachment`).
    pub attachment: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            volume_id: 42,
            size: 64 << 20,
            queues: 2,
            queue_size: 256,
            read_only: false,
            control: None,
            tls_dir: None,
            request_timeout_ms: 5000,
            attachment: 0,
        }
    }
}

/// `--tls-dir` and `--grant-file` of a backend serving `socket`: without
/// `o.tls_dir`, a node's credentials of the shared test CA (the storage
/// servers') are installed beside the socket; either way, a grant for the
/// volume and attachment, signed by the shared test CA for the node of the
/// credentials, is written there too.
pub fn node_files(socket: &Path, o: &Opts) -> (PathBuf, PathBuf) {
    let pki = basalt_storage::testing::shared_pki();
    let side = |ext: &str| {
        let mut p = socket.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    let tls_dir = o.tls_dir.clone().unwrap_or_else(|| {
        let d = side(".tls");
        pki.install(&d, basalt_auth::Role::Node, "node-test");
        d
    });
    let node = basalt_auth::Credentials::load(&tls_dir)
        .map(|c| c.principal.id)
        .unwrap_or_else(|_| "node-test".into());
    let grant_file = side(".grant");
    let grant =
        basalt_storage::data_client::grant(&pki, &node, o.volume_id, o.attachment, o.read_only);
    basalt_auth::grant::save(&grant_file, &grant).expect("write the test grant");
    (tls_dir, grant_file)
}

/// The backend's arguments (see [`node_files`]).
pub fn args(socket: &Path, primary: &str, o: &Opts) -> Args {
    let (tls_dir, grant_file) = node_files(socket, o);
    Args {
        socket: socket.to_path_buf(),
        volume_id: o.volume_id,
        size_bytes: o.size,
        primary: primary.to_owned(),
        epoch: 1,
        attachment: o.attachment,
        queues: o.queues,
        queue_size: o.queue_size,
        read_only: o.read_only,
        serial: None,
        grant_file,
        data_encryption: "on".into(),
        retry_interval_ms: 50,
        connect_timeout_ms: 500,
        request_timeout_ms: o.request_timeout_ms,
        control: o.control.clone(),
        tls_dir,
        control_timeout_ms: 1000,
        drain_timeout_ms: 2000,
        log_interval_ms: 1,
        backend_id: None,
    }
}

/// Installs a node manager's credentials (node `id`, issued by `pki`) in
/// `dir`, for a backend's `--tls-dir`; a fake control service it talks to
/// serves with `pki.control()`.
pub fn node_credentials(pki: &TestPki, dir: &Path, id: &str) -> PathBuf {
    pki.install(dir, basalt_auth::Role::Node, id);
    dir.to_path_buf()
}

/// A backend serving on a temp socket.
pub struct Backend {
    pub socket: PathBuf,
    pub stop: StopHandle,
    pub stats: Arc<Stats>,
    pub layout: Arc<Layout>,
    thread: Option<JoinHandle<Result<(), ServeError>>>,
}

impl Backend {
    pub fn start(socket: PathBuf, primary: &str, o: &Opts) -> anyhow::Result<Backend> {
        let config = Config::try_from(args(&socket, primary, o))?;
        let server = Server::bind(config)?;
        let (stop, stats, layout) = (server.stop_handle(), server.stats(), server.layout());
        let thread = std::thread::Builder::new()
            .name("backend".into())
            .spawn(move || server.run())?;
        Ok(Backend {
            socket,
            stop,
            stats,
            layout,
            thread: Some(thread),
        })
    }

    pub fn shutdown(&mut self) -> anyhow::Result<()> {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("backend thread panicked"))??;
        }
        Ok(())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Storage server + one volume's primary copy + a backend for it.
pub struct Harness {
    pub backend: Backend,
    pub storage: Option<LocalServer>,
    pub opts: Opts,
    pub dir: TempDir,
}

impl Harness {
    pub fn start(opts: Opts) -> anyhow::Result<Harness> {
        init_logging();
        let dir = tempfile::tempdir()?;
        let storage_dir = dir.path().join("storage");
        std::fs::create_dir_all(&storage_dir)?;
        let storage = LocalServer::start(&storage_dir, "s1").context("start storage server")?;
        storage.create_primary(opts.volume_id, opts.size)?;
        let backend = Backend::start(
            dir.path().join("vhost.sock"),
            &storage.data_addr.to_string(),
            &opts,
        )?;
        Ok(Harness {
            backend,
            storage: Some(storage),
            opts,
            dir,
        })
    }

    pub fn storage(&self) -> &LocalServer {
        self.storage.as_ref().expect("storage server running")
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }
}

/// Deterministic bytes for `(seed, offset)`.
pub fn pattern(seed: u64, out: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Waits until `cond` holds (a state change of the backend under test), or
/// fails after `timeout`.
#[allow(dead_code)]
pub fn wait_until(
    what: &str,
    timeout: std::time::Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::yield_now();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Ok(())
}
