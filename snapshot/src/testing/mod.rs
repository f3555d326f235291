//! Test helpers (not part of the stable API): real object-store servers
//! started on a free loopback port with a temporary root directory: the S3
//! server `s3s-fs` here, the Azure Blob emulator Azurite in [`azurite`].
//!
//! ```no_run
//! # async fn t() {
//! use basalt_snapshot::{testing::S3Server, Destination};
//! let Some(server) = basalt_snapshot::testing::s3_server_or_skip("my_test") else { return };
//! let dest = Destination::open(&server.spec_for(&server.bucket)).expect("open");
//! # }
//! ```

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::destination::DestinationSpec;

pub mod azurite;

/// Environment variable naming the `s3s-fs` binary.
pub const S3S_FS_ENV: &str = "BASALT_S3S_FS";
/// Access key the test server accepts.
pub const ACCESS_KEY_ID: &str = "basalt-test-key";
/// Secret key the test server accepts.
pub const SECRET_ACCESS_KEY: &str = "basalt-test-secret-0123456789";
/// Bucket created by [`S3Server::start`].
pub const DEFAULT_BUCKET: &str = "basalt-test";

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum TestServerError {
    #[error("{server} not found ({detail}): run scripts/setup.sh (it installs {server})")]
    NotInstalled {
        server: &'static str,
        detail: String,
    },
    #[error("cannot start {binary}: {reason}; see its log at {log}")]
    Start {
        binary: String,
        reason: String,
        log: String,
    },
    #[error("test server setup failed: {0}; check that /tmp is writable")]
    Io(#[from] std::io::Error),
}

/// A running `s3s-fs`, killed on drop.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// Bucket created at start.
    pub bucket: String,
    /// Root directory: one subdirectory per bucket.
    pub root: PathBuf,
    child: ServerProcess,
    _dir: tempfile::TempDir,
}

/// Where the `s3s-fs` binary is: `$BASALT_S3S_FS`, else
/// `<workspace>/target/tools/bin/s3s-fs`, else `s3s-fs` on PATH.
pub fn find_s3s_fs() -> Result<PathBuf, TestServerError> {
    find_tool("s3s-fs", S3S_FS_ENV, "bin/s3s-fs")
}

/// `$env`, else `<workspace>/target/tools/<under_tools>`, else the file
/// name of `under_tools` on PATH.
fn find_tool(
    server: &'static str,
    env: &str,
    under_tools: &str,
) -> Result<PathBuf, TestServerError> {
    let missing = |detail: String| TestServerError::NotInstalled { server, detail };
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(missing(format!(
                "${env} is {}, which is not a file",
                p.display()
            )))
        };
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools")
        .join(under_tools);
    if tools.is_file() {
        return Ok(tools);
    }
    let file = Path::new(under_tools).file_name().unwrap_or_default();
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(file))
            .find(|p| p.is_file())
    });
    on_path.ok_or_else(|| {
        missing(format!(
            "${env} unset, not at {}, not on PATH",
            tools.display()
        ))
    })
}

/// A free loopback port from the kernel; the tiny window before the server
/// binds it is acceptable for tests.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Waits until `child` accepts connections on `addr`: `Err` with the reason
/// (after killing it) if it exits first or is not listening in time.
fn wait_listening(child: &mut Child, addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        let failure = match child.try_wait() {
            Ok(Some(status)) => Some(format!("exited early with {status}")),
            Err(e) => Some(e.to_string()),
            Ok(None) if Instant::now() > deadline => {
                Some(format!("not listening on {addr} after {START_TIMEOUT:?}"))
            }
            Ok(None) => None,
        };
        if let Some(reason) = failure {
            let _ = child.kill();
            let _ = child.wait();
            return Err(reason);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `start` for test `test`, or returns `None` after printing a loud
/// skip message when its server is not installed.
///
/// # Panics
/// When the server is missing and `CI` is set (CI must run every test), or
/// when an installed server fails to start.
fn server_or_skip<T>(test: &str, start: impl FnOnce() -> Result<T, TestServerError>) -> Option<T> {
    match start() {
        Ok(s) => Some(s),
        Err(e @ TestServerError::NotInstalled { .. }) => {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {e} (CI is set, so these tests may not be skipped)");
            }
            eprintln!("\n!!!!!!!! SKIPPING {test}: {e} !!!!!!!!\n");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

impl S3Server {
    /// Starts `s3s-fs` and creates [`DEFAULT_BUCKET`].
    pub fn start() -> Result<S3Server, TestServerError> {
        let binary = find_s3s_fs()?;
        let dir = tempfile::Builder::new().prefix("basalt-s3s-").tempdir()?;
        let root = dir.path().join("data");
        std::fs::create_dir(&root)?;
        std::fs::create_dir(root.join(DEFAULT_BUCKET))?;
        let log_path = dir.path().join("s3s-fs.log");
        let log = std::fs::File::create(&log_path)?;
        let port = free_port()?;
        let start_err = |reason: String| TestServerError::Start {
            binary: binary.display().to_string(),
            reason,
            log: log_path.display().to_string(),
        };
        let mut child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--access-key",
                ACCESS_KEY_ID,
                "--secret-key",
                SECRET_ACCESS_KEY,
            ])
            .arg(&root)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| start_err(e.to_string()))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        wait_listening(&mut child, addr).map_err(start_err)?;
        Ok(S3Server {
            endpoint: format!("http://{addr}"),
            bucket: DEFAULT_BUCKET.to_owned(),
            root,
            child: ServerProcess(child),
            _dir: dir,
        })
    }

    /// Creates another bucket (a directory under the root, as s3s-fs keeps them).
    pub fn create_bucket(&self, bucket: &str) -> Result<(), TestServerError> {
        std::fs::create_dir_all(self.root.join(bucket))?;
        Ok(())
    }

    /// A destination spec for `s3://<bucket>` on this server, with its credentials.
    pub fn spec_for(&self, bucket: &str) -> DestinationSpec {
        DestinationSpec {
            name: format!("s3s-{bucket}"),
            url: format!("s3://{bucket}"),
            endpoint: self.endpoint.clone(),
            region: "us-east-1".to_owned(),
            allow_http: true,
            access_key_id: ACCESS_KEY_ID.to_owned(),
            secret_access_key: SECRET_ACCESS_KEY.to_owned(),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}

/// A test server's process, killed and reaped when dropped.
pub(crate) struct ServerProcess(pub(crate) Child);

impl ServerProcess {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts an [`S3Server`] for test `test`, or returns `None` after printing a
/// loud skip message when `s3s-fs` is not installed.
///
/// # Panics
/// When the server is missing and `CI` is set (CI must run every test), or
/// when an installed server fails to start.
pub fn s3_server_or_skip(test: &str) -> Option<S3Server> {
    server_or_skip(test, S3Server::start)
}
