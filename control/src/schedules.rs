//! Snapshot schedules and their retention.
//!
//! A volume's schedule (`VolumeRecord.schedule`) runs from the control
//! service's poll loop ([`Control::run_schedules`], every
//! `--snapshot-poll-ms`). A run is due once `next_run_at <= now`; then:
//!
//! 1. It waits, `next_run_at` unchanged and tried again on the next tick,
//!    while the volume cannot be snapshotted: a snapshot of it is still
//!    CREATING (never two at once), or the volume is not AVAILABLE or still
//!    loads its own source snapshot (that wait is shown in `last_error`).
//! 2. It persists the next slot strictly after now, and `last_run_at`,
//!    *before* taking the snapshot: a crash at any point makes at most one
//!    snapshot for the slot (possibly none; the next slot runs as usual).
//!    Slots missed while the control service was down, or while the volume
//!    was busy, collapse into this one catch-up run. Interval slots keep
//!    their phase (`next_run_at + k * interval`); cron slots are the
//!    expression's next match (UTC).
//! 3. It takes a snapshot marked `scheduled`, named
//!    `<volume>-<yyyymmdd-hhmmss>` (UTC time of the run; `-2`, `-3`, ... on
//!    a clash; the volume name shortened to keep it within 63 characters),
//!    and records its id in `last_snapshot_id`, or the error in
//!    `last_error`. A run refused because the volume turned busy between
//!    the check and the snapshot (a manual snapshot started in between)
//!    made nothing: its slot is put back and it runs once the volume is
//!    free. Any other failure uses the slot up; the next one runs as usual.
//!    If the control service stops between the point and the record, the
//!    next tick finds the snapshot and records it.
//!
//! Retention, on every tick, for every volume with a schedule: of its
//! COMPLETE scheduled snapshots, those [`retained`] are kept and the others
//! deleted; FAILED scheduled snapshots are deleted once a newer scheduled
//! one is COMPLETE (they hold nothing). Only `scheduled` snapshots are ever
//! deleted. A delete that is refused (a volume still loads from the
//! snapshot, say) is skipped, noted in `last_error` and retried on the next
//! tick. A tick with no run due and nothing to delete writes nothing and
//! calls no server.

use std::collections::{BTreeSet, HashMap, HashSet};

use basalt_proto::control as pb;
use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use crate::error::{ControlError, Result};
use crate::model::*;
use crate::store::{get_json, Table};
use crate::Control;

/// Longest interval: one year (a cron expression serves rarer schedules).
pub const MAX_INTERVAL_SECS: u64 = 365 * 86_400;
/// Most snapshots one `keep_*` rule may ask for.
pub const MAX_KEEP: u32 = 10_000;
/// Snapshot names are at most this long (see `volumes::valid_name`).
const MAX_NAME: usize = 63;
/// `last_error` of a retention problem starts with this (a clean
/// retention pass clears only such errors).
const RETENTION: &str = "retention: ";
/// `last_error` of a due run waiting for the volume starts with this.
const WAITING: &str = "waiting: ";
/// `next_run_at` of a schedule that has no future slot.
const NEVER: i64 = i64::MAX;

/// The API form of a schedule record.
pub fn schedule_pb(s: &ScheduleRecord) -> pb::Schedule {
    pb::Schedule {
        interval_secs: s.interval_secs,
        cron: s.cron.clone(),
        keep_last: s.keep_last,
        keep_daily: s.keep_daily,
        keep_weekly: s.keep_weekly,
        next_run_at: s.next_run_at,
        last_run_at: s.last_run_at,
        last_error: s.last_error.clone(),
        last_snapshot_id: s.last_snapshot_id,
    }
}

/// When a schedule runs.
#[derive(Debug)]
enum Timing {
    /// Every this many seconds.
    Every(i64),
    /// At the matches of a cron expression (UTC).
    Cron(Box<Cron>),
}

fn parse_cron(expr: &str) -> Result<Cron> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expr.trim())
        .map_err(|e| {
            ControlError::Invalid(format!(
                "cron {expr:?} is not a valid expression ({e}); give 5 fields, minute hour \
                 day-of-month month day-of-week, in UTC, e.g. \"0 3 * * *\" for 03:00 every day"
            ))
        })
}

