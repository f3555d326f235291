//! Command-line flags and the validated [`Config`] built from them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use basalt_auth::{JoinSettings, Principal, Role};
use clap::Parser;

/// Per-host node manager: attaches Basalt volumes by running one supervised
/// `basalt-vhost-blk` backend per volume and hands out the VMM launch flags.
#[derive(Debug, Clone, Parser)]
#[command(name = "basalt-node", version)]
pub struct Args {
    /// Id of this node (hypervisor host), as known to the control service:
    /// a DNS label (lowercase letters, digits, '-'); its certificate names
    /// it as <node-id>.node.basalt.
    #[arg(long)]
    pub node_id: String,
    /// Address of the NodeAgent gRPC service.
    #[arg(long, default_value = "127.0.0.1:7600", value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// gRPC address given to the control service (default: the bound --listen address).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Directory of attachment records and backend logs.
    #[arg(long, value_name = "PATH")]
    pub state_dir: PathBuf,
    /// Run directory (owned by this node manager, mode 0711; default
    /// <state-dir>/run): one directory per attachment holding its sockets.
    #[arg(long, value_name = "PATH")]
    pub run_dir: Option<PathBuf>,
    /// Control service URL (https://HOST:PORT; always TLS, an http:// URL
    /// is upgraded); without it the node runs standalone.
    #[arg(long, env = "BASALT_CONTROL", value_name = "URL")]
    pub control: Option<String>,
    /// This node's identity: the cluster CA (ca.crt), its certificate
    /// (tls.crt) and key (tls.key, owner-only) (default <state-dir>/tls).
    /// Also passed to backends with --control.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// One-time join token (owner-only file, from `basalt join-token create
    /// --role node --id <node-id>`), used when --tls-dir holds no valid
    /// certificate for this node: the node joins the control service and
    /// stores the certificate it gets in --tls-dir.
    #[arg(long, value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
    /// The cluster CA certificate (the control service's tls/ca.crt), to
    /// verify the control service when joining (default <tls-dir>/ca.crt).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Heartbeat interval until the control service names its own.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_interval_ms: u64,
    /// The backend binary (default: basalt-vhost-blk next to this executable).
    #[arg(long, value_name = "PATH")]
    pub backend_bin: Option<PathBuf>,
    /// Default owner of each attachment's vhost-user socket (the VMM's user);
    /// its group may enter the attachment's directory.
    #[arg(long, value_name = "UID:GID")]
    pub socket_owner: Option<String>,
    /// Run backends as this unprivileged user (a name, or UID:GID) instead of
    /// the node manager's own user.
    #[arg(long, value_name = "USER")]
    pub backend_user: Option<String>,
    /// Most volumes attached at once; Attach beyond it is refused.
    #[arg(long, default_value_t = 64)]
    pub max_attachments: usize,
    /// First pause before restarting a backend that died (doubles up to 5 s).
    #[arg(long, default_value_t = 200)]
    pub restart_backoff_ms: u64,
    /// Passed to backends as --retry-interval-ms (their default if absent).
    #[arg(long)]
    pub backend_retry_interval_ms: Option<u64>,
    /// How long a backend may take to create its sockets.
    #[arg(long, default_value_t = 10_000)]
    pub backend_start_timeout_ms: u64,
    /// How long Detach waits for a backend to drain and exit before SIGKILL.
    #[arg(long, default_value_t = 10_000)]
    pub backend_stop_timeout_ms: u64,
    /// How often adopted backends (not our children) are checked when pidfd is unavailable.
    #[arg(long, default_value_t = 500)]
    pub supervision_interval_ms: u64,
    /// Written atomically with {"grpc":"IP:PORT"} once the service accepts calls.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

/// Longest run directory: sun_path holds 107 bytes, and the longest name
/// in it is `/vol-<u64>/sock.ctl.tmp` (38 bytes).
pub const MAX_RUN_DIR_LEN: usize = 107 - 38;

/// Largest `--max-attachments` (each attachment is a process, a thread pool
/// and a few sockets).
pub const MAX_MAX_ATTACHMENTS: usize = 4096;

/// A user and group: the owner of a socket handed to the VMM, or the
/// identity backends run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    /// `node <node_id>`: who this node manager is to the cluster.
    pub principal: Principal,
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub control: Option<String>,
    /// Holds `ca.crt`, `tls.crt`, `tls.key`.
    pub tls_dir: PathBuf,
    pub join_token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub heartbeat_interval: Duration,
    pub backend: BackendSettings,
    pub ready_file: Option<PathBuf>,
}

