//! Progress of `--wait`: a bar on stderr when it is a terminal; otherwise
//! (scripts, CI) one plain line on stderr per 10 % step or state change.

use std::borrow::Cow;
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::size::format_size;

/// `done` out of `total` in percent, rounded down (100 only once all is
/// done); `None` while `total` is 0 (not known yet, or nothing to do).
pub fn percent(done: u64, total: u64) -> Option<u64> {
    if total == 0 {
        return None;
    }
    let p = u128::from(done.min(total)) * 100 / u128::from(total);
    // At most 100.
    Some(p as u64)
}

/// One observation of a job that works through 512 KiB blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// CREATING, COMPLETE, FAILED, HYDRATING, ...
    pub state: String,
    pub done: u64,
    pub total: u64,
    /// Bytes moved so far (uploaded, fetched).
    pub bytes: u64,
}

/// The plain line for an observation, e.g.
/// `snapshot s1: CREATING 37% (1515/4096 blocks, 120 MiB uploaded)`.
pub fn progress_line(subject: &str, s: &Status, bytes_what: &str) -> String {
    let pct = percent(s.done, s.total)
        .map(|p| format!(" {p}%"))
        .unwrap_or_default();
    format!(
        "{subject}: {}{pct} ({}/{} blocks, {} {bytes_what})",
        s.state,
        s.done,
        s.total,
        format_size(s.bytes)
    )
}

/// Picks the observations that get a plain line: the first one, every
/// change of state and every new 10 % step.
#[derive(Debug, Default)]
pub struct Steps {
    last: Option<(String, Option<u64>)>,
}

impl Steps {
    /// Whether to print this observation; remembers it if so.
    pub fn observe(&mut self, state: &str, percent: Option<u64>) -> bool {
        let step = percent.map(|p| p / 10);
        let print = match &self.last {
            None => true,
            // None (total not known) is below every step.
            Some((s, last)) => s != state || step > *last,
        };
        if print {
            self.last = Some((state.to_owned(), step));
        }
        print
    }
}

const BAR_TEMPLATE: &str =
    "{prefix} [{wide_bar}] {percent:>3}% {pos}/{len} blocks, {msg} ({elapsed}, eta {eta})";
const SPINNER_TEMPLATE: &str = "{spinner} {prefix}: {msg} ({elapsed})";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Shows the progress of one job until it ends.
pub struct Reporter {
    subject: String,
    bytes_what: &'static str,
    bar: Option<ProgressBar>,
    sized: bool,
    steps: Steps,
}

impl Reporter {
    /// `subject` names the job (`snapshot s1`), `bytes_what` the bytes it
    /// counts (`uploaded`). Draws a bar only when stderr is a terminal.
    pub fn new(subject: String, bytes_what: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            // Built before its first draw (by `update`).
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                .with_style(style(SPINNER_TEMPLATE))
                .with_prefix(subject.clone())
        });
        Reporter {
            subject,
            bytes_what,
            bar,
            sized: false,
            steps: Steps::default(),
        }
    }

    /// A new observation of a job still running.
    pub fn update(&mut self, s: &Status) {
        match &self.bar {
            Some(b) => {
                b.set_message(format!(
                    "{} {}, {}",
                    format_size(s.bytes),
                    self.bytes_what,
                    s.state
                ));
                let sized = s.total > 0;
                if sized != self.sized {
                    b.set_style(style(if sized {
                        BAR_TEMPLATE
                    } else {
                        SPINNER_TEMPLATE
                    }));
                    self.sized = sized;
                }
                if sized {
                    b.set_length(s.total);
                    b.set_position(s.done.min(s.total));
                } else {
                    b.unset_length();
                    b.tick();
                }
            }
            None => {
                if self.steps.observe(&s.state, percent(s.done, s.total)) {
                    eprintln!("{}", progress_line(&self.subject, s, self.bytes_what));
                }
            }
        }
    }

    /// The last observation: the job ended, well (`ok`) or not.
    pub fn finish(&mut self, s: &Status, ok: bool) {
        self.update(s);
        if let Some(b) = &self.bar {
            if ok {
                b.finish();
            } else {
                b.abandon();
            }
        }
    }

    /// A remark (e.g. a retried error) between progress updates.
    pub fn note(&self, msg: impl Into<Cow<'static, str>>) {
        let msg = msg.into();
        match &self.bar {
            Some(b) => b.println(format!("{}: {msg}", self.subject)),
            None => eprintln!("{}: {msg}", self.subject),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(state: &str, done: u64, total: u64, bytes: u64) -> Status {
        Status {
            state: state.into(),
            done,
            total,
            bytes,
        }
    }

    #[test]
    fn percent_rounds_down_and_needs_a_total() {
        assert_eq!(percent(0, 0), None);
        assert_eq!(percent(5, 0), None);
        assert_eq!(percent(0, 4096), Some(0));
        assert_eq!(percent(1515, 4096), Some(36));
        assert_eq!(percent(4095, 4096), Some(99));
        assert_eq!(percent(4096, 4096), Some(100));
        // More done than the total (the total was read before): capped.
        assert_eq!(percent(5000, 4096), Some(100));
        assert_eq!(percent(u64::MAX - 1, u64::MAX), Some(99));
    }

    #[test]
    fn lines() {
        assert_eq!(
            progress_line(
                "snapshot s1",
                &st("CREATING", 1515, 4096, 120 << 20),
                "uploaded"
            ),
            "snapshot s1: CREATING 36% (1515/4096 blocks, 120 MiB uploaded)"
        );
        assert_eq!(
            progress_line("snapshot s1", &st("CREATING", 0, 0, 0), "uploaded"),
            "snapshot s1: CREATING (0/0 blocks, 0 B uploaded)"
        );
        assert_eq!(
            progress_line("volume db1", &st("COMPLETE", 8, 8, 1536 << 10), "fetched"),
            "volume db1: COMPLETE 100% (8/8 blocks, 1.5 MiB fetched)"
        );
    }

    #[test]
    fn one_line_per_step_or_state() {
        let mut s = Steps::default();
        let printed: Vec<bool> = [
            ("CREATING", None),
            ("CREATING", None),
            ("CREATING", Some(0)),
            ("CREATING", Some(5)),
            ("CREATING", Some(10)),
            ("CREATING", Some(19)),
            ("CREATING", Some(45)),
            ("CREATING", Some(41)),
            ("CREATING", Some(49)),
            ("CREATING", Some(50)),
            ("COMPLETE", Some(100)),
            ("COMPLETE", Some(100)),
        ]
        .iter()
        .map(|(state, p)| s.observe(state, *p))
        .collect();
        assert_eq!(
            printed,
            [true, false, true, false, true, false, true, false, false, true, true, false]
        );
        // A state change prints even without progress.
        let mut s = Steps::default();
        assert!(s.observe("CREATING", Some(30)));
        assert!(s.observe("FAILED", Some(30)));
    }

    #[test]
    fn templates_parse() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
        assert!(ProgressStyle::with_template(SPINNER_TEMPLATE).is_ok());
    }
}
