//! The serve loop: one VMM session after another on the same socket, until
//! stopped (SIGTERM/SIGINT or a [`StopHandle`]).

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::BlkBackend;
use crate::config::Config;
use crate::layout::Layout;
use crate::queue::lock;
use crate::stats::Stats;
use crate::volume::Volume;

mod signals;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on vhost-user socket {path}: {source}; check that the directory exists and is writable")]
    Bind {
        path: PathBuf,
        source: vhost::vhost_user::Error,
    },
    #[error("cannot set up the vhost-user daemon: {0}")]
    Daemon(String),
    #[error(
        "cannot set up the backend: {0}; the process may be out of file descriptors or threads"
    )]
    Setup(#[source] io::Error),
    #[error("cannot install signal handling: {0}")]
    Signals(#[source] io::Error),
    #[error("waiting for the VMM failed: {0}")]
    Poll(#[source] io::Error),
}

#[derive(Clone)]
struct Session {
    backend: Arc<BlkBackend>,
    conn: Option<ShutdownHandle>,
}

struct StopState {
    flag: AtomicBool,
    wake: EventFd,
    session: Mutex<Option<Session>>,
}

impl StopState {
    fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    fn end_session(s: &Session) {
        s.backend.drain();
        if let Some(c) = &s.conn {
            c.shutdown();
        }
    }

    fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        let session = lock(&self.session).clone();
        if let Some(s) = session {
            Self::end_session(&s);
        }
    }

    fn set_session(&self, s: Session) {
        *lock(&self.session) = Some(s.clone());
        if self.is_set() {
            Self::end_session(&s);
        }
    }
}

/// Stops a running [`Server`]: in-flight requests are given the drain
/// timeout, the VMM connection is closed and [`Server::run`] returns.
#[derive(Clone)]
pub struct StopHandle(Arc<StopState>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.trigger();
    }
}

/// A backend bound to its socket.
pub struct Server {
    vol: Arc<Volume>,
    listener: Listener,
    stop: Arc<StopState>,
}

impl Server {
    /// Binds the vhost-user socket (replacing a stale socket file).
    pub fn bind(config: Config) -> Result<Server, ServeError> {
        let listener = Listener::new(&config.socket, true).map_err(|source| ServeError::Bind {
            path: config.socket.clone(),
            source,
        })?;
        let stop = Arc::new(StopState {
            flag: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK).map_err(ServeError::Setup)?,
            session: Mutex::new(None),
        });
        Ok(Server {
            vol: Arc::new(Volume::new(config)),
            listener,
            stop,
        })
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// Per-queue counters (kept across VMM sessions).
    pub fn stats(&self) -> Arc<Stats> {
        self.vol.stats.clone()
    }

    /// The layout a control-plane client may update.
    pub fn layout(&self) -> Arc<Layout> {
        self.vol.layout.clone()
    }

    /// What the control socket acts on ([`crate::control_socket`]).
    pub fn control_state(&self) -> crate::control_socket::ControlState {
        crate::control_socket::ControlState::new(self.vol.clone())
    }

    /// Serves VMM sessions one after another until stopped.
    pub fn run(mut self) -> Result<(), ServeError> {
        let c = &self.vol.config;
        tracing::info!(
            socket = %c.socket.display(), volume = c.volume_id, size = c.size_bytes, primary = %c.primary,
            epoch = c.epoch, queues = c.queues, read_only = c.read_only, "serving vhost-user-blk"
        );
        while !self.stop.is_set() {
            self.session()?;
        }
        tracing::info!("stopped");
        Ok(())
    }

    fn session(&mut self) -> Result<(), ServeError> {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend =
            Arc::new(BlkBackend::new(self.vol.clone(), mem.clone()).map_err(ServeError::Setup)?);
        let mut daemon = VhostUserDaemon::new("basalt-vhost-blk".to_owned(), backend.clone(), mem)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        let handlers = daemon.get_epoll_handlers();
        let result = match backend.attach(&handlers) {
            Ok(()) => self.serve_one(&mut daemon, &backend),
            Err(e) => Err(ServeError::Setup(e)),
        };
        for h in &handlers {
            h.send_exit_event();
        }
        backend.shutdown();
        result
    }

    fn serve_one(
        &mut self,
        daemon: &mut VhostUserDaemon<Arc<BlkBackend>>,
        backend: &Arc<BlkBackend>,
    ) -> Result<(), ServeError> {
        if !self.wait_for_vmm()? {
            return Ok(());
        }
        if let Err(e) = daemon.start(&mut self.listener) {
            tracing::warn!("accepting a VMM connection failed: {e}; waiting for the next one");
            std::thread::sleep(Duration::from_millis(100));
            return Ok(());
        }
        self.stop.set_session(Session {
            backend: backend.clone(),
            conn: daemon.shutdown_handle(),
        });
        tracing::info!("VMM connected");
        let result = daemon.wait();
        *lock(&self.stop.session) = None;
        if self.stop.is_set() {
            tracing::info!("VMM connection closed for shutdown");
            return Ok(());
        }
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => tracing::info!("VMM disconnected; serving again"),
            Err(e) => tracing::warn!("vhost-user session ended: {e}; serving again"),
        }
        Ok(())
    }

    /// Blocks until a VMM connects (`true`) or a stop is requested (`false`).
    fn wait_for_vmm(&self) -> Result<bool, ServeError> {
        let mut fds = [
            libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            if self.stop.is_set() {
                return Ok(false);
            }
            // SAFETY: two valid pollfds for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServeError::Poll(e));
            }
            if self.stop.is_set() {
                return Ok(false);
            }
            if fds[0].revents & libc::POLLIN != 0 {
                return Ok(true);
            }
        }
    }
}

/// Runs the backend described by `config` until SIGTERM or SIGINT.
pub fn start_backend(config: Config) -> Result<(), ServeError> {
    // Before any thread exists, so that every thread inherits the mask.
    let set = signals::block_termination_signals().map_err(ServeError::Signals)?;
    let socket = config.socket.clone();
    let server = Server::bind(config)?;
    signals::spawn_handler(set, server.stop_handle(), socket).map_err(ServeError::Signals)?;
    let ctl = crate::control_socket::control_socket_path(&server.vol.config.socket);
    crate::control_socket::spawn(&ctl, server.control_state())
        .map_err(|e| ServeError::Daemon(e.to_string()))?;
    let result = server.run();
    let _ = std::fs::remove_file(&ctl);
    result
}
