//! Parameters of one attachment, their validation, the backend's command
//! line and the VMM launch flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{valid_host_port, BackendSettings};

/// Largest number of virtqueues a backend serves.
pub const MAX_QUEUES: u32 = 16;
/// Queues used when the request says 0.
pub const DEFAULT_QUEUES: u32 = 1;
/// Virtqueue size given to Cloud Hypervisor (the backend's default maximum).
pub const QUEUE_SIZE: u32 = 256;
const SECTOR: u64 = 512;
/// Largest volume (the control service's `MAX_VOLUME`, 64 TiB).
pub const MAX_SIZE_BYTES: u64 = 64 << 40;
/// Largest step UpdateLayout may move the epoch forward at once. Epochs
/// grow by one per layout change; a bigger jump is a corrupt or hostile
/// request, and accepting it would make every later layout look old.
pub const MAX_EPOCH_STEP: u64 = 1 << 20;
/// Name of the vhost-user socket inside an attachment's directory.
pub const SOCKET_NAME: &str = "sock";

/// What a volume is attached with. Resize and UpdateLayout change
/// `size_bytes`, `primary` and `epoch`, so a restarted backend uses the
/// current values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachParams {
    pub volume_id: u64,
    pub size_bytes: u64,
    pub primary: String,
    pub epoch: u64,
    pub read_only: bool,
    pub queues: u32,
    /// Attachment generation issued by the control service (0 from a
    /// control service that issues none, and in records written before).
    #[serde(default)]
    pub attachment: u64,
    /// The attachment grant the control service signed (see
    /// `basalt_auth::grant`); the backend reads it from [`grant_path`].
    #[serde(default)]
    pub grant: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    #[error("size_bytes {0} is not a positive multiple of 512 of at most {MAX_SIZE_BYTES} (64 TiB); give the volume size in bytes")]
    Size(u64),
    #[error(
        "primary_address {0:?} is not HOST:PORT; give the data-plane address of the primary copy"
    )]
    Primary(String),
    #[error("epoch must be at least 1 (epochs start at 1)")]
    Epoch,
    #[error("the attachment grant is {0} bytes, more than any grant the control service signs")]
    Grant(usize),
    #[error("queues {0} is out of range; use 1..={MAX_QUEUES} (0 means {DEFAULT_QUEUES})")]
    Queues(u32),
    #[error("epoch {epoch} is more than {MAX_EPOCH_STEP} above the current {current}; refusing an implausible jump")]
    EpochJump { epoch: u64, current: u64 },
}

/// Checks a size (positive, whole sectors, at most 64 TiB).
pub fn check_size(size: u64) -> Result<(), ParamsError> {
    if size == 0 || size % SECTOR != 0 || size > MAX_SIZE_BYTES {
        return Err(ParamsError::Size(size));
    }
    Ok(())
}

/// Checks a layout (HOST:PORT, epoch ≥ 1).
pub fn check_layout(primary: &str, epoch: u64) -> Result<(), ParamsError> {
    if !valid_host_port(primary) || primary.len() > 256 {
        return Err(ParamsError::Primary(primary.to_owned()));
    }
    if epoch == 0 {
        return Err(ParamsError::Epoch);
    }
    Ok(())
}

impl AttachParams {
    /// Validates, filling in the default queue count.
    pub fn validated(mut self) -> Result<AttachParams, ParamsError> {
        check_size(self.size_bytes)?;
        check_layout(&self.primary, self.epoch)?;
        if self.queues == 0 {
            self.queues = DEFAULT_QUEUES;
        }
        if self.queues > MAX_QUEUES {
            return Err(ParamsError::Queues(self.queues));
        }
        if self.grant.len() > basalt_auth::grant::MAX_GRANT_LEN {
            return Err(ParamsError::Grant(self.grant.len()));
        }
        Ok(self)
    }

    /// The same attachment, whatever its grant (a control service retrying
    /// an attach signs a new one).
    pub fn same_attachment(&self, other: &AttachParams) -> bool {
        AttachParams {
            grant: Vec::new(),
            ..self.clone()
        } == AttachParams {
            grant: Vec::new(),
            ..other.clone()
        }
    }
}

/// Stores `grant` where the backend of `volume_id` reads it (nothing for
/// an empty grant: the backend then refuses to start, saying so).
pub fn store_grant(
    state_dir: &Path,
    volume_id: u64,
    grant: &[u8],
) -> Result<(), basalt_auth::FilesError> {
    if grant.is_empty() {
        return Ok(());
    }
    basalt_auth::grant::save(&grant_path(state_dir, volume_id), grant)
}

