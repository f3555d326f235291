//! Snapshot schedules end to end, through the CLI: a volume snapshotted
//! every 2 s with `--keep-last 2` (older scheduled snapshots deleted, a
//! manual one never), the newest restored byte for byte, the schedule
//! running again after a control restart, bad input refused with no
//! change, a cron schedule's next run, and `schedule clear` stopping it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use basalt_proto::control as pb;
use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::snaps::{attach, noise, restore, wait_snapshot, MIB};

const DATA: usize = 8 * MIB;
const EVERY_SECS: u64 = 2;
const DEADLINE: Duration = Duration::from_secs(120);

/// Every snapshot of the cluster, from the API (it says which are
/// scheduled).
fn all_snapshots(c: &ManagedCluster) -> Vec<pb::Snapshot> {
    let mut cl = c.client().expect("connect to the control service");
    c.rt.block_on(cl.list_snapshots(pb::ListSnapshotsRequest {
        tenant: "default".into(),
        page_size: 1000,
        ..Default::default()
    }))
    .expect("list snapshots")
    .into_inner()
    .snapshots
}

fn scheduled(c: &ManagedCluster) -> Vec<pb::Snapshot> {
    all_snapshots(c)
        .into_iter()
        .filter(|s| s.scheduled)
        .collect()
}