/// What the attachment manager needs to run backends.
#[derive(Debug, Clone)]
pub struct BackendSettings {
    pub bin: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// Default owner of each attachment's socket (recorded per attachment).
    pub socket_owner: Option<Owner>,
    /// Identity backends run as (`None`: the node manager's own).
    pub backend_user: Option<Owner>,
    pub max_attachments: usize,
    pub retry_interval_ms: Option<u64>,
    /// Control service URL given to backends (they ask it for a new layout
    /// when their primary fails).
    pub control: Option<String>,
    /// The node's TLS directory, given to backends with `control` (they
    /// call the control service as this node).
    pub tls_dir: PathBuf,
    pub restart_backoff: Duration,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    pub supervision_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--node-id {0:?} is not a valid node id: use 1-63 lowercase letters, digits and '-', not starting or ending with '-' (it is a DNS label: the node's certificate names it as <node-id>.node.basalt)")]
    NodeId(String),
    #[error(
        "--join-token-file needs --control: the node joins the cluster through the control service"
    )]
    JoinWithoutControl,
    #[error("--{0} must be greater than 0")]
    ZeroTimer(&'static str),
    #[error("--socket-owner {0:?} is not UID:GID (numbers, e.g. 107:107 for qemu)")]
    Owner(String),
    #[error("--control {0:?} is not a URL; use https://HOST:PORT of the control service")]
    Control(String),
    #[error("--advertise {0:?} is not HOST:PORT")]
    Advertise(String),
    #[error("cannot find the backend binary: {0}; pass --backend-bin PATH")]
    BackendBin(String),
    #[error("--run-dir {0} is too long for unix socket paths (at most {MAX_RUN_DIR_LEN} bytes); choose a shorter directory such as /run/basalt")]
    RunDirTooLong(PathBuf),
    #[error("--max-attachments {0} is out of range; use 1..={MAX_MAX_ATTACHMENTS}")]
    MaxAttachments(usize),
    #[error("--backend-user {0:?}: {1}")]
    BackendUser(String, String),
}

fn millis(name: &'static str, ms: u64) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(ConfigError::ZeroTimer(name));
    }
    Ok(Duration::from_millis(ms))
}

fn parse_owner(s: &str) -> Result<Owner, ConfigError> {
    let bad = || ConfigError::Owner(s.to_owned());
    let (u, g) = s.split_once(':').ok_or_else(bad)?;
    Ok(Owner {
        uid: u.parse().map_err(|_| bad())?,
        gid: g.parse().map_err(|_| bad())?,
    })
}

