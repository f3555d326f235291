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
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    #[error("size_bytes {0} is not a positive multiple of 512; give the volume size in bytes")]
    Size(u64),
    #[error(
        "primary_address {0:?} is not HOST:PORT; give the data-plane address of the primary copy"
    )]
    Primary(String),
    #[error("epoch must be at least 1 (epochs start at 1)")]
    Epoch,
    #[error("queues {0} is out of range; use 1..={MAX_QUEUES} (0 means {DEFAULT_QUEUES})")]
    Queues(u32),
}

/// Checks a size (positive, whole sectors).
pub fn check_size(size: u64) -> Result<(), ParamsError> {
    if size == 0 || size % SECTOR != 0 {
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
        Ok(self)
    }
}

/// vhost-user socket of a volume.
pub fn socket_path(run_dir: &Path, volume_id: u64) -> PathBuf {
    run_dir.join(format!("vol-{volume_id}.sock"))
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
    ];
    if p.read_only {
        v.push("--read-only".to_owned());
    }
    if let Some(k) = &s.cluster_key_file {
        v.push("--cluster-key-file".to_owned());
        v.push(k.display().to_string());
    }
    if let Some(ms) = s.retry_interval_ms {
        v.push("--retry-interval-ms".to_owned());
        v.push(ms.to_string());
    }
    if let Some(c) = &s.control {
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
    }

    #[test]
    fn launch_flags() {
        let s = socket_path(Path::new("/run/basalt"), 7);
        assert_eq!(s, PathBuf::from("/run/basalt/vol-7.sock"));
        assert_eq!(
            control_path(&s),
            PathBuf::from("/run/basalt/vol-7.sock.ctl")
        );
        assert_eq!(
            qemu_args(7, &s, 2),
            [
                "-chardev",
                "socket,id=basalt-vol7,path=/run/basalt/vol-7.sock,reconnect=1",
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
                "vhost_user=true,socket=/run/basalt/vol-7.sock,num_queues=2,queue_size=256"
            ]
        );
    }
}
