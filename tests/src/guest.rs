//! Boot the Basalt test guest (see `vm-images/README.md`) under QEMU against a
//! vhost-user-blk socket, run a shell script inside it and collect the output.
//!
//! The disk is `/dev/vda` in the guest; the script runs under `sh -x` as root
//! with busybox, fio (libaio) and e2fsprogs available. The guest prints
//! `BASALT-GUEST-EXIT <status>` and powers off; that status is returned.
//! The serial output is kept in `target/guest/logs/`; set `BASALT_GUEST_ECHO=1`
//! to also echo it live to stderr as `[guest] …` lines.
//!
//! ```no_run
//! # use std::{path::Path, time::Duration};
//! # fn main() -> anyhow::Result<()> {
//! use basalt_tests::guest;
//! if !guest::qemu_available() { return Ok(()); }
//! let image = guest::ensure_image()?;
//! let run = image.run(Path::new("/tmp/x.sock"), 2, "cat /sys/block/vda/size", Duration::from_secs(120))?;
//! assert_eq!(run.status, 0, "{}", run.output);
//! # Ok(()) }
//! ```

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Line printed by the guest's init after the script: `BASALT-GUEST-EXIT <status>`.
pub const EXIT_MARKER: &str = "BASALT-GUEST-EXIT";
const QEMU: &str = "qemu-system-x86_64";

/// Result of one guest boot.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// Exit status of the guest script.
    pub status: i32,
    /// Serial console output (`\r` stripped).
    pub output: String,
    /// Wall time from QEMU spawn to QEMU exit.
    pub duration: Duration,
    /// File holding the serial output (and QEMU's stderr, prefixed `[qemu] `).
    pub log: PathBuf,
}

impl GuestRun {
    /// Error (with the output tail) unless the script exited with status 0.
    pub fn ensure_success(&self) -> Result<()> {
        if self.status != 0 {
            bail!(
                "guest script exited with {}; output tail:\n{}",
                self.status,
                tail(&self.output, 40)
            );
        }
        Ok(())
    }
}

/// Kernel and initramfs built by `vm-images/build-guest.sh`.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// How to launch the guest; `GuestConfig::new(socket)` gives the defaults.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// vhost-user-blk socket (the backend must be listening).
    pub socket: PathBuf,
    /// virtqueues of the vhost-user-blk-pci device (default 2).
    pub queues: u16,
    /// Guest RAM in MiB, shared memfd (default 512).
    pub memory_mib: u32,
    /// Guest vCPUs (default 2).
    pub cpus: u16,
    /// Add `reconnect=1` to the chardev so QEMU reconnects after a backend restart.
    pub reconnect: bool,
    /// Appended to the QEMU command line.
    pub extra_args: Vec<String>,
}

impl GuestConfig {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        GuestConfig {
            socket: socket.into(),
            queues: 2,
            memory_mib: 512,
            cpus: 2,
            reconnect: false,
            extra_args: Vec::new(),
        }
    }
}

/// The workspace root (parent of this crate).
pub fn repo_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_path_buf()
}

/// Where the image is cached: `$BASALT_GUEST_DIR` or `<repo>/target/guest`.
pub fn image_dir() -> PathBuf {
    match std::env::var_os("BASALT_GUEST_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo_root().join("target/guest"),
    }
}

/// Whether `qemu-system-x86_64` can be run here.
pub fn qemu_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Command::new(QEMU)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// Build (or reuse) the guest image; the build script runs at most once per process.
pub fn ensure_image() -> Result<GuestImage> {
    static IMAGE: OnceLock<std::result::Result<GuestImage, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| build_image().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_image() -> Result<GuestImage> {
    let script = repo_root().join("vm-images/build-guest.sh");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .env("BASALT_GUEST_DIR", image_dir())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            script.display(),
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 20),
            tail(&String::from_utf8_lossy(&out.stderr), 40)
        );
    }
    tracing::info!(elapsed = ?started.elapsed(), "{}", String::from_utf8_lossy(&out.stdout).trim());
    let dir = image_dir();
    let image = GuestImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initramfs.cpio.gz"),
    };
    for f in [&image.kernel, &image.initrd] {
        if !f.is_file() {
            bail!("{} missing after build", f.display());
        }
    }
    Ok(image)
}

impl GuestImage {
    /// Boot against `socket` with `queues` virtqueues and default settings, run `script`.
    pub fn run(
        &self,
        socket: &Path,
        queues: u16,
        script: &str,
        timeout: Duration,
    ) -> Result<GuestRun> {
        let mut cfg = GuestConfig::new(socket);
        cfg.queues = queues;
        self.run_with(&cfg, script, timeout)
    }

