//! Unit tests of schedules: validation, slots, names, retention (pure), and
//! runs against a real store with no storage server.

use std::sync::Arc;

use clap::Parser;
use serde_json::json;

use super::*;
use crate::store::{put_json, RedbStore};

const DAY: i64 = 86_400;
/// 2024-01-01T00:00:00Z, a Monday.
const MON: i64 = 1_704_067_200;

fn sched(interval_secs: u64, cron: &str) -> pb::Schedule {
    pb::Schedule {
        interval_secs,
        cron: cron.into(),
        ..Default::default()
    }
}

fn invalid(r: Result<ScheduleRecord>, want: &str) {
    match r {
        Err(ControlError::Invalid(m)) => assert!(m.contains(want), "{m:?} should say {want:?}"),
        other => panic!("expected INVALID_ARGUMENT mentioning {want:?}, got {other:?}"),
    }
}

#[test]
fn validation() {
    invalid(new_record(&sched(0, ""), MON), "neither is set");
    invalid(new_record(&sched(0, "   "), MON), "neither is set");
    invalid(new_record(&sched(60, "0 3 * * *"), MON), "not both");
    invalid(
        new_record(&sched(MAX_INTERVAL_SECS + 1, ""), MON),
        "longer than one year",
    );
    invalid(new_record(&sched(0, "not cron"), MON), "5 fields");
    invalid(
        new_record(&sched(0, "0 0 3 * * *"), MON),
        "not a valid expression",
    );
    invalid(
        new_record(&sched(0, "61 * * * *"), MON),
        "not a valid expression",
    );
    invalid(new_record(&sched(0, "0 0 30 2 *"), MON), "no match");
    for (i, what) in ["keep_last", "keep_daily", "keep_weekly"]
        .iter()
        .enumerate()
    {
        let mut s = sched(60, "");
        let n = MAX_KEEP + 1;
        match i {
            0 => s.keep_last = n,
            1 => s.keep_daily = n,
            _ => s.keep_weekly = n,
        }
        invalid(new_record(&s, MON), what);
    }

    let mut s = sched(MAX_INTERVAL_SECS, "");
    s.keep_last = MAX_KEEP;
    s.next_run_at = 5; // answers-only fields are ignored
    s.last_snapshot_id = 9;
    let r = new_record(&s, MON).unwrap();
    assert_eq!(r.next_run_at, MON + MAX_INTERVAL_SECS as i64);
    assert_eq!(
        (r.keep_last, r.last_snapshot_id, r.last_run_at),
        (MAX_KEEP, 0, 0)
    );

    let r = new_record(&sched(0, " 0 3 * * * "), MON + 10).unwrap();
    assert_eq!(r.cron, "0 3 * * *");
    assert_eq!(r.next_run_at, MON + 3 * 3600);
    // @daily and names work too; all in UTC.
    let r = new_record(&sched(0, "@daily"), MON + 10).unwrap();
    assert_eq!(r.next_run_at, MON + DAY);
    let r = new_record(&sched(0, "30 4 * * sat"), MON).unwrap();
    assert_eq!(r.next_run_at, MON + 5 * DAY + 4 * 3600 + 1800);
}

#[test]
fn slots() {
    let every = |n| Timing::Every(n);
    // Set: one interval from now.
    assert_eq!(next_slot(&every(10), MON, MON).unwrap(), MON + 10);
    // On time, or a little late: the phase is kept.
    assert_eq!(next_slot(&every(10), MON, MON).unwrap(), MON + 10);
    assert_eq!(next_slot(&every(10), MON, MON + 3).unwrap(), MON + 10);
    assert_eq!(next_slot(&every(10), MON, MON + 10).unwrap(), MON + 20);
    // Missed slots (control was down) collapse: the next is after now.
    assert_eq!(
        next_slot(&every(10), MON, MON + 1_005).unwrap(),
        MON + 1_010
    );
    assert_eq!(next_slot(&every(1), MON, MON + 7).unwrap(), MON + 8);
    let cron = Timing::Cron(Box::new(parse_cron("*/15 * * * *").unwrap()));
    // Strictly after now, even when now matches.
    assert_eq!(next_slot(&cron, MON, MON).unwrap(), MON + 900);
    assert_eq!(
        next_slot(&cron, MON, MON + 7 * DAY + 1).unwrap(),
        MON + 7 * DAY + 900
    );
    for now in [MON, MON + 1, MON + 899, MON + 5 * DAY + 17] {
        for t in [&every(7), &cron] {
            assert!(next_slot(t, MON, now).unwrap() > now);
        }
    }
}