/// The timing of a schedule: exactly one of `interval_secs` and `cron`.
fn timing(interval_secs: u64, cron: &str) -> Result<Timing> {
    let has_cron = !cron.trim().is_empty();
    match interval_secs {
        0 if !has_cron => Err(ControlError::Invalid(
            "a schedule needs interval_secs (at least 1) or a cron expression; neither is set"
                .into(),
        )),
        0 => Ok(Timing::Cron(Box::new(parse_cron(cron)?))),
        _ if has_cron => Err(ControlError::Invalid(
            "set either interval_secs or cron, not both".into(),
        )),
        n if n > MAX_INTERVAL_SECS => Err(ControlError::Invalid(format!(
            "interval_secs {n} is longer than one year ({MAX_INTERVAL_SECS}); use a cron \
             expression for rarer snapshots"
        ))),
        n => Ok(Timing::Every(n as i64)),
    }
}

/// The first slot strictly after `now`. `due` is the slot that came due
/// (interval slots keep its phase; pass `now` when there is none).
fn next_slot(t: &Timing, due: i64, now: i64) -> Result<i64> {
    match t {
        Timing::Every(n) => {
            let from = due.min(now);
            let steps = (now - from) / n + 1;
            Ok(from.saturating_add(steps.saturating_mul(*n)))
        }
        Timing::Cron(c) => {
            let at = DateTime::<Utc>::from_timestamp(now, 0).ok_or_else(|| {
                ControlError::Invalid(format!("time {now} is out of range for a cron schedule"))
            })?;
            c.find_next_occurrence(&at, false)
                .map(|t| t.timestamp())
                .map_err(|e| {
                    ControlError::Invalid(format!(
                        "cron {:?} has no match after {at}: {e}; check the day and month fields",
                        c.pattern.to_string()
                    ))
                })
        }
    }
}

fn check_keep(what: &str, n: u32) -> Result<()> {
    if n > MAX_KEEP {
        return Err(ControlError::Invalid(format!(
            "{what} {n} is more than the maximum of {MAX_KEEP}"
        )));
    }
    Ok(())
}

/// A validated schedule record for `s`, first run counted from `now`.
fn new_record(s: &pb::Schedule, now: i64) -> Result<ScheduleRecord> {
    let t = timing(s.interval_secs, &s.cron)?;
    check_keep("keep_last", s.keep_last)?;
    check_keep("keep_daily", s.keep_daily)?;
    check_keep("keep_weekly", s.keep_weekly)?;
    Ok(ScheduleRecord {
        interval_secs: s.interval_secs,
        cron: s.cron.trim().to_owned(),
        keep_last: s.keep_last,
        keep_daily: s.keep_daily,
        keep_weekly: s.keep_weekly,
        next_run_at: next_slot(&t, now, now)?,
        ..Default::default()
    })
}

/// The retention rules of a schedule, to notice a change.
fn rules(s: &ScheduleRecord) -> (u32, u32, u32) {
    (s.keep_last, s.keep_daily, s.keep_weekly)
}

/// `<volume>-<yyyymmdd-hhmmss>`, then `-2`, `-3`, ... until `taken` does
/// not hold it; the volume name is shortened to keep it a valid name.
fn snapshot_name(volume: &str, at: i64, taken: &HashSet<&str>) -> String {
    let stamp = DateTime::<Utc>::from_timestamp(at, 0)
        .map(|t| t.format("%Y%m%d-%H%M%S").to_string())
        .unwrap_or_else(|| at.to_string());
    let candidate = |n: usize| {
        let suffix = if n == 1 {
            format!("-{stamp}")
        } else {
            format!("-{stamp}-{n}")
        };
        let head: String = volume
            .chars()
            .take(MAX_NAME.saturating_sub(suffix.len()))
            .collect();
        format!("{head}{suffix}")
    };
    // One of the first `taken.len() + 1` candidates is free.
    (1..=taken.len() + 1)
        .map(candidate)
        .find(|c| !taken.contains(c.as_str()))
        .unwrap_or_else(|| candidate(taken.len() + 2))
}

/// Days since the epoch (UTC).
fn day_of(at: i64) -> i64 {
    at.div_euclid(86_400)
}

