//! Basalt control service: owns volumes' layouts (placement, epochs,
//! attachments), tracks storage servers and node managers, and persists
//! every change in a metadata store before acting on it.

mod api_tokens;
pub mod audit;
mod backup_policy;
mod block_reads;
mod blocks;
pub mod clients;
pub mod config;
mod convert;
mod copies;
mod destinations;
mod drain;
pub mod error;
mod failover;
mod grants;
mod grpc;
pub mod identity;
pub mod model;
pub mod placement;
mod policy;
mod reconcile;
pub mod registry;
mod report;
mod schedules;
mod scope;
mod snapshots;
pub mod store;
pub mod tenants;
mod volume_blocks;
mod volumes;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use basalt_proto::control as pb;
use tokio::net::TcpListener;

pub use config::{Args, Config};
pub use volumes::{DEFAULT_TENANT, MAX_COPIES, MAX_VOLUME, MIN_VOLUME};

pub struct Control {
    pub store: Arc<dyn store::MetaStore>,
    pub registry: registry::Registry,
    clients: clients::Clients,
    ops: tokio::sync::Mutex<()>,
    /// Per destination: held by a sweep, and briefly by a snapshot point.
    gc_locks: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per open direct snapshot: puts share it, completing takes it alone.
    direct_locks: std::sync::Mutex<std::collections::HashMap<u64, Arc<tokio::sync::RwLock<()>>>>,
    /// Manifests of complete snapshots read for block access.
    /// Held by a schedule run from its decision to its record, and by
    /// SetSchedule: once a change or a clear returned, no run of the old
    /// schedule is in flight.
    schedule_runs: tokio::sync::Mutex<()>,
    /// Snapshot copies running: (snapshot, target destination).
    copy_jobs: std::sync::Mutex<std::collections::HashSet<(u64, String)>>,
    manifest_cache:
        std::sync::Mutex<std::collections::HashMap<u64, Arc<basalt_snapshot::Manifest>>>,
    /// The cluster CA and this service's certificate (absent only in unit
    /// tests that never reach a peer).
    identity: Option<Arc<identity::Identity>>,
    config: Config,
}

impl Control {
    pub fn new(config: Config, store: Arc<dyn store::MetaStore>) -> Control {
        Control {
            store,
            registry: registry::Registry::new(config.down_after),
            clients: clients::Clients {
                connect_timeout: config.peer_timeout.min(std::time::Duration::from_secs(2)),
                request_timeout: config.peer_timeout,
                creds: None,
            },
            ops: tokio::sync::Mutex::new(()),
            gc_locks: Default::default(),
            direct_locks: Default::default(),
            manifest_cache: Default::default(),
            copy_jobs: Default::default(),
            schedule_runs: Default::default(),
            identity: None,
            config,
        }
    }

    /// Gives the service its identity: its certificate for calls to storage
    /// servers and node managers, the CA for joins.
    pub fn with_identity(mut self, identity: identity::Identity) -> Control {
        self.clients.creds = Some(identity.creds.clone());
        self.identity = Some(Arc::new(identity));
        self
    }

    fn identity(&self) -> error::Result<&identity::Identity> {
        self.identity.as_deref().ok_or_else(|| {
            error::ControlError::Unavailable("the control service has no cluster identity".into())
        })
    }

    fn heartbeat_ms(&self) -> u64 {
        self.config.heartbeat_interval.as_millis() as u64
    }

    fn servers_pb(&self) -> error::Result<Vec<pb::StorageServer>> {
        let vols = self.volumes()?;
        Ok(self
            .registry
            .servers(&*self.store)?
            .iter()
            .map(|s| {
                let mine: Vec<_> = vols
                    .iter()
                    .filter(|v| v.copies.iter().any(|c| c.server_id == s.server_id))
                    .collect();
                let allocated = mine.iter().map(|v| v.size_bytes.max(v.target_size)).sum();
                self.registry.server_pb(s, allocated, mine.len() as u32)
            })
            .collect())
    }
}

/// Opens the store and binds the listener.
pub async fn bind(config: Config) -> anyhow::Result<(Arc<Control>, TcpListener)> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state dir {}", config.state_dir.display()))?;
    let path = config.state_dir.join("control.redb");
    let store =
        store::RedbStore::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let store: Arc<dyn store::MetaStore> = Arc::new(store);
    let identity = identity::load_or_bootstrap(&config, &*store)?;
    let control = Control::new(config, store).with_identity(identity);
    control
        .record_flag_destinations()
        .context("cannot record the --destination flags")?;
    let listener = TcpListener::bind(control.config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", control.config.listen))?;
    Ok((Arc::new(control), listener))
}

/// Serves the API and runs reconciliation until `shutdown` resolves.
pub async fn serve(
    control: Arc<Control>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let rec = control.clone();
    let reconciler = tokio::spawn(async move {
        loop {
            rec.reconcile_once().await;
            tokio::time::sleep(rec.config.reconcile_interval).await;
        }
    });
    let poll = control.clone();
    let poller = tokio::spawn(async move {
        loop {
            poll.poll_snapshots().await;
            poll.run_schedules().await;
            poll.start_copies();
            poll.archive_old().await;
            tokio::time::sleep(poll.config.snapshot_poll).await;
        }
    });
    // Access checks on their own task: a destination that does not answer
    // must not hold up the polls of uploads and hydrations.
    let check = control.clone();
    let checker = tokio::spawn(async move {
        let every = check.config.destination_check;
        loop {
            check.check_destinations(every).await;
            tokio::time::sleep(every.min(std::time::Duration::from_secs(10))).await;
        }
    });
    let renew = control.clone();
    let renewer = tokio::spawn(async move {
        let every = renew.config.grant_validity / 4;
        loop {
            tokio::time::sleep(every).await;
            renew.renew_grants().await;
        }
    });
    tracing::info!(listen = %listener.local_addr()?, "basalt-control ready");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let tls = control.identity()?.creds.server_tls();
    let auth = basalt_auth::AuthLayer::with_authority(
        policy::policy(),
        Arc::new(identity::StoreAuthority(control.store.clone())),
    );
    let r = tonic::transport::Server::builder()
        .tls_config(tls)
        .context("bad TLS settings")?
        .layer(auth)
        // Inside the authorisation layer: it records the authenticated caller.
        .layer(audit::AuditLayer::new(audit::AuditLog::open(
            control.store.clone(),
            control.config.audit_keep,
        )))
        .add_service(pb::control_server::ControlServer::new(grpc::Api(control)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    reconciler.abort();
    poller.abort();
    checker.abort();
    renewer.abort();
    r.context("control API server failed")
}
