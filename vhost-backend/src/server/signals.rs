//! SIGTERM / SIGINT: the first one stops the server cleanly, a second one
//! exits at once.

use std::io;
use std::path::PathBuf;

use super::StopHandle;

/// Blocks SIGTERM and SIGINT in the calling thread (and the threads it
/// spawns later), so that only the handler thread receives them.
pub fn block_termination_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

pub fn spawn_handler(set: libc::sigset_t, stop: StopHandle, socket: PathBuf) -> io::Result<()> {
    std::thread::Builder::new()
        .name("basalt-signals".to_owned())
        .spawn(move || {
            let mut stopping = false;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is a valid signal set; `sig` is written on success.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc != 0 {
                    continue;
                }
                if stopping {
                    tracing::warn!(signal = sig, "second termination signal: exiting now");
                    let _ = std::fs::remove_file(&socket);
                    std::process::exit(1);
                }
                stopping = true;
                tracing::info!(
                    signal = sig,
                    "termination signal: draining in-flight requests and stopping"
                );
                let stop = stop.clone();
                // Stopping waits for in-flight requests; keep listening meanwhile.
                if let Err(e) = std::thread::Builder::new()
                    .name("basalt-stop".to_owned())
                    .spawn(move || stop.stop())
                {
                    tracing::error!("cannot start the stop thread ({e}); exiting now");
                    let _ = std::fs::remove_file(&socket);
                    std::process::exit(1);
                }
            }
        })?;
    Ok(())
}
