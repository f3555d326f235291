//! `basalt schedule set|show|clear`: a volume's snapshot schedule and
//! retention.

use basalt_proto::control as pb;
use serde_json::{json, Value};

use crate::args::{Cli, ScheduleCmd};
use crate::commands::{st, vref, Printed};
use crate::output::{fields, format_time, snapshot_json, table};

/// The longest `--every`: one year (the control service's limit too).
const MAX_EVERY_SECS: u64 = 365 * 86_400;

/// Headers of the scheduled snapshots under `schedule show`.
const SNAPSHOT_HEADERS: [&str; 4] = ["ID", "NAME", "STATE", "CREATED"];

/// Seconds of an `--every` interval: a whole number and one unit, `s`,
/// `m`, `h` or `d` (`30s`, `15m`, `4h`, `1d`), from 1 s to 365 d.
pub fn parse_interval(s: &str) -> anyhow::Result<u64> {
    let bad = || {
        anyhow::anyhow!(
            "bad interval {s:?}: give a whole number and a unit, s, m, h or d (e.g. 30s, 15m, 4h, 1d)"
        )
    };
    let unit = match s.chars().last() {
        Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3_600,
        Some('d') => 86_400,
        _ => return Err(bad()),
    };
    let digits = &s[..s.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|&n| n <= MAX_EVERY_SECS)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "interval {s:?} is longer than one year; use --cron for rarer snapshots"
            )
        })?;
    if secs == 0 {
        anyhow::bail!("interval {s:?} is too short: snapshots can be taken at most every 1s");
    }
    Ok(secs)
}