/// Checks that `epoch` may follow `current`: not older, and not an
/// implausible jump. `Ok(false)` for an older epoch (a precondition, not a
/// malformed request); the caller says so.
pub fn check_epoch_step(current: u64, epoch: u64) -> Result<bool, ParamsError> {
    if epoch < current {
        return Ok(false);
    }
    if epoch - current > MAX_EPOCH_STEP {
        return Err(ParamsError::EpochJump { epoch, current });
    }
    Ok(true)
}

/// Name of a volume's directory in the run directory.
pub fn attachment_dir_name(volume_id: u64) -> String {
    format!("vol-{volume_id}")
}

/// vhost-user socket of a volume: `<run-dir>/vol-<id>/sock`.
pub fn socket_path(run_dir: &Path, volume_id: u64) -> PathBuf {
    run_dir
        .join(attachment_dir_name(volume_id))
        .join(SOCKET_NAME)
}

/// The backend's control socket (see `basalt_vhost_backend::control_socket`).
pub fn control_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".ctl");
    PathBuf::from(s)
}

/// The backend's log file.
pub fn log_path(state_dir: &Path, volume_id: u64) -> PathBuf {
    state_dir.join("logs").join(format!("vol-{volume_id}.log"))
}

/// Where the attachment grant of `volume_id` is stored for its backend.
pub fn grant_path(state_dir: &Path, volume_id: u64) -> PathBuf {
    state_dir
        .join("grants")
        .join(format!("vol-{volume_id}.grant"))
}

/// Arguments of `basalt-vhost-blk` for this attachment.
pub fn backend_args(p: &AttachParams, socket: &Path, s: &BackendSettings) -> Vec<String> {
    let mut v = vec![
        "--socket".to_owned(),
        socket.display().to_string(),
        "--volume-id".to_owned(),
        p.volume_id.to_string(),
        "--size-bytes".to_owned(),
        p.size_bytes.to_string(),
        "--primary".to_owned(),
        p.primary.clone(),
        "--epoch".to_owned(),
        p.epoch.to_string(),
        "--queues".to_owned(),
        p.queues.to_string(),
        "--attachment".to_owned(),
        p.attachment.to_string(),
    ];
    if p.read_only {
        v.push("--read-only".to_owned());
    }
    // The backend presents the node's certificate and the grant to storage
    // servers, and calls the control service (if any) as this node.
    v.push("--tls-dir".to_owned());
    v.push(s.tls_dir.display().to_string());
    v.push("--grant-file".to_owned());
    v.push(grant_path(&s.state_dir, p.volume_id).display().to_string());
    if let Some(ms) = s.retry_interval_ms {
        v.push("--retry-interval-ms".to_owned());
        v.push(ms.to_string());
    }
    if let Some(c) = &s.control {
        // The backend calls the control service as this node, with the
        // node's certificate.
        v.push("--control".to_owned());
        v.push(c.clone());
    }
    v
}

/// QEMU option values escape a comma by doubling it.
fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// QEMU arguments adding this disk to a VM.
///
/// Only the per-disk arguments: vhost-user also needs the VM's memory to be
/// shared, which is VM-wide and given once however many disks there are:
/// `-object memory-backend-memfd,id=mem,size=<guest memory>,share=on
/// -numa node,memdev=mem` (see docs/node-manager.md).
pub fn qemu_args(volume_id: u64, socket: &Path, queues: u32) -> Vec<String> {
    let id = format!("basalt-vol{volume_id}");
    vec![
        "-chardev".to_owned(),
        format!(
            "socket,id={id},path={},reconnect=1",
            qemu_escape(&socket.display().to_string())
        ),
        "-device".to_owned(),
        format!("vhost-user-blk-pci,chardev={id},num-queues={queues}"),
    ]
}