/// Resolves `--backend-user`: a user name (its uid and primary group) or
/// numeric UID:GID. Root is refused: it would be no separation at all.
fn parse_backend_user(s: &str) -> Result<Owner, ConfigError> {
    let bad = |why: &str| ConfigError::BackendUser(s.to_owned(), why.to_owned());
    let o = if s.contains(':') {
        parse_owner(s).map_err(|_| bad("UID:GID must be two numbers"))?
    } else {
        lookup_user(s).ok_or_else(|| {
            bad("no such user; create it (e.g. useradd --system basalt) or give UID:GID")
        })?
    };
    if o.uid == 0 {
        return Err(bad(
            "backends must not run as root; name an unprivileged user or omit the flag",
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && euid != o.uid {
        return Err(bad(
            "switching the backends' user needs basalt-node to run as root",
        ));
    }
    Ok(o)
}

/// uid and primary gid of the user named `name` (getpwnam_r).
fn lookup_user(name: &str) -> Option<Owner> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value to be overwritten.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives it and
    // its length is passed; the result is read only if `out` is non-null.
    let r = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if r != 0 || out.is_null() {
        return None;
    }
    Some(Owner {
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

fn default_backend_bin() -> Result<PathBuf, ConfigError> {
    let exe = std::env::current_exe().map_err(|e| ConfigError::BackendBin(e.to_string()))?;
    let dir = exe
        .parent()
        .ok_or_else(|| ConfigError::BackendBin("executable has no directory".into()))?;
    Ok(dir.join("basalt-vhost-blk"))
}

/// Whether `s` looks like HOST:PORT.
pub fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Config, ConfigError> {
        if !basalt_auth::valid_id(&a.node_id) {
            return Err(ConfigError::NodeId(a.node_id));
        }
        let principal =
            Principal::new(Role::Node, &a.node_id).map_err(|e| ConfigError::NodeId(e.id))?;
        if a.join_token_file.is_some() && a.control.is_none() {
            return Err(ConfigError::JoinWithoutControl);
        }
        if let Some(c) = &a.control {
            if !(c.starts_with("http://") || c.starts_with("https://")) {
                return Err(ConfigError::Control(c.clone()));
            }
        }
        if let Some(adv) = &a.advertise {
            if !valid_host_port(adv) {
                return Err(ConfigError::Advertise(adv.clone()));
            }
        }
        let bin = match a.backend_bin {
            Some(b) => b,
            None => default_backend_bin()?,
        };
        if !bin.exists() {
            return Err(ConfigError::BackendBin(format!(
                "{} does not exist",
                bin.display()
            )));
        }
        if a.backend_retry_interval_ms == Some(0) {
            return Err(ConfigError::ZeroTimer("backend-retry-interval-ms"));
        }
        let run_dir = a.run_dir.unwrap_or_else(|| a.state_dir.join("run"));
        if run_dir.as_os_str().len() > MAX_RUN_DIR_LEN {
            return Err(ConfigError::RunDirTooLong(run_dir));
        }
        if a.max_attachments == 0 || a.max_attachments > MAX_MAX_ATTACHMENTS {
            return Err(ConfigError::MaxAttachments(a.max_attachments));
        }
        let tls_dir = a.tls_dir.unwrap_or_else(|| a.state_dir.join("tls"));
        let backend = BackendSettings {
            bin,
            state_dir: a.state_dir.clone(),
            run_dir: run_dir.clone(),
            socket_owner: a.socket_owner.as_deref().map(parse_owner).transpose()?,
            backend_user: a
                .backend_user
                .as_deref()
                .map(parse_backend_user)
                .transpose()?,
            max_attachments: a.max_attachments,
            retry_interval_ms: a.backend_retry_interval_ms,
            control: a.control.clone(),
            tls_dir: tls_dir.clone(),
            restart_backoff: millis("restart-backoff-ms", a.restart_backoff_ms)?,
            start_timeout: millis("backend-start-timeout-ms", a.backend_start_timeout_ms)?,
            stop_timeout: millis("backend-stop-timeout-ms", a.backend_stop_timeout_ms)?,
            supervision_interval: millis("supervision-interval-ms", a.supervision_interval_ms)?,
        };
        Ok(Config {
            node_id: a.node_id,
            principal,
            listen: a.listen,
            advertise: a.advertise,
            state_dir: a.state_dir,
            run_dir,
            control: a.control,
            tls_dir,
            join_token_file: a.join_token_file,
            ca_file: a.ca_file,
            heartbeat_interval: millis("heartbeat-interval-ms", a.heartbeat_interval_ms)?,
            backend,
            ready_file: a.ready_file,
        })
    }
}

impl Config {
    /// Where this node's certificate is and how it may join the cluster.
    pub fn join_settings(&self) -> JoinSettings {
        JoinSettings {
            tls_dir: self.tls_dir.clone(),
            principal: self.principal.clone(),
            control: self.control.clone(),
            token_file: self.join_token_file.clone(),
            ca_file: self.ca_file.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, String> {
        let mut v = vec![
            "basalt-node",
            "--node-id",
            "n1",
            "--state-dir",
            "/tmp/basalt-node-test",
            "--backend-bin",
            "/bin/true",
        ];
        v.extend_from_slice(extra);
        let a = Args::try_parse_from(v).map_err(|e| e.to_string())?;
        Config::try_from(a).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7600");
        assert_eq!(c.run_dir, PathBuf::from("/tmp/basalt-node-test/run"));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(1000));
        assert_eq!(c.backend.restart_backoff, Duration::from_millis(200));
        assert!(c.backend.socket_owner.is_none());
        assert!(c.backend.backend_user.is_none());
        assert_eq!(c.backend.max_attachments, 64);
        assert_eq!(c.principal, Principal::new(Role::Node, "n1").unwrap());
        assert_eq!(c.tls_dir, PathBuf::from("/tmp/basalt-node-test/tls"));
        assert_eq!(c.backend.tls_dir, c.tls_dir);
        let j = c.join_settings();
        assert_eq!(j.tls_dir, c.tls_dir);
        assert!(j.token_file.is_none() && j.ca_file.is_none() && j.control.is_none());
    }

    #[test]
    fn identity_flags() {
        let c = parse(&[
            "--tls-dir",
            "/etc/basalt/tls",
            "--control",
            "https://ctl:7400",
            "--join-token-file",
            "/etc/basalt/join.token",
            "--ca-file",
            "/etc/basalt/ca.crt",
        ])
        .unwrap();
        assert_eq!(c.tls_dir, PathBuf::from("/etc/basalt/tls"));
        assert_eq!(c.backend.tls_dir, PathBuf::from("/etc/basalt/tls"));
        let j = c.join_settings();
        assert_eq!(j.principal.dns_name(), "n1.node.basalt");
        assert_eq!(j.control.as_deref(), Some("https://ctl:7400"));
        assert_eq!(j.token_file, Some(PathBuf::from("/etc/basalt/join.token")));
        assert_eq!(j.ca_file, Some(PathBuf::from("/etc/basalt/ca.crt")));
        let e = parse(&["--join-token-file", "/etc/basalt/join.token"]).unwrap_err();
        assert!(e.contains("needs --control"), "{e}");
    }

    #[test]
    fn node_id_must_be_a_dns_label() {
        let with_id = |id: &str| {
            let a = Args::try_parse_from([
                "basalt-node",
                &format!("--node-id={id}"),
                "--state-dir",
                "/tmp",
                "--backend-bin",
                "/bin/true",
            ])
            .map_err(|e| e.to_string())?;
            Config::try_from(a).map_err(|e| e.to_string())
        };
        let long = "x".repeat(64);
        for bad in [
            "",
            "Node1",
            "n_1",
            "n.1",
            "-n1",
            "n1-",
            "has space",
            "hv1.example",
            &long,
        ] {
            let e = with_id(bad).unwrap_err();
            assert!(
                e.contains("--node-id") && e.contains("lowercase"),
                "{bad:?}: {e}"
            );
        }
        for good in ["n1", "hv-7", "0", &"x".repeat(63)] {
            assert_eq!(with_id(good).unwrap().node_id, good);
        }
    }

    #[test]
    fn caps_and_backend_user() {
        assert!(parse(&["--max-attachments", "0"])
            .unwrap_err()
            .contains("--max-attachments"));
        assert!(parse(&["--max-attachments", "5000"]).is_err());
        assert_eq!(
            parse(&["--max-attachments", "3"])
                .unwrap()
                .backend
                .max_attachments,
            3
        );
        let e = parse(&["--backend-user", "root"]).unwrap_err();
        assert!(e.contains("must not run as root"), "{e}");
        assert!(parse(&["--backend-user", "0:0"]).is_err());
        let e = parse(&["--backend-user", "no-such-user-basalt"]).unwrap_err();
        assert!(e.contains("no such user"), "{e}");
        assert!(parse(&["--backend-user", "1:x"]).is_err());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(
                parse(&["--backend-user", "4000:4001"])
                    .unwrap()
                    .backend
                    .backend_user,
                Some(Owner {
                    uid: 4000,
                    gid: 4001
                })
            );
            if let Some(nobody) = lookup_user("nobody") {
                assert_eq!(
                    parse(&["--backend-user", "nobody"])
                        .unwrap()
                        .backend
                        .backend_user,
                    Some(nobody)
                );
            }
        }
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--socket-owner", "qemu"])
            .unwrap_err()
            .contains("UID:GID"));
        assert_eq!(
            parse(&["--socket-owner", "107:108"])
                .unwrap()
                .backend
                .socket_owner,
            Some(Owner { uid: 107, gid: 108 })
        );
        assert!(parse(&["--control", "ctl:7000"]).is_err());
        assert!(parse(&["--control", "http://ctl:7000"]).is_ok());
        assert!(parse(&["--advertise", "nohost"]).is_err());
        assert!(parse(&["--restart-backoff-ms", "0"]).is_err());
        assert!(parse(&["--backend-bin", "/nonexistent/bin"])
            .unwrap_err()
            .contains("--backend-bin"));
        let a = Args::try_parse_from([
            "x",
            "--node-id",
            "has space",
            "--state-dir",
            "/tmp",
            "--backend-bin",
            "/bin/true",
        ])
        .unwrap();
        assert!(Config::try_from(a).is_err());
    }
}
