//! Server-side durations from the storage servers' logs (tracing's default
//! format: an RFC 3339 timestamp, the level, the message, `key=value` fields),
//! to cross-check the times the benchmark measures through the CLI.

use std::path::Path;

/// Removes ANSI escape sequences (`ESC [ … letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch of `2026-11-22T04:48:00.123456Z`.
pub fn parse_ts(t: &str) -> Option<f64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut h = time.split(':');
    let hh: i64 = h.next()?.parse().ok()?;
    let mm: i64 = h.next()?.parse().ok()?;
    let ss: f64 = h.next()?.parse().ok()?;
    Some((days_from_civil(y, mo, da) * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

/// A parsed log line: timestamp (s), message and fields.
pub struct Line {
    pub ts: f64,
    pub text: String,
}

impl Line {
    /// The value of field `key` (`key=value`).
    pub fn field(&self, key: &str) -> Option<&str> {
        let pat = format!("{key}=");
        self.text
            .split_whitespace()
            .find_map(|tok| tok.strip_prefix(pat.as_str()))
    }
}

pub fn lines(path: &Path) -> Vec<Line> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let l = strip_ansi(l);
            let ts = parse_ts(l.split_whitespace().next()?)?;
            Some(Line { ts, text: l })
        })
        .collect()
}

/// Wall-clock times (s since the epoch) of the storage server's "snapshot
/// point taken" and "snapshot uploaded" lines of snapshot `id`.
pub fn upload_span(path: &Path, id: u64) -> Option<(f64, f64)> {
    let id = id.to_string();
    let ls = lines(path);
    let of = |msg: &str| {
        ls.iter()
            .find(|l| l.text.contains(msg) && l.field("snapshot") == Some(id.as_str()))
            .map(|l| l.ts)
    };
    Some((of("snapshot point taken")?, of("snapshot uploaded")?))
}

/// Seconds between those two lines.
pub fn upload_secs(path: &Path, id: u64) -> Option<f64> {
    upload_span(path, id).map(|(a, b)| b - a)
}

/// Now, in seconds since the epoch (the clock of the log timestamps).
pub fn wall_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The `secs` of the storage server's "hydration complete" line of volume `volume`.
pub fn hydration_secs(path: &Path, volume: u64) -> Option<f64> {
    let v = volume.to_string();
    lines(path)
        .iter()
        .rev()
        .find(|l| l.text.contains("hydration complete") && l.field("volume") == Some(v.as_str()))
        .and_then(|l| l.field("secs")?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_fields() {
        let a = parse_ts("2026-11-22T04:48:00.500000Z").unwrap();
        let b = parse_ts("2026-11-22T04:48:02.250000Z").unwrap();
        assert!((b - a - 1.75).abs() < 1e-6);
        assert_eq!(
            parse_ts("1970-01-02T00:00:00Z").map(|x| x as i64),
            Some(86_400)
        );
        let raw = "\u{1b}[2m2026-11-22T04:48:00.5Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m snapshot uploaded \u{1b}[3mvolume\u{1b}[0m\u{1b}[2m=\u{1b}[0m1 \u{1b}[3msnapshot\u{1b}[0m\u{1b}[2m=\u{1b}[0m12";
        let l = strip_ansi(raw);
        let line = Line {
            ts: parse_ts(l.split_whitespace().next().unwrap()).unwrap(),
            text: l.clone(),
        };
        assert_eq!(line.field("snapshot"), Some("12"));
        assert_eq!(line.field("volume"), Some("1"));
        assert!(line.ts > 0.0);
    }
}
