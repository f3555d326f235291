use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use super::super::test_support::*;
use super::super::{DestinationSet, Layout, SetError, SetOptions};
use crate::chunk::ChunkId;

#[tokio::test]
async fn a_slow_first_member_is_hedged_and_the_next_one_answers() {
    // `slow` ranks first (no averages yet: the given order) but every GET
    // waits 10 s; the hedge deadline is at most 100 ms. The test does not
    // time anything: before hedging, the read returned `slow`'s copy after
    // the wait, with no hedge counted.
    let (_, slow_store) = mem_member("slow");
    let slow = slow_member("slow", slow_store, Duration::from_secs(10));
    let (fast, _) = mem_member("fast");
    let opts = SetOptions {
        hedge_max: Duration::from_millis(100),
        ..SetOptions::default()
    };
    let set = DestinationSet::with_options(vec![slow, fast], Layout::Duplicate, opts).expect("set");
    let m = manifest(11, &[ChunkId::of(b"a")]);
    set.put_manifest(&m)
        .await
        .expect("put manifest (puts are not slowed)");

    assert_eq!(set.get_manifest(11).await.expect("hedged read"), m);
    let s = set.stats();
    assert_eq!(s.hedges, 1, "{s:?}");
    assert_eq!((s.members[1].hedges_started, s.members[1].gets_ok), (1, 1));
    assert_eq!((s.members[0].hedges_started, s.members[0].gets_ok), (0, 0));
    // A manifest is no chunk served, and no fallback.
    assert_eq!((s.members[1].served, s.fallbacks), (0, 0));
    assert_eq!(s.members[0].errors + s.members[1].errors, 0);
    // The outrun request counts as slow: the fast member now ranks first,
    // answers at once, and nothing is hedged.
    assert!(
        s.members[0].latency_ewma_micros > s.members[1].latency_ewma_micros,
        "{s:?}"
    );
    assert_eq!(set.board.order(&[0, 1]), vec![1, 0]);
    assert_eq!(set.get_manifest(11).await.expect("read"), m);
    let s = set.stats();
    assert_eq!((s.hedges, s.members[1].gets_ok), (1, 2));
}

#[tokio::test]
async fn a_missing_or_unreadable_manifest_moves_on_without_an_error() {
    let (empty, _) = mem_member("empty");
    let (garbled, garbled_store) = mem_member("garbled");
    let (full, _) = mem_member("full");
    let m = manifest(12, &[ChunkId::of(b"b")]);
    full.put_manifest(&m).await.expect("put manifest");
    garbled_store
        .put(
            &Path::from("manifests/00000000000000000012"),
            PutPayload::from_static(b"not a manifest"),
        )
        .await
        .expect("put garbage");
    assert!(garbled.get_manifest(12).await.is_err(), "unreadable");
    let set = DestinationSet::new(vec![empty, garbled, full], Layout::Duplicate).expect("set");

    assert_eq!(set.get_manifest(12).await.expect("from full"), m);
    let s = set.stats();
    let errors: Vec<u64> = s.members.iter().map(|m| m.errors).collect();
    assert_eq!(errors, vec![0, 0, 0], "only store errors count: {s:?}");
    let gets: Vec<u64> = s.members.iter().map(|m| m.gets_ok).collect();
    assert_eq!(gets, vec![0, 0, 1]);
    // Errors ask the next member at once: no hedge.
    assert_eq!((s.hedges, s.fallbacks, s.members[2].served), (0, 0, 0));
}

#[tokio::test]
async fn all_members_failing_a_manifest_read_names_each() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = broken_member(tmp.path(), "bad");
    let (empty, _) = mem_member("empty");
    let set = DestinationSet::new(vec![bad, empty], Layout::Duplicate).expect("set");

    let err = set.get_manifest(13).await.expect_err("nowhere");
    assert!(
        matches!(&err, SetError::ManifestUnavailable { snapshot_id: 13, failures } if failures.0.len() == 2),
        "{err}"
    );
    assert!(!err.is_not_found(), "one member is broken, not just empty");
    let text = err.to_string();
    assert!(text.contains("bad: ") && text.contains("empty: "), "{text}");
    let s = set.stats();
    assert_eq!((s.members[0].errors, s.members[1].errors), (1, 0), "{s:?}");
    assert_eq!(s.members.iter().map(|m| m.gets_ok).sum::<u64>(), 0);
}

#[test]
fn get_manifest_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let (a, _) = mem_member("a");
    let set = DestinationSet::new(vec![a], Layout::Single).expect("set");
    let fut = set.get_manifest(1);
    assert_send(&fut);
}