#[test]
fn names() {
    let none = HashSet::new();
    assert_eq!(
        snapshot_name("db1", MON + 3_723, &none),
        "db1-20240101-010203"
    );
    let taken: HashSet<&str> = ["db1-20240101-000000", "db1-20240101-000000-2"].into();
    assert_eq!(snapshot_name("db1", MON, &taken), "db1-20240101-000000-3");
    let long = "v".repeat(63);
    let n = snapshot_name(&long, MON, &none);
    assert_eq!(n.len(), 63);
    assert!(n.ends_with("-20240101-000000"));
    let taken: HashSet<&str> = [n.as_str()].into();
    let n2 = snapshot_name(&long, MON, &taken);
    assert_eq!(n2.len(), 63);
    assert!(n2.ends_with("-20240101-000000-2"), "{n2}");
    for n in [&n, &n2] {
        assert!(
            crate::volumes::valid_name(n),
            "{n} is a valid snapshot name"
        );
    }
}

#[test]
fn iso_weeks_match_chrono() {
    use chrono::Datelike;
    let mut prev: Option<(i64, chrono::IsoWeek)> = None;
    // 2019-12-25 to 2027-01-10: years with 52 and 53 ISO weeks.
    for d in -1_468..1_200 {
        let at = MON + d * DAY + 12 * 3600;
        let w = DateTime::<Utc>::from_timestamp(at, 0).unwrap().iso_week();
        let mine = iso_week_of(at);
        if let Some((pm, pw)) = prev {
            assert_eq!(pm == mine, pw == w, "day {d}: {w:?} vs {pw:?}");
        }
        prev = Some((mine, w));
    }
    // Sunday 23:59:59 and Monday 00:00:00 are in different weeks.
    assert_ne!(iso_week_of(MON - 1), iso_week_of(MON));
    assert_eq!(iso_week_of(MON), iso_week_of(MON + 7 * DAY - 1));
}

fn ids(v: &[u64]) -> BTreeSet<u64> {
    v.iter().copied().collect()
}

#[test]
fn retention_rules() {
    // Two a day for ten days (09:00 and 21:00), ids in time order.
    let snaps: Vec<(u64, i64)> = (0..20u64)
        .map(|i| {
            (
                i + 1,
                MON + (i / 2) as i64 * DAY + 9 * 3600 + (i % 2) as i64 * 12 * 3600,
            )
        })
        .collect();
    assert_eq!(retained(&snaps, 0, 0, 0).len(), 20, "all zero keeps all");
    assert!(retained(&[], 3, 2, 1).is_empty());
    assert_eq!(retained(&snaps, 3, 0, 0), ids(&[18, 19, 20]));
    assert_eq!(retained(&snaps, 100, 0, 0).len(), 20);
    // The newest of each of the newest 3 days: the evening ones.
    assert_eq!(retained(&snaps, 0, 3, 0), ids(&[16, 18, 20]));
    // Weeks: days 0-6 are week 1, days 7-9 week 2.
    assert_eq!(retained(&snaps, 0, 0, 1), ids(&[20]));
    assert_eq!(retained(&snaps, 0, 0, 2), ids(&[14, 20]));
    assert_eq!(retained(&snaps, 0, 0, 5), ids(&[14, 20]));
    // Rules add up.
    assert_eq!(retained(&snaps, 1, 2, 2), ids(&[14, 18, 20]));
    // Days with no snapshot do not count: gaps are skipped.
    let sparse = [(1, MON), (2, MON + 30 * DAY), (3, MON + 31 * DAY)];
    assert_eq!(retained(&sparse, 0, 3, 0), ids(&[1, 2, 3]));
    // Newest is by time, then id, whatever the input order.
    let shuffled = [(5, MON + 10), (9, MON + 5), (7, MON + 10)];
    assert_eq!(retained(&shuffled, 1, 0, 0), ids(&[7]));
    assert_eq!(retained(&shuffled, 2, 0, 0), ids(&[5, 7]));
}

fn snap(id: u64, vol: u64, state: &str, scheduled: bool, at: i64) -> SnapshotRecord {
    serde_json::from_value(json!({
        "id": id, "name": format!("s{id}"), "tenant": "default", "volume_id": vol,
        "volume_name": format!("v{vol}"), "destination": "local", "parent_id": 0,
        "state": state, "size_bytes": 1 << 20, "created_at": at, "primary": "s1",
        "epoch": 1, "scheduled": scheduled,
    }))
    .unwrap()
}

