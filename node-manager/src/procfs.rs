//! What /proc says about a process: start time (to tell a reused pid from
//! the process we started), command line, whether it is still running.

use std::path::Path;

/// Start time of `pid` in clock ticks since boot (field 22 of
/// /proc/<pid>/stat); `None` if there is no such process or it is a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Parses /proc/<pid>/stat: (state, start time); `None` for a zombie or
/// dead process, or a malformed line.
fn parse_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold anything,
    // so fields are counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 is fields[19].
    let state = *fields.first()?;
    if state == "Z" || state == "X" || state == "x" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Command line of `pid` (NUL-separated arguments).
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Whether `pid` is alive and still the process started at `start`.
pub fn same_process(pid: u32, start: u64) -> bool {
    pid != 0 && start_time(pid) == Some(start)
}

/// Whether `cmd` is a backend serving `socket` (executable named like
/// `bin`, with `--socket <socket>`).
pub fn is_backend_for(cmd: &[String], bin: &Path, socket: &Path) -> bool {
    let Some(exe) = cmd.first() else {
        return false;
    };
    let name_ok = Path::new(exe).file_name() == bin.file_name();
    let sock = socket.display().to_string();
    let sock_ok = cmd.windows(2).any(|w| w[0] == "--socket" && w[1] == sock);
    name_ok && sock_ok
}

/// Whether `socket` belongs in `run_dir`: `<run-dir>/vol-<id>/<name>`, or
/// directly in it (the layout before per-attachment directories).
fn in_run_dir(socket: &Path, run_dir: &Path) -> bool {
    let Some(parent) = socket.parent() else {
        return false;
    };
    parent == run_dir
        || (parent.parent() == Some(run_dir)
            && parent
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("vol-"))
                .is_some_and(|n| n.parse::<u64>().is_ok()))
}

/// All live processes whose command line is a backend started from `bin`
/// with a socket in `run_dir` (in a per-attachment directory, or directly
/// in it): (pid, socket path).
pub fn backends_in(bin: &Path, run_dir: &Path) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Some(cmd) = cmdline(pid) else { continue };
        let Some(exe) = cmd.first() else { continue };
        if Path::new(exe).file_name() != bin.file_name() || start_time(pid).is_none() {
            continue;
        }
        if let Some(w) = cmd.windows(2).find(|w| w[0] == "--socket") {
            if in_run_dir(Path::new(&w[1]), run_dir) {
                out.push((pid, w[1].clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process() {
        let me = std::process::id();
        let st = start_time(me).unwrap();
        assert!(same_process(me, st));
        assert!(!same_process(me, st + 1));
        assert!(!same_process(0, st));
        assert!(!cmdline(me).unwrap().is_empty());
    }

    #[test]
    fn stat_parsing() {
        let line = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(line), Some(987654));
        let z = "42 (x) Z 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(z), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn backend_match() {
        let cmd: Vec<String> = ["/usr/bin/basalt-vhost-blk", "--socket", "/run/b/vol-1.sock"]
            .map(String::from)
            .to_vec();
        let bin = Path::new("/opt/basalt-vhost-blk");
        assert!(is_backend_for(&cmd, bin, Path::new("/run/b/vol-1.sock")));
        assert!(!is_backend_for(&cmd, bin, Path::new("/run/b/vol-2.sock")));
        assert!(!is_backend_for(
            &cmd,
            Path::new("/x/other"),
            Path::new("/run/b/vol-1.sock")
        ));
        assert!(!is_backend_for(&[], bin, Path::new("/run/b/vol-1.sock")));
    }

    #[test]
    fn run_dir_membership() {
        let run = Path::new("/run/b");
        assert!(in_run_dir(Path::new("/run/b/vol-1/sock"), run));
        assert!(in_run_dir(Path::new("/run/b/vol-1.sock"), run));
        assert!(!in_run_dir(Path::new("/run/b/other/sock"), run));
        assert!(!in_run_dir(Path::new("/run/c/vol-1/sock"), run));
        assert!(!in_run_dir(Path::new("/run/b/vol-1/x/sock"), run));
    }
}
