//! Basalt storage server: holds primary and mirror copies of volumes, serves
//! the binary data plane (see `proto/WIRE.md`) and an admin gRPC API (over
//! mutual TLS, for the control service only: see [`admin_policy`]).

pub mod admin;
pub mod config;
pub mod control_client;
pub mod copy;
#[doc(hidden)]
pub mod data_client;
pub mod dataplane;
pub mod dirty;
mod error_map;
pub mod fake_control;
pub mod frames;
pub mod meta;
pub mod mirror;
pub mod report;
pub mod resync;
pub mod session;
pub mod snap;
pub mod store;
pub mod testing;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use anyhow::Context;
use basalt_auth::{Access, AuthLayer, Credentials, JoinSettings, Policy, Principal, Role};
use basalt_proto::storage_admin::storage_admin_server::StorageAdminServer;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::transport::Endpoint;

pub use config::{Args, ServerConfig};

/// A server whose sockets are bound and whose copies are loaded.
pub struct Bound {
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    data: TcpListener,
    admin: TcpListener,
    store: Arc<store::Store>,
    connections: Arc<dataplane::Connections>,
    config: ServerConfig,
    /// This server's identity (admin server, control client).
    creds: Credentials,
    /// Data-plane TLS settings and grant checker.
    tls: Arc<session::DataTls>,
    /// The control service, over mutual TLS (with `--control`).
    control: Option<Endpoint>,
    _lock: std::fs::File,
}

/// Who may call the admin API: every `StorageAdmin` method is the control
/// service's alone; anything else is refused.
pub fn admin_policy() -> Policy {
    Arc::new(|path: &str| {
        let service = StorageAdminServer::<admin::AdminService>::NAME;
        path.strip_prefix('/')
            .and_then(|p| p.strip_prefix(service))
            .and_then(|p| p.strip_prefix('/'))
            .filter(|method| !method.is_empty() && !method.contains('/'))
            .map(|_| Access::Roles(&[Role::Control]))
    })
}

/// This server's credentials: those in `--tls-dir` if they are valid and
/// name it, otherwise a certificate obtained by joining the cluster with
/// `--join-token-file` (stored in `--tls-dir`).
async fn credentials(config: &ServerConfig) -> anyhow::Result<Credentials> {
    let principal = Principal::new(Role::Storage, &config.server_id)?;
    let settings = JoinSettings {
        tls_dir: config.tls_dir.clone(),
        principal,
        control: config.control.clone(),
        token_file: config.join_token_file.clone(),
        ca_file: config.ca_file.clone(),
    };
    Ok(basalt_auth::obtain(&settings).await?)
}

/// Takes an exclusive lock on the data directory so two servers never share it.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let f = std::fs::File::create(dir.join("LOCK"))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "data dir {} is in use by another basalt-storage process",
            dir.display()
        );
    }
    Ok(f)
}

/// Warns when the file-descriptor limit is below what `--max-connections`
/// needs: accepts would then fail before the cap is reached.
fn check_fd_limit(max_connections: usize) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return;
    }
    // One descriptor per connection, plus mirror links, copies, the admin
    // server and the runtime.
    let want = max_connections as u64 + 256;
    if r.rlim_cur != libc::RLIM_INFINITY && r.rlim_cur < want {
        tracing::warn!(
            limit = r.rlim_cur,
            max_connections,
            "the open-file limit is below --max-connections plus 256: raise it (ulimit -n, LimitNOFILE=) or lower --max-connections"
        );
    }
}