/// Cloud Hypervisor arguments adding this disk to a VM. Like
/// [`qemu_args`], only per-disk: the VM also needs `--memory
/// size=<guest memory>,shared=on` once.
pub fn cloud_hypervisor_args(socket: &Path, queues: u32) -> Vec<String> {
    vec![
        "--disk".to_owned(),
        format!(
            "vhost_user=true,socket={},num_queues={queues},queue_size={QUEUE_SIZE}",
            socket.display()
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> AttachParams {
        AttachParams {
            volume_id: 7,
            size_bytes: 1 << 20,
            primary: "127.0.0.1:7500".into(),
            epoch: 1,
            read_only: false,
            queues: 0,
            attachment: 3,
            grant: vec![1, 2, 3],
        }
    }

    #[test]
    fn validation() {
        assert_eq!(p().validated().unwrap().queues, DEFAULT_QUEUES);
        let mut b = p();
        b.size_bytes = 0;
        assert_eq!(b.validated(), Err(ParamsError::Size(0)));
        let mut b = p();
        b.size_bytes = 1000;
        assert!(b.validated().is_err());
        let mut b = p();
        b.primary = "nope".into();
        assert!(b.validated().is_err());
        let mut b = p();
        b.epoch = 0;
        assert_eq!(b.validated(), Err(ParamsError::Epoch));
        let mut b = p();
        b.queues = 17;
        assert_eq!(b.validated(), Err(ParamsError::Queues(17)));
        let mut b = p();
        b.queues = 16;
        assert_eq!(b.validated().map(|v| v.queues), Ok(16));
    }

    #[test]
    fn size_limits() {
        assert_eq!(check_size(MAX_SIZE_BYTES), Ok(()));
        assert_eq!(check_size(512), Ok(()));
        assert_eq!(
            check_size(MAX_SIZE_BYTES + 512),
            Err(ParamsError::Size(MAX_SIZE_BYTES + 512))
        );
        assert!(check_size(u64::MAX - 511).is_err());
        assert!(check_size(513).is_err());
    }

    #[test]
    fn epoch_steps() {
        assert_eq!(check_epoch_step(5, 5), Ok(true));
        assert_eq!(check_epoch_step(5, 4), Ok(false));
        assert_eq!(check_epoch_step(5, 5 + MAX_EPOCH_STEP), Ok(true));
        assert_eq!(
            check_epoch_step(5, 6 + MAX_EPOCH_STEP),
            Err(ParamsError::EpochJump {
                epoch: 6 + MAX_EPOCH_STEP,
                current: 5
            })
        );
        assert!(check_epoch_step(1, u64::MAX).is_err());
    }

    #[test]
    fn backend_gets_the_attachment() {
        let s = BackendSettings {
            bin: "/bin/true".into(),
            state_dir: "/s".into(),
            run_dir: "/r".into(),
            socket_owner: None,
            backend_user: None,
            max_attachments: 1,
            retry_interval_ms: None,
            control: None,
            tls_dir: "/s/tls".into(),
            restart_backoff: std::time::Duration::from_millis(1),
            start_timeout: std::time::Duration::from_millis(1),
            stop_timeout: std::time::Duration::from_millis(1),
            supervision_interval: std::time::Duration::from_millis(1),
        };
        let a = backend_args(&p(), Path::new("/r/vol-7/sock"), &s);
        assert!(a.windows(2).any(|w| w == ["--attachment", "3"]), "{a:?}");
        let mut q = p();
        q.attachment = 0;
        let a = backend_args(&q, Path::new("/r/vol-7/sock"), &s);
        assert!(a.windows(2).any(|w| w == ["--attachment", "0"]), "{a:?}");
        // Standalone: no control service; the node's identity and the
        // grant go to every backend (storage servers require them).
        assert!(!a.iter().any(|f| f == "--control"), "{a:?}");
        assert!(a.windows(2).any(|w| w == ["--tls-dir", "/s/tls"]), "{a:?}");
        assert!(
            a.windows(2)
                .any(|w| w == ["--grant-file", "/s/grants/vol-7.grant"]),
            "{a:?}"
        );
        let with_control = BackendSettings {
            control: Some("https://ctl:7400".into()),
            ..s
        };
        let a = backend_args(&p(), Path::new("/r/vol-7/sock"), &with_control);
        assert!(
            a.windows(2).any(|w| w == ["--control", "https://ctl:7400"]),
            "{a:?}"
        );
        assert!(a.windows(2).any(|w| w == ["--tls-dir", "/s/tls"]), "{a:?}");
    }

    #[test]
    fn launch_flags() {
        let s = socket_path(Path::new("/run/basalt"), 7);
        assert_eq!(s, PathBuf::from("/run/basalt/vol-7/sock"));
        assert_eq!(
            control_path(&s),
            PathBuf::from("/run/basalt/vol-7/sock.ctl")
        );
        let longest = format!("/vol-{}/sock.ctl.tmp", u64::MAX);
        assert_eq!(longest.len(), 107 - crate::config::MAX_RUN_DIR_LEN);
        assert_eq!(
            qemu_args(7, &s, 2),
            [
                "-chardev",
                "socket,id=basalt-vol7,path=/run/basalt/vol-7/sock,reconnect=1",
                "-device",
                "vhost-user-blk-pci,chardev=basalt-vol7,num-queues=2"
            ]
        );
        assert_eq!(
            qemu_args(1, Path::new("/a,b/s"), 1)[1],
            "socket,id=basalt-vol1,path=/a,,b/s,reconnect=1"
        );
        assert_eq!(
            cloud_hypervisor_args(&s, 2),
            [
                "--disk",
                "vhost_user=true,socket=/run/basalt/vol-7/sock,num_queues=2,queue_size=256"
            ]
        );
    }
}
