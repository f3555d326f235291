//! Azurite, the Azure Blob Storage emulator (installed by scripts/setup.sh
//! with npm into `target/tools/azurite`), started on a free loopback port.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{find_tool, free_port, server_or_skip, wait_listening, ServerProcess, TestServerError};
use crate::destination::DestinationSpec;

/// Environment variable naming the `azurite-blob` launcher.
pub const AZURITE_ENV: &str = "BASALT_AZURITE";
/// The emulator's well-known account (public, documented by Microsoft).
pub const ACCOUNT: &str = "devstoreaccount1";
/// The emulator's well-known account key (public, documented by Microsoft).
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Container created by [`Azurite::start`].
pub const DEFAULT_CONTAINER: &str = "basalt-test";

const CREATE_CONTAINER_JS: &str = include_str!("create_container.js");

/// A running Azurite blob service, killed on drop.
pub struct Azurite {
    /// `http://127.0.0.1:PORT/devstoreaccount1` (path-style, with the account).
    pub endpoint: String,
    pub container: String,
    child: ServerProcess,
    dir: tempfile::TempDir,
}

/// Where `azurite-blob` is: `$BASALT_AZURITE`, else
/// `<workspace>/target/tools/azurite/node_modules/.bin/azurite-blob`, else
/// `azurite-blob` on PATH.
pub fn find_azurite() -> Result<PathBuf, TestServerError> {
    find_tool(
        "Azurite",
        AZURITE_ENV,
        "azurite/node_modules/.bin/azurite-blob",
    )
}

impl Azurite {
    /// Starts the blob service and creates [`DEFAULT_CONTAINER`].
    pub fn start() -> Result<Azurite, TestServerError> {
        let binary = find_azurite()?;
        let dir = tempfile::Builder::new()
            .prefix("basalt-azurite-")
            .tempdir()?;
        let log_path = dir.path().join("azurite.log");
        let log = std::fs::File::create(&log_path)?;
        let port = free_port()?;
        let start_err = |reason: String| TestServerError::Start {
            binary: binary.display().to_string(),
            reason,
            log: log_path.display().to_string(),
        };
        let mut child = Command::new(&binary)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path().join("data"))
            .args(["--silent", "--skipApiVersionCheck", "--loose"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| start_err(e.to_string()))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        wait_listening(&mut child, addr).map_err(start_err)?;
        let server = Azurite {
            endpoint: format!("http://{addr}/{ACCOUNT}"),
            container: DEFAULT_CONTAINER.to_owned(),
            child: ServerProcess(child),
            dir,
        };
        server.create_container(DEFAULT_CONTAINER)?;
        Ok(server)
    }

    /// Creates a container (object_store cannot): a Shared Key signed
    /// request sent by `node`, which runs Azurite anyway.
    pub fn create_container(&self, container: &str) -> Result<(), TestServerError> {
        let out = Command::new("node")
            .arg("-e")
            .arg(CREATE_CONTAINER_JS)
            .env("ENDPOINT", &self.endpoint)
            .env("ACCOUNT", ACCOUNT)
            .env("KEY", ACCOUNT_KEY)
            .env("CONTAINER", container)
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        Err(TestServerError::Start {
            binary: "node (create container)".into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            log: self.dir.path().join("azurite.log").display().to_string(),
        })
    }

    /// A destination spec for `az://<container>` on this server.
    pub fn spec_for(&self, container: &str) -> DestinationSpec {
        DestinationSpec {
            name: format!("azurite-{container}"),
            url: format!("az://{container}"),
            endpoint: self.endpoint.clone(),
            region: String::new(),
            allow_http: true,
            access_key_id: ACCOUNT.to_owned(),
            secret_access_key: ACCOUNT_KEY.to_owned(),
        }
    }

    /// The text of a credentials file for `destination add --type azure`.
    pub fn credentials_file_text() -> String {
        format!("account_name = {ACCOUNT}\naccount_key = {ACCOUNT_KEY}\n")
    }

    /// The server's process id (Node.js).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}

/// Starts [`Azurite`] for test `test`, or `None` (loudly) when it is not
/// installed; panics as [`super::s3_server_or_skip`] does.
pub fn azurite_or_skip(test: &str) -> Option<Azurite> {
    server_or_skip(test, Azurite::start)
}