/// Loads copies and binds the listeners. Must run inside a tokio runtime.
pub async fn bind(config: ServerConfig) -> anyhow::Result<Bound> {
    let lock = lock_data_dir(&config.data_dir)?;
    check_fd_limit(config.max_connections);
    let creds = credentials(&config).await?;
    let tls = Arc::new(
        session::DataTls::new(&creds, config.data_clear)
            .context("cannot set up data-plane TLS from --tls-dir")?,
    );
    let settings = mirror::LinkSettings {
        local_server_id: config.server_id.clone(),
        tls: tls.clone(),
        reconnect: config.mirror_reconnect,
        connect_timeout: config.mirror_timeout,
        sync_timeout: config.peer_timeout,
        queue_bytes: config.mirror_queue,
    };
    let to_control = || creds.client_tls(&Principal::control());
    let reporter = match &config.control {
        Some(url) => Some(Arc::new(report::Reporter::new(
            url,
            &config.server_id,
            to_control(),
        )?)),
        None => None,
    };
    let control = match &config.control {
        Some(url) => Some(basalt_auth::endpoint(url, to_control()).with_context(|| {
            format!("invalid --control address {url:?}; use HOST:PORT (or http://HOST:PORT, https://HOST:PORT: always over TLS)")
        })?),
        None => None,
    };
    let store = Arc::new(
        store::Store::open(&config.data_dir, settings, reporter).context("cannot load copies")?,
    );
    let data = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.admin_listen))?;
    Ok(Bound {
        data_addr: data.local_addr()?,
        admin_addr: admin.local_addr()?,
        data,
        admin,
        store,
        connections: Arc::new(dataplane::Connections::new(config.max_connections)),
        config,
        creds,
        tls,
        control,
        _lock: lock,
    })
}

impl Bound {
    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        // The admin API: mutual TLS, every method for the control service
        // only. Configured before anything starts, so a failure leaves
        // nothing running.
        let mut admin_server = tonic::transport::Server::builder()
            .tls_config(self.creds.server_tls())
            .context("cannot configure TLS for the admin server")?
            .layer(AuthLayer::certificates(admin_policy()));
        let ctx = Arc::new(dataplane::DataCtx {
            store: self.store.clone(),
            tls: self.tls.clone(),
            mirror_timeout: self.config.mirror_timeout,
            mirror_sync_timeout: self.config.mirror_sync_timeout,
            connections: self.connections.clone(),
            handshake_timeout: self.config.handshake_timeout,
            peer_timeout: self.config.peer_timeout,
            response_budget: self.config.response_budget,
        });
        let data = tokio::spawn(dataplane::serve(self.data, ctx));
        let svc = admin::AdminService {
            store: self.store.clone(),
            data_address: self.data_addr.to_string(),
            data_dir: self.config.data_dir.clone(),
        };
        tracing::info!(server = %self.config.server_id, data = %self.data_addr, admin = %self.admin_addr, copies = self.store.list().len(), "basalt-storage ready");
        let control = self.config.control.clone().zip(self.control.clone());
        let registration = control.map(|(control_url, endpoint)| {
            let data = self.config.advertise.unwrap_or(self.data_addr);
            tokio::spawn(control_client::run(control_client::Registration {
                control_url,
                endpoint,
                server_id: self.config.server_id.clone(),
                zone: self.config.zone.clone(),
                data_address: data.to_string(),
                admin_address: self
                    .config
                    .advertise_admin
                    .unwrap_or(self.admin_addr)
                    .to_string(),
                data_dir: self.config.data_dir.clone(),
            }))
        });
        if let Some(path) = &self.config.ready_file {
            write_ready_file(path, self.data_addr, self.admin_addr)?;
        }
        let incoming = tokio_stream_from(self.admin);
        let r = admin_server
            .add_service(StorageAdminServer::new(svc))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        data.abort();
        self.store.save_changes();
        if let Some(t) = registration {
            t.abort();
        }
        r.context("admin server failed")
    }
}

fn tokio_stream_from(l: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true))
}

fn write_ready_file(
    path: &std::path::Path,
    data: SocketAddr,
    admin: SocketAddr,
) -> anyhow::Result<()> {
    let body = format!("{{\"data\": \"{data}\", \"admin\": \"{admin}\"}}\n");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