/// An interval for people, in its largest exact unit: `90s`, `15m`, `1d`.
pub fn format_interval(secs: u64) -> String {
    match secs {
        0 => "-".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// What `set` asks for: the interval or the cron expression, and the
/// retention rules (unset ones are 0).
pub fn schedule_of(
    every: Option<&str>,
    cron: Option<&str>,
    keep: [Option<u32>; 3],
) -> anyhow::Result<pb::Schedule> {
    let (interval_secs, cron) = match (every, cron) {
        (Some(e), None) => (parse_interval(e)?, String::new()),
        (None, Some(c)) => (0, c.to_owned()),
        _ => anyhow::bail!("give either --every or --cron"),
    };
    let [keep_last, keep_daily, keep_weekly] = keep.map(Option::unwrap_or_default);
    Ok(pb::Schedule {
        interval_secs,
        cron,
        keep_last,
        keep_daily,
        keep_weekly,
        ..Default::default()
    })
}

/// The JSON of a schedule (None: no schedule, `null`).
pub fn schedule_json(s: Option<&pb::Schedule>) -> Value {
    s.map_or(Value::Null, |s| {
        json!({
            "interval_secs": s.interval_secs,
            "cron": s.cron,
            "keep_last": s.keep_last,
            "keep_daily": s.keep_daily,
            "keep_weekly": s.keep_weekly,
            "next_run_at": s.next_run_at,
            "last_run_at": s.last_run_at,
            "last_error": s.last_error,
            "last_snapshot_id": s.last_snapshot_id,
        })
    })
}

/// `every 4h` or `cron "0 3 * * *" (UTC)`.
fn timing_text(s: &pb::Schedule) -> String {
    if s.cron.is_empty() {
        format!("every {}", format_interval(s.interval_secs))
    } else {
        format!("cron {:?} (UTC)", s.cron)
    }
}

/// `last 7, daily 14` or `all scheduled snapshots`.
fn keep_text(s: &pb::Schedule) -> String {
    let rules: Vec<String> = [
        ("last", s.keep_last),
        ("daily", s.keep_daily),
        ("weekly", s.keep_weekly),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(what, n)| format!("{what} {n}"))
    .collect();
    if rules.is_empty() {
        "all scheduled snapshots".into()
    } else {
        rules.join(", ")
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// The schedule of `v` as `key: value` lines.
pub fn schedule_detail(v: &pb::Volume) -> String {
    let head = ("volume", format!("{} (id {})", v.name, v.id));
    let Some(s) = &v.schedule else {
        return fields(&[head, ("schedule", "none".into())]);
    };
    fields(&[
        head,
        ("schedule", timing_text(s)),
        ("keep", keep_text(s)),
        ("next run", format_time(s.next_run_at)),
        ("last run", format_time(s.last_run_at)),
        (
            "last snapshot",
            match s.last_snapshot_id {
                0 => "-".into(),
                id => id.to_string(),
            },
        ),
        ("last error", or_dash(&s.last_error)),
    ])
}

fn volume_printed(v: &pb::Volume) -> Printed {
    Printed {
        table: schedule_detail(v),
        json: json!({
            "volume": v.name,
            "volume_id": v.id,
            "schedule": schedule_json(v.schedule.as_ref()),
        }),
    }
}

/// Every snapshot of `v` its schedule took (and retention kept), oldest first.
async fn scheduled_snapshots(
    c: &mut crate::auth::Client,
    v: &pb::Volume,
) -> anyhow::Result<Vec<pb::Snapshot>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = c
            .list_snapshots(pb::ListSnapshotsRequest {
                tenant: v.tenant.clone(),
                volume: Some(pb::VolumeRef {
                    id: v.id,
                    ..Default::default()
                }),
                page_size: 1000,
                page_token,
            })
            .await
            .map_err(st)?
            .into_inner();
        out.extend(r.snapshots.into_iter().filter(|s| s.scheduled));
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = r.next_page_token;
    }
}

/// `schedule show`: the schedule, then the scheduled snapshots kept.
fn show_printed(v: &pb::Volume, snaps: &[pb::Snapshot]) -> Printed {
    let mut p = volume_printed(v);
    if !snaps.is_empty() {
        let rows: Vec<Vec<String>> = snaps
            .iter()
            .map(|s| {
                vec![
                    s.id.to_string(),
                    s.name.clone(),
                    s.state.clone(),
                    format_time(s.created_at),
                ]
            })
            .collect();
        p.table.push_str("\n\nscheduled snapshots:\n");
        p.table.push_str(&table(&SNAPSHOT_HEADERS, &rows));
    }
    p.json["snapshots"] = Value::Array(snaps.iter().map(snapshot_json).collect());
    p
}

async fn set(
    cli: &Cli,
    c: &mut crate::auth::Client,
    volume: &str,
    schedule: Option<pb::Schedule>,
) -> anyhow::Result<pb::Volume> {
    Ok(c.set_schedule(pb::SetScheduleRequest {
        volume: Some(vref(cli, volume)),
        schedule,
    })
    .await
    .map_err(st)?
    .into_inner())
}

/// Runs one `basalt schedule …` command.
pub async fn run(
    cli: &Cli,
    c: &mut crate::auth::Client,
    cmd: &ScheduleCmd,
) -> anyhow::Result<Printed> {
    Ok(match cmd {
        ScheduleCmd::Set {
            volume,
            every,
            cron,
            keep_last,
            keep_daily,
            keep_weekly,
        } => {
            let s = schedule_of(
                every.as_deref(),
                cron.as_deref(),
                [*keep_last, *keep_daily, *keep_weekly],
            )?;
            volume_printed(&set(cli, c, volume, Some(s)).await?)
        }
        ScheduleCmd::Show { volume } => {
            let v = c
                .describe_volume(pb::DescribeVolumeRequest {
                    volume: Some(vref(cli, volume)),
                })
                .await
                .map_err(st)?
                .into_inner();
            let snaps = scheduled_snapshots(c, &v).await?;
            show_printed(&v, &snaps)
        }
        ScheduleCmd::Clear { volume } => {
            let v = set(cli, c, volume, None).await?;
            let mut p = volume_printed(&v);
            p.table = format!(
                "schedule of volume {} cleared (its scheduled snapshots are kept)",
                v.name
            );
            p
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn intervals() {
        for (s, want) in [
            ("1s", 1),
            ("30s", 30),
            ("15m", 900),
            ("4h", 14_400),
            ("1d", 86_400),
            ("365d", MAX_EVERY_SECS),
            ("0090s", 90),
        ] {
            assert_eq!(parse_interval(s).unwrap(), want, "{s}");
        }
        for s in [
            "", "s", "30", "30x", "1.5h", "-1s", "+1s", " 1s", "1s ", "1 s", "1S", "1h30m", "1w",
        ] {
            let e = parse_interval(s).unwrap_err().to_string();
            assert!(e.contains("bad interval"), "{s:?}: {e}");
        }
        assert!(parse_interval("0s")
            .unwrap_err()
            .to_string()
            .contains("too short"));
        assert!(parse_interval("366d")
            .unwrap_err()
            .to_string()
            .contains("one year"));
        assert!(parse_interval("99999999999999999999s")
            .unwrap_err()
            .to_string()
            .contains("one year"));
        for (secs, text) in [
            (1, "1s"),
            (90, "90s"),
            (900, "15m"),
            (7_200, "2h"),
            (172_800, "2d"),
        ] {
            assert_eq!(format_interval(secs), text);
            assert_eq!(parse_interval(text).unwrap(), secs);
        }
    }

    #[test]
    fn requests() {
        let s = schedule_of(Some("2s"), None, [Some(2), None, Some(4)]).unwrap();
        assert_eq!((s.interval_secs, s.cron.as_str()), (2, ""));
        assert_eq!((s.keep_last, s.keep_daily, s.keep_weekly), (2, 0, 4));
        let s = schedule_of(None, Some("0 3 * * *"), [None; 3]).unwrap();
        assert_eq!((s.interval_secs, s.cron.as_str()), (0, "0 3 * * *"));
        assert!(schedule_of(Some("2s"), Some("* * * * *"), [None; 3]).is_err());
        assert!(schedule_of(None, None, [None; 3]).is_err());
    }

    #[test]
    fn grammar() {
        let parse = |a: &[&str]| {
            Cli::try_parse_from([&["basalt", "schedule"], a].concat()).map(|c| c.command)
        };
        assert!(
            parse(&["set", "v"]).is_err(),
            "--every or --cron is required"
        );
        assert!(parse(&["set", "v", "--every", "1m", "--cron", "* * * * *"]).is_err());
        assert!(parse(&["set", "v", "--every", "1m", "--keep-last", "-1"]).is_err());
        assert!(parse(&["set", "v", "--cron", "0 3 * * *", "--keep-daily", "7"]).is_ok());
        assert!(parse(&["show", "v"]).is_ok());
        assert!(parse(&["clear", "v"]).is_ok());
    }

    #[test]
    fn details() {
        let mut v = pb::Volume {
            id: 3,
            name: "db1".into(),
            ..Default::default()
        };
        assert!(schedule_detail(&v).contains("schedule: none"));
        assert_eq!(volume_printed(&v).json["schedule"], Value::Null);
        v.schedule = Some(pb::Schedule {
            interval_secs: 14_400,
            keep_last: 7,
            keep_weekly: 4,
            next_run_at: 1_700_000_000,
            last_error: "boom".into(),
            last_snapshot_id: 12,
            ..Default::default()
        });
        let t = schedule_detail(&v);
        for want in [
            "db1 (id 3)",
            "every 4h",
            "last 7, weekly 4",
            "next run:      2023-11-14T22:13:20Z",
            "last run:      -",
            "last snapshot: 12",
            "last error:    boom",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
        let snaps = [pb::Snapshot {
            id: 12,
            name: "db1-20231114-221320".into(),
            state: "COMPLETE".into(),
            scheduled: true,
            ..Default::default()
        }];
        let p = show_printed(&v, &snaps);
        assert!(p.table.contains("db1-20231114-221320"), "{}", p.table);
        assert_eq!(p.json["schedule"]["keep_last"], 7);
        assert_eq!(p.json["snapshots"][0]["id"], 12);
        v.schedule = Some(pb::Schedule {
            cron: "0 3 * * *".into(),
            ..Default::default()
        });
        let t = schedule_detail(&v);
        assert!(
            t.contains("cron \"0 3 * * *\" (UTC)") && t.contains("all scheduled snapshots"),
            "{t}"
        );
    }
}