#[test]
fn unwanted_snapshots() {
    let keep2 = ScheduleRecord {
        interval_secs: 60,
        keep_last: 2,
        ..Default::default()
    };
    let snaps = vec![
        snap(1, 1, "COMPLETE", true, MON),
        snap(2, 1, "COMPLETE", false, MON + 1),
        snap(3, 1, "FAILED", true, MON + 2),
        snap(4, 1, "COMPLETE", true, MON + 3),
        snap(5, 1, "FAILED", false, MON + 4),
        snap(6, 1, "COMPLETE", true, MON + 5),
        snap(7, 1, "DELETING", true, MON + 6),
        snap(8, 1, "FAILED", true, MON + 7),
        snap(9, 1, "CREATING", true, MON + 8),
        snap(10, 2, "COMPLETE", true, MON),
    ];
    // 1 is beyond the newest 2; 3 failed before 6 completed; 8 failed
    // after the newest complete one: kept until a newer one completes.
    // Manual (2, 5), other states and other volumes are never touched.
    assert_eq!(unwanted(&snaps, 1, &keep2), [1, 3]);
    let all = ScheduleRecord {
        interval_secs: 60,
        ..Default::default()
    };
    assert_eq!(
        unwanted(&snaps, 1, &all),
        [3],
        "keep-all still drops failed ones"
    );
    assert!(unwanted(&snaps, 2, &keep2).is_empty());
    assert!(unwanted(&snaps, 3, &keep2).is_empty());
}

/// A control service on a fresh store, no storage server.
fn control(dir: &std::path::Path) -> Control {
    let args = crate::Args::parse_from(["basalt-control", "--state-dir", dir.to_str().unwrap()]);
    let config = crate::Config::try_from(args).unwrap();
    let store = RedbStore::open(&dir.join("control.redb")).unwrap();
    let c = Control::new(config, Arc::new(store));
    c.record_flag_destinations().unwrap();
    c
}

fn volume(id: u64, state: &str) -> VolumeRecord {
    serde_json::from_value(json!({
        "id": id, "name": format!("v{id}"), "tenant": "default", "size_bytes": 1 << 30,
        "state": state, "copies": [{"server_id": "s1"}], "epoch": 1,
        "attachment": null, "created_at": MON,
    }))
    .unwrap()
}

fn set_req(id: u64, s: Option<pb::Schedule>) -> pb::SetScheduleRequest {
    pb::SetScheduleRequest {
        volume: Some(pb::VolumeRef {
            id,
            ..Default::default()
        }),
        schedule: s,
    }
}

fn stored(c: &Control, id: u64) -> VolumeRecord {
    c.find(&pb::VolumeRef {
        id,
        ..Default::default()
    })
    .unwrap()
}

fn put_snapshot(c: &Control, s: &SnapshotRecord) {
    c.store
        .apply(vec![put_json(Table::Snapshots, s.key(), s)])
        .unwrap();
}

#[tokio::test]
async fn set_show_clear() {
    let d = tempfile::tempdir().unwrap();
    let c = control(d.path());
    c.save(&volume(1, "AVAILABLE")).unwrap();
    let before = now_unix();
    let mut s = sched(30, "");
    s.keep_last = 2;
    let v = c.set_schedule(set_req(1, Some(s.clone()))).await.unwrap();
    let r = v.schedule.clone().unwrap();
    assert!(
        (before + 30..=now_unix() + 30).contains(&r.next_run_at),
        "{r:?}"
    );
    assert_eq!(stored(&c, 1), v, "persisted");
    assert_eq!(schedule_pb(&r).keep_last, 2);

    // Refused: nothing changes.
    assert!(c
        .set_schedule(set_req(1, Some(sched(0, "nope"))))
        .await
        .is_err());
    assert!(c
        .set_schedule(set_req(1, Some(sched(5, "* * * * *"))))
        .await
        .is_err());
    assert_eq!(stored(&c, 1), v);
    assert!(matches!(
        c.set_schedule(set_req(7, Some(sched(5, "")))).await,
        Err(ControlError::NotFound(_))
    ));
    assert!(matches!(
        c.set_schedule(pb::SetScheduleRequest::default()).await,
        Err(ControlError::Invalid(_))
    ));

    // A replacement keeps the last run's figures, not its error.
    let mut cur = stored(&c, 1);
    if let Some(s) = cur.schedule.as_mut() {
        s.last_snapshot_id = 42;
        s.last_run_at = MON;
        s.last_error = "old".into();
    }
    c.save(&cur).unwrap();
    let v = c
        .set_schedule(set_req(1, Some(sched(0, "0 3 * * *"))))
        .await
        .unwrap();
    let r = v.schedule.unwrap();
    assert_eq!(
        (r.last_snapshot_id, r.last_run_at, r.last_error.as_str()),
        (42, MON, "")
    );
    assert_eq!(
        (r.interval_secs, r.cron.as_str(), r.keep_last),
        (0, "0 3 * * *", 0)
    );
    assert_eq!(r.next_run_at.rem_euclid(DAY), 3 * 3600);

    let v = c.set_schedule(set_req(1, None)).await.unwrap();
    assert!(v.schedule.is_none());
    assert!(stored(&c, 1).schedule.is_none());

    c.save(&volume(2, "DELETING")).unwrap();
    assert!(matches!(
        c.set_schedule(set_req(2, Some(sched(5, "")))).await,
        Err(ControlError::Precondition(_))
    ));
}

