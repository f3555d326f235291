//! An in-process storage server for tests of other crates: the real server
//! (same code as the binary) on its own runtime thread, bound to loopback
//! ports chosen by the kernel.
//!
//! Its identity comes from a test CA ([`TestPki`]): [`Options::pki`], or the
//! process-wide [`shared_pki`]. A test that calls its admin API connects as
//! the control service of that CA ([`LocalServer::admin_endpoint`]); a fake
//! control service it reports to serves with that CA's control credentials
//! (`LocalServer::pki().control()`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
pub use basalt_auth::testing::TestPki;
use basalt_auth::{Credentials, Principal};
use tonic::transport::Endpoint;

use crate::meta::{PeerMeta, Role};
use crate::store::{Layout, Store};
use crate::ServerConfig;

/// The test CA of every [`LocalServer`] started without [`Options::pki`]
/// in this process.
pub fn shared_pki() -> Arc<TestPki> {
    static PKI: OnceLock<Arc<TestPki>> = OnceLock::new();
    PKI.get_or_init(|| Arc::new(TestPki::new())).clone()
}

pub struct LocalServer {
    pub server_id: String,
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pki: Arc<TestPki>,
    store: Arc<Store>,
    connections: Arc<crate::dataplane::Connections>,
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Settings of a [`LocalServer`] that tests may change.
#[derive(Clone)]
pub struct Options {
    /// Control service URL (registration, heartbeats, failure reports). A
    /// fake control service there must serve with `pki`'s control
    /// credentials.
    pub control: Option<String>,
    /// The CA that issues the server's certificate (installed in
    /// `<dir>/tls`); None: [`shared_pki`].
    pub pki: Option<Arc<TestPki>>,
    /// `--mirror-timeout-ms`.
    pub mirror_timeout: Duration,
    /// `--mirror-sync-timeout-ms` (None: the same as `mirror_timeout`).
    pub mirror_sync_timeout: Option<Duration>,
    /// Data-plane listen address (default: a port chosen by the kernel); set
    /// it to restart a server on the address it had.
    pub listen: Option<SocketAddr>,
    /// `--max-connections`.
    pub max_connections: usize,
    /// `--handshake-timeout-ms`.
    pub handshake_timeout: Duration,
    /// `--peer-timeout-ms`.
    pub peer_timeout: Duration,
    /// `--response-budget-mib`, in bytes.
    pub response_budget: usize,
    /// `--mirror-queue-mib`, in bytes.
    pub mirror_queue: usize,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("control", &self.control)
            .field("pki", &self.pki.as_ref().map(|_| "TestPki"))
            .field("mirror_timeout", &self.mirror_timeout)
            .field("mirror_sync_timeout", &self.mirror_sync_timeout)
            .field("listen", &self.listen)
            .field("max_connections", &self.max_connections)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("peer_timeout", &self.peer_timeout)
            .field("response_budget", &self.response_budget)
            .field("mirror_queue", &self.mirror_queue)
            .finish()
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            control: None,
            pki: None,
            mirror_timeout: Duration::from_secs(2),
            mirror_sync_timeout: None,
            listen: None,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(5),
            peer_timeout: Duration::from_secs(10),
            response_budget: 32 << 20,
            mirror_queue: 64 << 20,
        }
    }
}

impl LocalServer {
    /// Starts a server with data under `dir`; it stops when dropped.
    pub fn start(dir: &Path, server_id: &str) -> anyhow::Result<LocalServer> {
        Self::start_with(dir, server_id, Options::default())
    }