/// ISO weeks (Monday to Sunday) since the epoch: 1970-01-01 was a
/// Thursday, so Monday 1969-12-29 starts week 0.
fn iso_week_of(at: i64) -> i64 {
    (day_of(at) + 3).div_euclid(7)
}

/// Ids of the first snapshot of each of the first `n` periods in
/// `newest_first` (sorted newest first, so equal periods are adjacent).
fn newest_per_period(newest_first: &[(u64, i64)], n: u32, period: fn(i64) -> i64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut last = None;
    for &(id, at) in newest_first {
        if out.len() >= n as usize {
            break;
        }
        let p = period(at);
        if last != Some(p) {
            out.push(id);
            last = Some(p);
        }
    }
    out
}

/// Which snapshots (`(id, created_at)`) retention keeps: the newest
/// `keep_last`, plus the newest of each of the newest `keep_daily` UTC days
/// that have one, plus the newest of each of the newest `keep_weekly` ISO
/// weeks that have one. All zero: every one. Newest = latest `created_at`,
/// then highest id.
pub(crate) fn retained(
    snaps: &[(u64, i64)],
    keep_last: u32,
    keep_daily: u32,
    keep_weekly: u32,
) -> BTreeSet<u64> {
    if keep_last == 0 && keep_daily == 0 && keep_weekly == 0 {
        return snaps.iter().map(|s| s.0).collect();
    }
    let mut newest_first = snaps.to_vec();
    newest_first.sort_by_key(|&(id, at)| std::cmp::Reverse((at, id)));
    let mut keep: BTreeSet<u64> = newest_first
        .iter()
        .take(keep_last as usize)
        .map(|s| s.0)
        .collect();
    keep.extend(newest_per_period(&newest_first, keep_daily, day_of));
    keep.extend(newest_per_period(&newest_first, keep_weekly, iso_week_of));
    keep
}

/// The scheduled snapshots of volume `vol` that retention deletes now:
/// COMPLETE ones not [`retained`], and FAILED ones older than the newest
/// COMPLETE one. Never a snapshot that is not `scheduled`.
pub(crate) fn unwanted(snaps: &[SnapshotRecord], vol: u64, s: &ScheduleRecord) -> Vec<u64> {
    let mine: Vec<&SnapshotRecord> = snaps
        .iter()
        .filter(|x| x.volume_id == vol && x.scheduled)
        .collect();
    let complete: Vec<(u64, i64)> = mine
        .iter()
        .filter(|x| x.state == SnapshotState::Complete)
        .map(|x| (x.id, x.created_at))
        .collect();
    let keep = retained(&complete, s.keep_last, s.keep_daily, s.keep_weekly);
    let newest = complete.iter().map(|c| c.0).max().unwrap_or(0);
    mine.iter()
        .filter(|x| match x.state {
            SnapshotState::Complete => !keep.contains(&x.id),
            SnapshotState::Failed => x.id < newest,
            _ => false,
        })
        .map(|x| x.id)
        .collect()
}

/// The newest scheduled snapshot of `v` when its last run did not record
/// it (the control service stopped between the point and the record): one
/// newer than `last_snapshot_id` whose point was taken, at or after
/// `last_run_at`. Every run sets `last_run_at` before its snapshot, so only
/// the latest run's snapshot can match.
pub(crate) fn unrecorded(snaps: &[SnapshotRecord], v: &VolumeRecord) -> Option<u64> {
    let s = v.schedule.as_ref().filter(|s| s.last_run_at > 0)?;
    snaps
        .iter()
        .filter(|x| x.volume_id == v.id && x.scheduled && x.point_taken)
        .filter(|x| x.created_at >= s.last_run_at)
        .map(|x| x.id)
        .max()
        .filter(|id| *id > s.last_snapshot_id)
}

/// A run under way: the snapshot it takes, the slot that came due, and
/// when it ran.
struct Run {
    req: pb::CreateSnapshotRequest,
    due: i64,
    at: i64,
}

/// Why a due run waits.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    /// A snapshot of the volume is still uploading (never two at once).
    Upload(u64),
    /// The volume cannot be snapshotted now.
    Busy(String),
}