fn due_schedule(keep_last: u32) -> ScheduleRecord {
    ScheduleRecord {
        interval_secs: 10,
        keep_last,
        next_run_at: now_unix() - 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_due_run_waits_for_a_busy_volume_or_an_upload() {
    let d = tempfile::tempdir().unwrap();
    let c = control(d.path());
    let mut v = volume(1, "RESIZING");
    v.schedule = Some(due_schedule(0));
    c.save(&v).unwrap();
    c.run_schedules().await;
    let s = stored(&c, 1).schedule.unwrap();
    assert_eq!(
        s.next_run_at,
        v.schedule.as_ref().unwrap().next_run_at,
        "not advanced"
    );
    assert_eq!(s.last_run_at, 0);
    assert!(s.last_error.contains("Resizing"), "{s:?}");

    // An upload in progress: waits, not shown.
    v.state = VolumeState::Available;
    c.save(&v).unwrap();
    put_snapshot(&c, &snap(5, 1, "CREATING", true, MON));
    c.run_schedules().await;
    assert_eq!(stored(&c, 1), v, "nothing written while an upload runs");
    assert_eq!(c.snapshots().unwrap().len(), 1, "no second snapshot");
}

#[tokio::test]
async fn a_run_persists_its_next_slot_then_records_its_error() {
    let d = tempfile::tempdir().unwrap();
    let c = control(d.path());
    let mut v = volume(1, "AVAILABLE");
    v.schedule = Some(due_schedule(0));
    let due = v.schedule.as_ref().unwrap().next_run_at;
    c.save(&v).unwrap();
    let before = now_unix();
    c.run_schedules().await;
    let s = stored(&c, 1).schedule.unwrap();
    // No storage server s1: the point cannot be taken.
    assert!(s.last_error.contains("failed"), "{s:?}");
    assert!(s.last_run_at >= before);
    assert!(
        s.next_run_at > s.last_run_at && (s.next_run_at - due) % 10 == 0,
        "{s:?}"
    );
    assert_eq!(s.last_snapshot_id, 0);
    assert!(c.snapshots().unwrap().len() <= 1, "one attempt");
    // Not due any more: the next tick does nothing.
    c.run_schedules().await;
    assert_eq!(stored(&c, 1).schedule.unwrap(), s);
}

#[tokio::test]
async fn retention_deletes_only_unwanted_scheduled_snapshots() {
    let d = tempfile::tempdir().unwrap();
    let c = control(d.path());
    let mut v = volume(1, "AVAILABLE");
    v.schedule = Some(ScheduleRecord {
        next_run_at: now_unix() + 3600,
        ..due_schedule(1)
    });
    c.save(&v).unwrap();
    for s in [
        snap(1, 1, "COMPLETE", true, MON),
        snap(2, 1, "COMPLETE", false, MON + 1),
        snap(3, 1, "FAILED", true, MON + 2),
        snap(4, 1, "COMPLETE", true, MON + 3),
        snap(6, 1, "COMPLETE", true, MON + 5),
    ] {
        put_snapshot(&c, &s);
    }
    // Volume 9 still loads snapshot 4: that delete is refused, and retried.
    let mut loader = volume(9, "AVAILABLE");
    loader.source = Some(SourceRecord {
        snapshot_id: 4,
        ..Default::default()
    });
    c.save(&loader).unwrap();
    c.run_schedules().await;
    let left: Vec<u64> = c.snapshots().unwrap().iter().map(|s| s.id).collect();
    assert_eq!(left, [2, 4, 6]);
    let e = stored(&c, 1).schedule.unwrap().last_error;
    assert!(e.starts_with(RETENTION) && e.contains("snapshot 4"), "{e}");

    if let Some(src) = loader.source.as_mut() {
        src.hydrated = true;
    }
    c.save(&loader).unwrap();
    c.run_schedules().await;
    let left: Vec<u64> = c.snapshots().unwrap().iter().map(|s| s.id).collect();
    assert_eq!(left, [2, 6], "the manual snapshot stays");
    assert_eq!(stored(&c, 1).schedule.unwrap().last_error, "", "cleared");

    // Cleared schedule: its snapshots are kept.
    c.set_schedule(set_req(1, None)).await.unwrap();
    put_snapshot(&c, &snap(7, 1, "COMPLETE", true, MON + 9));
    c.run_schedules().await;
    assert_eq!(c.snapshots().unwrap().len(), 3);
}

#[test]
fn a_snapshot_whose_run_was_cut_short_is_recognised() {
    let taken = |id, vol, scheduled, at| SnapshotRecord {
        point_taken: true,
        ..snap(id, vol, "COMPLETE", scheduled, at)
    };
    let mut v = volume(1, "AVAILABLE");
    v.schedule = Some(ScheduleRecord {
        interval_secs: 10,
        last_run_at: MON + 100,
        last_snapshot_id: 4,
        ..Default::default()
    });
    let mut snaps = vec![
        taken(4, 1, true, MON + 90),
        taken(6, 1, false, MON + 101),
        taken(7, 2, true, MON + 101),
        snap(9, 1, "CREATING", true, MON + 100),
    ];
    assert_eq!(
        unrecorded(&snaps, &v),
        None,
        "manual ones, other volumes' ones and points never taken do not count"
    );
    snaps.push(taken(5, 1, true, MON + 99));
    assert_eq!(unrecorded(&snaps, &v), None, "taken before the last run");
    snaps.push(taken(8, 1, true, MON + 100));
    assert_eq!(unrecorded(&snaps, &v), Some(8));
    if let Some(s) = v.schedule.as_mut() {
        s.last_snapshot_id = 8;
    }
    assert_eq!(unrecorded(&snaps, &v), None);
    // A schedule that never ran adopts nothing (older scheduled snapshots
    // belong to an earlier schedule).
    if let Some(s) = v.schedule.as_mut() {
        *s = ScheduleRecord {
            interval_secs: 10,
            ..Default::default()
        };
    }
    assert_eq!(unrecorded(&snaps, &v), None);
}

#[tokio::test]
async fn a_run_that_raced_a_manual_snapshot_is_put_back() {
    let d = tempfile::tempdir().unwrap();
    let c = control(d.path());
    let mut v = volume(1, "AVAILABLE");
    v.schedule = Some(ScheduleRecord {
        next_run_at: MON + 20,
        ..due_schedule(0)
    });
    c.save(&v).unwrap();
    let run = |due| Run {
        req: pb::CreateSnapshotRequest::default(),
        due,
        at: MON + 21,
    };
    let refused = || {
        Err(ControlError::Precondition(
            "snapshot 5 is still uploading".into(),
        ))
    };
    // Refused, and the volume is busy now: the slot is put back.
    put_snapshot(&c, &snap(5, 1, "CREATING", false, MON + 21));
    c.finish_run(1, &run(MON + 10), refused()).await.unwrap();
    let s = stored(&c, 1).schedule.unwrap();
    assert_eq!((s.next_run_at, s.last_error.as_str()), (MON + 10, ""));
    // Refused, the volume free again: a real failure, the slot used up.
    put_snapshot(&c, &snap(5, 1, "COMPLETE", false, MON + 21));
    c.finish_run(1, &run(MON), refused()).await.unwrap();
    let s = stored(&c, 1).schedule.unwrap();
    assert_eq!(s.next_run_at, MON + 10);
    assert!(s.last_error.contains("still uploading"), "{s:?}");
    // Success records the snapshot and clears the error.
    let taken = snap(6, 1, "CREATING", true, MON + 22);
    c.finish_run(1, &run(MON), Ok(taken)).await.unwrap();
    let s = stored(&c, 1).schedule.unwrap();
    assert_eq!((s.last_snapshot_id, s.last_error.as_str()), (6, ""));
}