/// `schedule show VOL` as JSON (errors retried: control may be restarting).
fn show(c: &ManagedCluster, vol: &str) -> serde_json::Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match c.cli_json(&["schedule", "show", vol]) {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "schedule show {vol}: {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The retention-relevant part of a schedule (what a refused change must
/// leave as it was).
fn config(v: &serde_json::Value) -> serde_json::Value {
    let s = &v["schedule"];
    serde_json::json!([
        s["interval_secs"],
        s["cron"],
        s["keep_last"],
        s["keep_daily"],
        s["keep_weekly"]
    ])
}

fn refused(c: &ManagedCluster, args: &[&str], want: &str) {
    let (ok, out, err) = c.cli(args).expect("run basalt");
    assert!(!ok, "basalt {args:?} should fail: {out}");
    assert!(
        err.contains(want),
        "basalt {args:?}: error should mention {want:?}: {err}"
    );
}

/// Creates a manual snapshot, retrying while a scheduled one uploads (one
/// at a time per volume), and waits until it is COMPLETE.
fn manual_snapshot(c: &ManagedCluster, vol: &str, name: &str) -> pb::Snapshot {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (ok, _, err) = c
            .cli(&["snapshot", "create", vol, "--name", name])
            .expect("run basalt");
        if ok {
            break;
        }
        assert!(
            err.contains("still uploading"),
            "snapshot create {name}: {err}"
        );
        assert!(Instant::now() < deadline, "{name} never started: {err}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = wait_snapshot(c, name, DEADLINE, |s| s["state"] != "CREATING").expect("manual");
    assert_eq!(s["state"], "COMPLETE", "{s}");
    by_id(c, s["id"].as_u64().expect("id")).expect("the manual snapshot is listed")
}

fn by_id(c: &ManagedCluster, id: u64) -> Option<pb::Snapshot> {
    all_snapshots(c).into_iter().find(|s| s.id == id)
}

/// Waits until the schedule of `vol` records a snapshot above `above`.
fn wait_last_snapshot(c: &ManagedCluster, vol: &str, above: u64) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = show(c, vol);
        let last = s["schedule"]["last_snapshot_id"].as_u64().unwrap_or(0);
        if last > above {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled snapshot above {above}: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What retention must have reached: the COMPLETE scheduled snapshots
/// (`snaps`) are exactly the newest `keep` of every one ever seen
/// COMPLETE, and no FAILED one older than them is left.
fn retention_settled(snaps: &[pb::Snapshot], ever_complete: &BTreeSet<u64>, keep: usize) -> bool {
    let complete: BTreeSet<u64> = snaps
        .iter()
        .filter(|s| s.state == "COMPLETE")
        .map(|s| s.id)
        .collect();
    let newest: BTreeSet<u64> = ever_complete.iter().rev().take(keep).copied().collect();
    let oldest_kept = complete.iter().next().copied().unwrap_or(0);
    complete == newest
        && !snaps
            .iter()
            .any(|s| s.state == "FAILED" && s.id < oldest_kept)
}

/// Polls until the schedule of `vol` has taken `more` snapshots with ids
/// above `after` (seen in `last_snapshot_id` or listed) and retention
/// settled; returns the ids seen. Asserts throughout that retention never
/// lets more than `keep + 1` (one just completed) COMPLETE scheduled
/// snapshots pile up.
fn run_until(c: &ManagedCluster, vol: &str, after: u64, more: usize, keep: usize) -> BTreeSet<u64> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = BTreeSet::new();
    let mut ever_complete = BTreeSet::new();
    loop {
        let last = show(c, vol)["schedule"]["last_snapshot_id"]
            .as_u64()
            .unwrap_or(0);
        if last > after {
            seen.insert(last);
        }
        let snaps: Vec<pb::Snapshot> = scheduled(c)
            .into_iter()
            .filter(|s| s.volume_name == vol)
            .collect();
        seen.extend(snaps.iter().map(|s| s.id).filter(|id| *id > after));
        ever_complete.extend(snaps.iter().filter(|s| s.state == "COMPLETE").map(|s| s.id));
        let complete = snaps.iter().filter(|s| s.state == "COMPLETE").count();
        assert!(complete <= keep + 1, "retention fell behind: {snaps:?}");
        if seen.len() >= more && retention_settled(&snaps, &ever_complete, keep) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "schedule of {vol} took {seen:?} after {after}; scheduled now: {snaps:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn scheduled_snapshots_with_retention() {
    let root = tempfile::Builder::new()
        .prefix("basalt-schedules-")
        .tempdir()
        .unwrap();
    let mut c = ManagedCluster::start(root.path(), 3).unwrap();
    let v = c
        .cli_json(&["volume", "create", "sv", "--size", "64M"])
        .unwrap();
    assert_eq!(v["state"], "AVAILABLE", "{v}");
    let mut b = attach(&c, "sv");
    b.write_at(0, &noise(1, DATA)).unwrap();

    // Bad input is refused and sets nothing.
    let bad: [(&[&str], &str); 4] = [
        (&["--every", "0s"], "too short"),
        (&["--every", "2x"], "bad interval"),
        (&["--cron", "not cron"], "not a valid expression"),
        (
            &["--every", "2s", "--cron", "* * * * *"],
            "cannot be used with",
        ),
    ];
    let try_bad = |c: &ManagedCluster| {
        for (args, want) in bad {
            refused(c, &[&["schedule", "set", "sv"], args].concat(), want);
        }
    };
    try_bad(&c);
    assert_eq!(show(&c, "sv")["schedule"], serde_json::Value::Null);
    refused(
        &c,
        &["schedule", "set", "nosuch", "--every", "2s"],
        "does not exist",
    );

    // Every 2 s, keep the newest 2.
    let set = c
        .cli_json(&["schedule", "set", "sv", "--every", "2s", "--keep-last", "2"])
        .unwrap();
    assert_eq!(set["schedule"]["interval_secs"], EVERY_SECS, "{set}");
    assert_eq!(set["schedule"]["keep_last"], 2, "{set}");
    assert!(
        set["schedule"]["next_run_at"].as_i64().unwrap() > 0,
        "{set}"
    );
    let before = config(&show(&c, "sv"));
    try_bad(&c);
    assert_eq!(
        config(&show(&c, "sv")),
        before,
        "refused changes leave it as it was"
    );

    // A manual snapshot meanwhile, then new data: the schedule's snapshots
    // after this point hold it.
    run_until(&c, "sv", 0, 1, 2);
    let manual = manual_snapshot(&c, "sv", "sv.manual");
    assert!(!manual.scheduled);
    let data = noise(2, DATA);
    b.write_at(0, &data).unwrap();
    b.flush().unwrap();
    let mark = all_snapshots(&c).iter().map(|s| s.id).max().unwrap_or(0);

    let seen = run_until(&c, "sv", mark, 4, 2);
    let now = scheduled(&c);
    let complete: Vec<&pb::Snapshot> = now.iter().filter(|s| s.state == "COMPLETE").collect();
    assert_eq!(complete.len(), 2, "{now:?}");
    // Of the 4+ taken since the mark, what is left is the newest 2
    // COMPLETE and at most one still uploading: the rest were deleted.
    for s in &now {
        assert!(
            s.state == "COMPLETE" || (s.state == "CREATING" && s.id == *seen.last().unwrap()),
            "only the newest 2 scheduled snapshots remain: {now:?}"
        );
    }
    let gone = seen
        .iter()
        .filter(|id| !now.iter().any(|s| s.id == **id))
        .count();
    assert!(
        gone + 3 >= seen.len() && gone >= 1,
        "retention deleted older ones: {seen:?} {now:?}"
    );
    let scheduled_before = scheduled(&c).iter().filter(|s| s.id < mark).count();
    assert_eq!(
        scheduled_before, 0,
        "scheduled snapshots before the mark are gone"
    );
    for s in &complete {
        assert!(
            s.name.starts_with("sv-") && s.name.len() == "sv-yyyymmdd-hhmmss".len(),
            "scheduled names are <volume>-<UTC time>: {}",
            s.name
        );
    }
    assert_eq!(
        by_id(&c, manual.id).map(|s| s.state),
        Some("COMPLETE".to_owned()),
        "a manual snapshot is never deleted by retention"
    );

    // The newest restores byte for byte.
    let newest = complete.iter().max_by_key(|s| s.id).unwrap();
    assert!(newest.id > mark);
    let got = restore(&c, &newest.name, "sv-restored", DATA);
    assert!(
        got == data,
        "{} restored differs from the volume",
        newest.name
    );

    // After a restart of the control service the schedule runs again: a
    // snapshot taken by the new process (its id above every one before),
    // recorded in last_snapshot_id.
    c.restart_control().unwrap();
    let mark = all_snapshots(&c).iter().map(|s| s.id).max().unwrap_or(0);
    let last = wait_last_snapshot(&c, "sv", mark);
    let after_restart = by_id(&c, last).expect("the new snapshot is listed");
    assert!(after_restart.scheduled, "{after_restart:?}");
    run_until(&c, "sv", mark, 1, 2);
    assert!(
        by_id(&c, manual.id).is_some(),
        "the manual snapshot survives"
    );

    // A cron schedule on another volume: next run at the next 03:00 UTC.
    c.cli_json(&["volume", "create", "cv", "--size", "16M"])
        .unwrap();
    let cv = c
        .cli_json(&[
            "schedule",
            "set",
            "cv",
            "--cron",
            "0 3 * * *",
            "--keep-daily",
            "7",
        ])
        .unwrap();
    let next = cv["schedule"]["next_run_at"].as_i64().unwrap();
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(next.rem_euclid(86_400), 3 * 3_600, "{cv}");
    assert!(next > now_secs - 5 && next <= now_secs + 86_400, "{cv}");
    assert_eq!(cv["schedule"]["cron"], "0 3 * * *");

    // Clear: no scheduled snapshot of sv for three intervals, the kept ones
    // stay.
    let cleared = c.cli_json(&["schedule", "clear", "sv"]).unwrap();
    assert_eq!(cleared["schedule"], serde_json::Value::Null, "{cleared}");
    let kept: BTreeSet<u64> = scheduled(&c)
        .iter()
        .filter(|s| s.volume_name == "sv")
        .map(|s| s.id)
        .collect();
    let watch = Instant::now() + Duration::from_secs(3 * EVERY_SECS + 1);
    while Instant::now() < watch {
        let ids: BTreeSet<u64> = scheduled(&c)
            .iter()
            .filter(|s| s.volume_name == "sv")
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, kept, "no scheduled snapshot after clear, none deleted");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(show(&c, "sv")["schedule"], serde_json::Value::Null);
}