    /// Starts a server with data under `dir` and the given options.
    pub fn start_with(dir: &Path, server_id: &str, o: Options) -> anyhow::Result<LocalServer> {
        let pki = o.pki.clone().unwrap_or_else(shared_pki);
        let tls_dir = dir.join("tls");
        let principal = Principal::new(basalt_auth::Role::Storage, server_id)?;
        pki.issue(principal.role, &principal.id)
            .save(&tls_dir)
            .context("cannot install the test server's credentials")?;
        let config = ServerConfig {
            server_id: server_id.to_owned(),
            data_dir: dir.to_path_buf(),
            listen: o.listen.unwrap_or(([127, 0, 0, 1], 0).into()),
            admin_listen: "127.0.0.1:0".parse()?,
            data_clear: false,
            mirror_timeout: o.mirror_timeout,
            mirror_sync_timeout: o.mirror_sync_timeout.unwrap_or(o.mirror_timeout),
            mirror_reconnect: Duration::from_millis(50),
            max_connections: o.max_connections,
            handshake_timeout: o.handshake_timeout,
            peer_timeout: o.peer_timeout,
            response_budget: o.response_budget,
            mirror_queue: o.mirror_queue,
            ready_file: None,
            control: o.control,
            zone: String::new(),
            advertise: None,
            advertise_admin: None,
            tls_dir,
            join_token_file: None,
            ca_file: None,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let bound = rt.block_on(crate::bind(config))?;
        let (data_addr, admin_addr, store, connections) = (
            bound.data_addr,
            bound.admin_addr,
            bound.store.clone(),
            bound.connections.clone(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("storage-{server_id}"))
            .spawn(move || {
                let r = rt.block_on(bound.serve(async {
                    let _ = stopped.await;
                }));
                if let Err(e) = r {
                    tracing::error!("local storage server failed: {e:#}");
                }
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(LocalServer {
            server_id: server_id.to_owned(),
            data_addr,
            admin_addr,
            pki,
            store,
            connections,
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The test CA that issued this server's certificate: its
    /// `control()` credentials may call the admin API, and are the ones a
    /// fake control service this server reports to must serve with.
    pub fn pki(&self) -> &Arc<TestPki> {
        &self.pki
    }

    /// The principal this server's certificate names (`<id>.storage.basalt`).
    pub fn principal(&self) -> Principal {
        Principal::new(basalt_auth::Role::Storage, &self.server_id)
            .expect("a started server has a valid id")
    }

    /// The admin API endpoint, over mutual TLS as `creds` (checking that
    /// the server is this one).
    pub fn admin_endpoint_as(&self, creds: &Credentials) -> Endpoint {
        basalt_auth::endpoint(
            &self.admin_addr.to_string(),
            creds.client_tls(&self.principal()),
        )
        .expect("a socket address is a valid endpoint")
    }

    /// The admin API endpoint, as the control service (the only caller the
    /// admin API accepts).
    pub fn admin_endpoint(&self) -> Endpoint {
        self.admin_endpoint_as(&self.pki.control())
    }

    /// The server's copies, for tests that drive them directly.
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Enters the server's runtime (for calls that spawn tasks on it).
    pub fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.handle.enter()
    }

    /// Runs `f` on the server's runtime and waits for it.
    pub fn block_on<F: std::future::Future + Send + 'static>(&self, f: F) -> F::Output
    where
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().expect("the server's runtime stopped")
    }

    fn create(&self, volume_id: u64, size_bytes: u64, layout: Layout) -> anyhow::Result<()> {
        let _rt = self.handle.enter();
        self.store.create(volume_id, size_bytes, layout)?;
        Ok(())
    }

    /// Creates a primary copy (epoch 1, no mirrors).
    pub fn create_primary(&self, volume_id: u64, size_bytes: u64) -> anyhow::Result<()> {
        self.create(
            volume_id,
            size_bytes,
            Layout {
                role: Role::Primary,
                epoch: 1,
                mirrors: vec![],
                primary_server_id: String::new(),
                syncing: vec![],
                attachment: 0,
            },
        )
    }

    /// Creates a primary copy that replicates to `mirrors` (server id, data address).
    pub fn create_primary_with_mirrors(
        &self,
        volume_id: u64,
        size_bytes: u64,
        mirrors: &[(&str, SocketAddr)],
    ) -> anyhow::Result<()> {
        let mirrors = mirrors
            .iter()
            .map(|(id, a)| PeerMeta {
                server_id: (*id).to_owned(),
                address: a.to_string(),
                delta: false,
                seed_snapshot: 0,
            })
            .collect();
        self.create(
            volume_id,
            size_bytes,
            Layout {
                role: Role::Primary,
                epoch: 1,
                mirrors,
                primary_server_id: String::new(),
                syncing: vec![],
                attachment: 0,
            },
        )
    }

    /// Creates a mirror copy that accepts data from `primary_server_id`.
    pub fn create_mirror(
        &self,
        volume_id: u64,
        size_bytes: u64,
        primary_server_id: &str,
    ) -> anyhow::Result<()> {
        self.create(
            volume_id,
            size_bytes,
            Layout {
                role: Role::Mirror,
                epoch: 1,
                mirrors: vec![],
                primary_server_id: primary_server_id.to_owned(),
                syncing: vec![],
                attachment: 0,
            },
        )
    }

    /// Sets a primary's layout: in-sync `mirrors` and `syncing` mirrors
    /// (server id, data address), keeping its epoch.
    pub fn set_primary_layout(
        &self,
        volume_id: u64,
        mirrors: &[(&str, SocketAddr)],
        syncing: &[(&str, SocketAddr)],
    ) -> anyhow::Result<()> {
        let peers = |v: &[(&str, SocketAddr)]| {
            v.iter()
                .map(|(id, a)| PeerMeta {
                    server_id: (*id).to_owned(),
                    address: a.to_string(),
                    delta: false,
                    seed_snapshot: 0,
                })
                .collect()
        };
        let copy = self.store.get(volume_id).context("no such copy")?;
        let (epoch, attachment) = (copy.epoch(), copy.attachment());
        let _rt = self.handle.enter();
        self.store.set_layout(
            volume_id,
            Layout {
                role: Role::Primary,
                epoch,
                mirrors: peers(mirrors),
                primary_server_id: String::new(),
                syncing: peers(syncing),
                attachment,
            },
        )?;
        Ok(())
    }

    /// Raises a copy's epoch and attachment generation, keeping its role
    /// and peers, as the control service's `SetLayout` does after a forced
    /// attach.
    pub fn raise(&self, volume_id: u64, epoch: u64, attachment: u64) -> anyhow::Result<()> {
        let m = self.store.get(volume_id).context("no such copy")?.meta();
        self.set_layout(
            volume_id,
            Layout {
                role: m.role,
                epoch,
                mirrors: m.mirrors,
                primary_server_id: m.primary_server_id,
                syncing: m.syncing,
                attachment,
            },
        )
    }

    /// Sets any layout (role, epoch, peers) on a copy, as `SetLayout` does.
    pub fn set_layout(&self, volume_id: u64, layout: Layout) -> anyhow::Result<()> {
        let _rt = self.handle.enter();
        self.store.set_layout(volume_id, layout)?;
        Ok(())
    }

    /// The copy itself (counters, dirty-region maps), for assertions.
    pub fn copy(&self, volume_id: u64) -> Option<Arc<crate::copy::Copy>> {
        self.store.get(volume_id)
    }

    /// Data-plane connections open now (handshaking or authenticated).
    pub fn data_connections(&self) -> usize {
        self.connections.open()
    }

    /// The copy's persisted layout epoch.
    pub fn epoch(&self, volume_id: u64) -> Option<u64> {
        self.store.get(volume_id).map(|c| c.epoch())
    }

    /// Syncing mirrors of a primary whose full copy completed.
    pub fn synced(&self, volume_id: u64) -> Vec<String> {
        self.store
            .get(volume_id)
            .map(|c| {
                c.synced
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until every mirror link of a primary copy is connected, so
    /// writes can be acknowledged.
    pub fn wait_replicating(&self, volume_id: u64, timeout: Duration) -> anyhow::Result<()> {
        let c = self
            .store
            .get(volume_id)
            .with_context(|| format!("no copy of volume {volume_id}"))?;
        let links = c.mirrors();
        self.handle.block_on(async {
            tokio::time::timeout(timeout, async {
                for l in links.iter() {
                    l.wait_connected().await;
                }
            })
            .await
        })?;
        Ok(())
    }

    /// The copy's current bytes, read from its data file.
    pub fn read_copy(&self, volume_id: u64) -> anyhow::Result<Vec<u8>> {
        let c = self
            .store
            .get(volume_id)
            .with_context(|| format!("no copy of volume {volume_id}"))?;
        Ok(std::fs::read(c.dir().join(crate::copy::DATA_FILE))?)
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