    /// QEMU arguments (without the program name) to boot with `cfg`, the
    /// script being read from `script_file` via fw_cfg.
    pub fn qemu_args(&self, cfg: &GuestConfig, script_file: &Path) -> Vec<String> {
        let accel = std::env::var("BASALT_GUEST_ACCEL").unwrap_or_else(|_| "tcg".into());
        let mut chardev = format!("socket,id=char0,path={}", cfg.socket.display());
        if cfg.reconnect {
            chardev.push_str(",reconnect=1");
        }
        #[rustfmt::skip]
        let mut args: Vec<String> = [
            "-accel", &accel,
            "-smp", &cfg.cpus.to_string(),
            "-m", &cfg.memory_mib.to_string(),
            "-object", &format!("memory-backend-memfd,id=mem,size={}M,share=on", cfg.memory_mib),
            "-numa", "node,memdev=mem",
            "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", &self.kernel.to_string_lossy(),
            "-initrd", &self.initrd.to_string_lossy(),
            "-append", "console=ttyS0 quiet panic=-1",
            "-chardev", &chardev,
            "-device", &format!("vhost-user-blk-pci,chardev=char0,num-queues={}", cfg.queues),
            "-fw_cfg", &format!("name=opt/basalt/script,file={}", script_file.display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(cfg.extra_args.iter().cloned());
        args
    }

    /// Boot with `cfg`, run `script`, wait for QEMU to exit (killing it after `timeout`).
    pub fn run_with(&self, cfg: &GuestConfig, script: &str, timeout: Duration) -> Result<GuestRun> {
        self.run_watching(cfg, script, timeout, &mut |_| {})
    }

    /// Like [`GuestImage::run_with`], calling `on_line` with every serial line
    /// as it arrives, so a test can act when the guest reaches a step.
    pub fn run_watching(
        &self,
        cfg: &GuestConfig,
        script: &str,
        timeout: Duration,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<GuestRun> {
        let mut script_file = tempfile::Builder::new()
            .prefix("basalt-guest-")
            .suffix(".sh")
            .tempfile()?;
        script_file.write_all(script.as_bytes())?;
        script_file.flush()?;
        let log_path = new_log_path()?;
        let mut log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

        let args = self.qemu_args(cfg, script_file.path());
        tracing::debug!(?args, log = %log_path.display(), "starting guest");
        let started = Instant::now();
        let child = Command::new(QEMU)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {QEMU}"))?;
        let mut child = KillOnDrop(child);

        // Both pipes feed one channel; it disconnects when QEMU has closed both.
        let (tx, rx) = mpsc::channel::<(bool, String)>();
        let stdout = child.0.stdout.take().expect("piped stdout");
        let stderr = child.0.stderr.take().expect("piped stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || forward_lines(stdout, true, tx));
        std::thread::spawn(move || forward_lines(stderr, false, tx2));

        let deadline = started + timeout;
        // The serial log is always kept; echoing it live is opt-in.
        let echo = std::env::var_os("BASALT_GUEST_ECHO").is_some_and(|v| v == "1");
        let mut output = String::new();
        let mut qemu_err = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((serial, line)) => {
                    if serial {
                        on_line(&line);
                        if echo {
                            eprintln!("[guest] {line}");
                        }
                        writeln!(log, "{line}")?;
                        output.push_str(&line);
                        output.push('\n');
                    } else {
                        if echo {
                            eprintln!("[qemu] {line}");
                        }
                        writeln!(log, "[qemu] {line}")?;
                        qemu_err.push_str(&line);
                        qemu_err.push('\n');
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.0.kill();
                    let _ = child.0.wait();
                    bail!(
                        "guest timed out after {timeout:?} (log {}); output tail:\n{}{}",
                        log_path.display(),
                        tail(&output, 40),
                        qemu_err
                    );
                }
            }
        }
        let exit = child.0.wait()?;
        let duration = started.elapsed();
        let marker = output.lines().rev().find_map(|l| {
            let rest = &l[l.find(EXIT_MARKER)? + EXIT_MARKER.len()..];
            rest.split_whitespace().next()?.parse::<i32>().ok()
        });
        match marker {
            Some(status) => Ok(GuestRun {
                status,
                output,
                duration,
                log: log_path,
            }),
            None => bail!(
                "guest ended without {EXIT_MARKER} (qemu {exit}; log {}); output tail:\n{}{}",
                log_path.display(),
                tail(&output, 40),
                qemu_err
            ),
        }
    }
}

/// Kills QEMU if `run_with` returns early.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn forward_lines(pipe: impl Read, serial: bool, tx: mpsc::Sender<(bool, String)>) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .replace('\r', "");
                if tx.send((serial, line)).is_err() {
                    return;
                }
            }
        }
    }
}

fn new_log_path() -> Result<PathBuf> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = image_dir().join("logs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    Ok(dir.join(format!("guest-{secs}-{}-{seq}.log", std::process::id())))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let mut s = all[all.len().saturating_sub(lines)..].join("\n");
    s.push('\n');
    s
}

/// (when seen, line) for every serial line of a guest, filled by a
/// [`GuestImage::run_watching`] callback.
pub type Lines = std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>;

/// Waits until the guest printed `want`, failing if it exited first or
/// `timeout` passed.
pub fn wait_line<T>(
    lines: &Lines,
    guest: &std::thread::ScopedJoinHandle<'_, T>,
    want: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(_, l)| l == want)
        {
            return Ok(());
        }
        anyhow::ensure!(!guest.is_finished(), "the guest exited before {want:?}");
        anyhow::ensure!(Instant::now() < deadline, "no {want:?} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