/// Why a due run of `v` must wait (None: it can run now).
fn wait_reason(v: &VolumeRecord, snaps: &[SnapshotRecord]) -> Option<Wait> {
    if let Some(s) = snaps
        .iter()
        .find(|s| s.volume_id == v.id && s.state == SnapshotState::Creating)
    {
        return Some(Wait::Upload(s.id));
    }
    if v.state != VolumeState::Available {
        return Some(Wait::Busy(format!("volume is {:?}", v.state)));
    }
    v.source
        .as_ref()
        .filter(|s| !s.hydrated)
        .map(|s| Wait::Busy(format!("volume still loads snapshot {}", s.snapshot_id)))
}

/// `t` for people and logs.
fn time_text(t: i64) -> String {
    DateTime::<Utc>::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

impl Control {
    /// Sets (or, with no schedule, clears) a volume's snapshot schedule and
    /// retention. The first run is one interval from now, or the cron
    /// expression's next match. The last run's figures of a replaced
    /// schedule are kept; its last error is not.
    pub async fn set_schedule(&self, r: pb::SetScheduleRequest) -> Result<VolumeRecord> {
        let vref = r
            .volume
            .ok_or_else(|| ControlError::Invalid("name the volume whose schedule to set".into()))?;
        let wanted = r
            .schedule
            .as_ref()
            .map(|s| new_record(s, now_unix()))
            .transpose()?;
        let _runs = self.schedule_runs.lock().await;
        let _op = self.ops.lock().await;
        let mut v = self.find(&vref)?;
        if v.state == VolumeState::Deleting {
            return Err(ControlError::Precondition(format!(
                "volume {} is being deleted; it can have no schedule",
                v.id
            )));
        }
        v.schedule = wanted.map(|mut s| {
            if let Some(old) = &v.schedule {
                s.last_run_at = old.last_run_at;
                s.last_snapshot_id = old.last_snapshot_id;
            }
            s
        });
        self.save(&v)?;
        match &v.schedule {
            Some(s) => tracing::info!(
                volume = v.id,
                interval_secs = s.interval_secs,
                cron = %s.cron,
                keep_last = s.keep_last,
                keep_daily = s.keep_daily,
                keep_weekly = s.keep_weekly,
                next_run = %time_text(s.next_run_at),
                "snapshot schedule set"
            ),
            None => tracing::info!(volume = v.id, "snapshot schedule cleared"),
        }
        Ok(v)
    }

    /// One tick of every schedule: due runs, then retention (see the
    /// module's documentation). Errors are logged and recorded in the
    /// schedule's `last_error`; nothing here fails the poll loop.
    pub async fn run_schedules(&self) {
        if let Err(e) = self.schedules_tick(now_unix()).await {
            tracing::warn!("snapshot schedules: {e}");
        }
    }

    async fn schedules_tick(&self, now: i64) -> Result<()> {
        let mut vols = self.scheduled_volumes()?;
        if vols.is_empty() {
            return Ok(());
        }
        let due: Vec<u64> = vols
            .iter()
            .filter(|v| v.schedule.as_ref().is_some_and(|s| s.next_run_at <= now))
            .map(|v| v.id)
            .collect();
        for id in &due {
            self.run_due(*id, now).await;
        }
        if !due.is_empty() {
            vols = self.scheduled_volumes()?;
        }
        let mut by_volume: HashMap<u64, Vec<SnapshotRecord>> = HashMap::new();
        for x in self.snapshots()?.into_iter().filter(|x| x.scheduled) {
            by_volume.entry(x.volume_id).or_default().push(x);
        }
        for v in &vols {
            let snaps = by_volume.get(&v.id).map_or(&[][..], Vec::as_slice);
            if let Some(id) = unrecorded(snaps, v) {
                if let Err(e) = self.adopt(v.id, id).await {
                    tracing::warn!(volume = v.id, "recording scheduled snapshot {id}: {e}");
                }
            }
            self.apply_retention(v, snaps).await;
        }
        Ok(())
    }

    fn scheduled_volumes(&self) -> Result<Vec<VolumeRecord>> {
        Ok(self
            .volumes()?
            .into_iter()
            .filter(|v| v.schedule.is_some())
            .collect())
    }

    /// Records snapshot `snap` as volume `id`'s last scheduled one (its run
    /// was cut short by a crash after the point was taken).
    async fn adopt(&self, id: u64, snap: u64) -> Result<()> {
        let _op = self.ops.lock().await;
        let Some(mut v) = get_json::<VolumeRecord>(&*self.store, Table::Volumes, &key(id))? else {
            return Ok(());
        };
        match v.schedule.as_mut() {
            Some(s) if s.last_snapshot_id < snap => {
                tracing::info!(
                    volume = id,
                    snapshot = snap,
                    "recording a scheduled snapshot taken before a restart"
                );
                s.last_snapshot_id = snap;
                self.save(&v)
            }
            _ => Ok(()),
        }
    }

    /// Runs volume `id`'s due schedule: the next slot persisted first, then
    /// the snapshot, then its outcome.
    async fn run_due(&self, id: u64, now: i64) {
        let _runs = self.schedule_runs.lock().await;
        let run = match self.start_run(id, now).await {
            Ok(Some(run)) => run,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(volume = id, "scheduled snapshot not started: {e}");
                return;
            }
        };
        let name = run.req.name.clone();
        let taken = self.take_snapshot(run.req.clone(), true).await;
        match &taken {
            Ok(s) => tracing::info!(
                volume = id,
                snapshot = s.id,
                name,
                "scheduled snapshot taken"
            ),
            Err(e) => tracing::warn!(volume = id, name, "scheduled snapshot failed: {e}"),
        }
        if let Err(e) = self.finish_run(id, &run, taken).await {
            tracing::warn!(volume = id, "recording a scheduled snapshot: {e}");
        }
    }

    /// Under the lock: re-reads the volume, and unless the run must wait,
    /// persists the next slot and the run time and returns the snapshot to
    /// take.
    async fn start_run(&self, id: u64, now: i64) -> Result<Option<Run>> {
        let _op = self.ops.lock().await;
        let Some(mut v) = get_json::<VolumeRecord>(&*self.store, Table::Volumes, &key(id))? else {
            return Ok(None);
        };
        if v.schedule.as_ref().is_none_or(|s| s.next_run_at > now) {
            return Ok(None);
        }
        let snaps = self.snapshots()?;
        if let Some(why) = wait_reason(&v, &snaps) {
            tracing::debug!(volume = id, "scheduled snapshot waits: {why:?}");
            self.note_wait(&mut v, why)?;
            return Ok(None);
        }
        let tenant = v.tenant.clone();
        let taken: HashSet<&str> = snaps
            .iter()
            .filter(|x| x.tenant == tenant)
            .map(|x| x.name.as_str())
            .collect();
        let name = snapshot_name(&v.name, now, &taken);
        let Some(s) = v.schedule.as_mut() else {
            return Ok(None);
        };
        let due = s.next_run_at;
        s.next_run_at = match timing(s.interval_secs, &s.cron)
            .and_then(|t| next_slot(&t, s.next_run_at, now))
        {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(volume = id, "schedule has no next run: {e}");
                s.last_error = format!("the schedule has no next run: {e}");
                NEVER
            }
        };
        s.last_run_at = now;
        self.save(&v)?;
        Ok(Some(Run {
            req: pb::CreateSnapshotRequest {
                volume: Some(pb::VolumeRef {
                    id,
                    ..Default::default()
                }),
                name,
                destination: String::new(),
            },
            due,
            at: now,
        }))
    }

    /// Shows why a due run waits for a busy volume (written once, not on
    /// every tick). An upload in progress is the normal case: not shown.
    fn note_wait(&self, v: &mut VolumeRecord, why: Wait) -> Result<()> {
        let Wait::Busy(why) = why else {
            return Ok(());
        };
        let note = format!("{WAITING}{why}");
        match v.schedule.as_mut() {
            Some(s) if s.last_error != note => {
                s.last_error = note;
                self.save(v)
            }
            _ => Ok(()),
        }
    }

    /// Records a run's snapshot or error (if the volume still has a
    /// schedule). A run refused because the volume turned busy after it
    /// was checked (a manual snapshot or a resize started in between) made
    /// no snapshot record: its slot is put back, and it waits and runs as
    /// usual.
    async fn finish_run(&self, id: u64, run: &Run, taken: Result<SnapshotRecord>) -> Result<()> {
        let _op = self.ops.lock().await;
        let Some(mut v) = get_json::<VolumeRecord>(&*self.store, Table::Volumes, &key(id))? else {
            return Ok(());
        };
        if v.schedule.is_none() {
            return Ok(());
        }
        let busy = match &taken {
            Err(ControlError::Precondition(_)) => wait_reason(&v, &self.snapshots()?).is_some(),
            _ => false,
        };
        let Some(s) = v.schedule.as_mut() else {
            return Ok(());
        };
        match taken {
            Ok(snap) => {
                s.last_snapshot_id = snap.id;
                s.last_error.clear();
            }
            Err(e) if busy => {
                tracing::info!(
                    volume = id,
                    "scheduled snapshot put back until the volume is free: {e}"
                );
                s.next_run_at = run.due;
            }
            Err(e) => {
                s.last_error = format!("snapshot of {} failed: {e}", time_text(run.at));
            }
        }
        self.save(&v)
    }

    /// Deletes what retention does not keep of `v`'s scheduled snapshots
    /// (`snaps`: its scheduled snapshots' records, read this tick).
    async fn apply_retention(&self, v: &VolumeRecord, snaps: &[SnapshotRecord]) {
        let Some(s) = &v.schedule else { return };
        let doomed = unwanted(snaps, v.id, s);
        if doomed.is_empty() && !s.last_error.starts_with(RETENTION) {
            return;
        }
        let mut refused = Vec::new();
        for id in doomed {
            // The rules may have changed since this tick read them: the
            // next tick decides with the new ones.
            match get_json::<VolumeRecord>(&*self.store, Table::Volumes, &key(v.id)) {
                Ok(Some(cur)) if cur.schedule.as_ref().map(rules) == Some(rules(s)) => {}
                _ => return,
            }
            match self
                .delete_snapshot(&pb::SnapshotRef {
                    id,
                    ..Default::default()
                })
                .await
            {
                Ok(()) => tracing::info!(
                    volume = v.id,
                    snapshot = id,
                    "retention deleted a scheduled snapshot"
                ),
                Err(ControlError::NotFound(_)) => {}
                Err(e) => {
                    if let Some(why) = self.still_there(id, e) {
                        refused.push(why);
                    }
                }
            }
        }
        if let Err(e) = self.note_retention(v.id, &refused).await {
            tracing::warn!(volume = v.id, "recording retention: {e}");
        }
    }

    /// After a failed delete of snapshot `id`: why it is kept for now, or
    /// None if its record is gone all the same (the failure came after,
    /// from a sweep, which stays owed and is retried by the poll loop).
    fn still_there(&self, id: u64, e: ControlError) -> Option<String> {
        match get_json::<SnapshotRecord>(&*self.store, Table::Snapshots, &snapshot_key(id)) {
            Ok(None) => {
                tracing::info!(snapshot = id, "retention deleted a scheduled snapshot; {e}");
                None
            }
            _ => Some(format!("snapshot {id} kept for now: {e}")),
        }
    }

    /// Shows retention's refusals in `last_error` (logged once, when they
    /// change), or clears a retention error once none is left.
    async fn note_retention(&self, id: u64, refused: &[String]) -> Result<()> {
        let _op = self.ops.lock().await;
        let Some(mut v) = get_json::<VolumeRecord>(&*self.store, Table::Volumes, &key(id))? else {
            return Ok(());
        };
        let Some(s) = v.schedule.as_mut() else {
            return Ok(());
        };
        let note = if refused.is_empty() {
            if !s.last_error.starts_with(RETENTION) {
                return Ok(());
            }
            String::new()
        } else {
            format!("{RETENTION}{}", refused.join("; "))
        };
        if s.last_error == note {
            return Ok(());
        }
        if !note.is_empty() {
            tracing::warn!(volume = id, "{note} (retried on every tick)");
        }
        s.last_error = note;
        self.save(&v)
    }
}

#[cfg(test)]
#[path = "schedules_tests.rs"]
mod tests;
