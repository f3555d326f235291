use std::sync::Arc;
use std::time::Duration;

use super::super::test_support::*;
use super::super::{DestinationSet, Layout, SetError, SetOptions};
use crate::chunk;
use crate::destination::Destination;

fn set_of(members: Vec<Arc<Destination>>, layout: Layout) -> DestinationSet {
    DestinationSet::new(members, layout).expect("set")
}

#[tokio::test]
async fn served_by_the_first_candidate_without_fallback() {
    let (a, _) = mem_member("a");
    let (b, _) = mem_member("b");
    let set = set_of(vec![a, b], Layout::Duplicate);
    let data = block(1, 4096);
    let (id, stored) = chunk::encode(&data);
    set.put_chunk(0, &id, &stored).await.expect("put");
    assert_eq!(set.get_chunk(0, &id, MAX).await.expect("get"), data);
    let s = set.stats();
    assert_eq!((s.fallbacks, s.hedges), (0, 0));
    assert_eq!((s.members[0].served, s.members[0].gets_ok), (1, 1));
    assert!(s.members[0].latency_ewma_micros > 0);
    assert_eq!(s.members[1].served + s.members[1].errors, 0);
}

#[tokio::test]
async fn a_member_missing_the_chunk_falls_back_and_counts_an_error() {
    let (empty, _) = mem_member("empty");
    let (full, _) = mem_member("full");
    let data = block(2, 4096);
    let id = put_raw(&full, &data).await;
    let set = set_of(vec![empty, full], Layout::Duplicate);
    assert_eq!(set.get_chunk(3, &id, MAX).await.expect("get"), data);
    let s = set.stats();
    assert_eq!(s.fallbacks, 1);
    assert_eq!(
        s.members[0].errors, 1,
        "a holder without its chunk is an error"
    );
    assert_eq!(s.members[1].served, 1);
    // The erroring member now ranks last: the next read starts with `full`.
    assert_eq!(set.get_chunk(3, &id, MAX).await.expect("get"), data);
    let s = set.stats();
    assert_eq!(
        (s.fallbacks, s.members[0].errors, s.members[1].served),
        (1, 1, 2)
    );
}

#[tokio::test]
async fn a_member_whose_store_fails_falls_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = broken_member(tmp.path(), "bad");
    let good = file_member(tmp.path(), "good");
    let data = block(3, 4096);
    let id = put_raw(&good, &data).await;
    let set = set_of(vec![bad, good], Layout::Duplicate);
    assert_eq!(set.get_chunk(0, &id, MAX).await.expect("get"), data);
    let s = set.stats();
    assert_eq!(s.fallbacks, 1);
    assert_eq!((s.members[0].errors, s.members[0].served), (1, 0));
    assert_eq!(s.members[1].served, 1);
}

#[tokio::test]
async fn a_striped_chunk_is_found_outside_its_holder() {
    let (a, _) = mem_member("a");
    let (b, _) = mem_member("b");
    let data = block(4, 4096);
    // Block 0's holder is `a`, but the chunk is only in `b` (e.g. a copy).
    let id = put_raw(&b, &data).await;
    let set = set_of(vec![a, b], Layout::Striped { stripe_blocks: 1 });
    assert_eq!(set.get_chunk(0, &id, MAX).await.expect("get"), data);
    let s = set.stats();
    assert_eq!(
        (s.fallbacks, s.members[0].errors, s.members[1].served),
        (1, 1, 1)
    );

    // Block 1's holder is `b`; a miss in `a` (not a holder) is no error.
    let other = block(5, 4096);
    let other_id = put_raw(&set.members()[1], &other).await;
    set.members()[1].delete_chunk(&id).await.expect("delete");
    let err = set.get_chunk(1, &id, MAX).await.expect_err("nowhere");
    assert!(err.is_not_found(), "{err}");
    let s = set.stats();
    assert_eq!(
        s.members[0].errors, 1,
        "a's miss as a non-holder is not counted"
    );
    assert_eq!(s.members[1].errors, 1, "b's miss as the holder is");
    assert_eq!(set.get_chunk(1, &other_id, MAX).await.expect("get"), other);
}

#[tokio::test]
async fn all_members_failing_names_each() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = broken_member(tmp.path(), "bad");
    let (empty, _) = mem_member("empty");
    let set = set_of(vec![bad, empty], Layout::Duplicate);
    let id = chunk::encode(&block(6, 100)).0;
    let err = set.get_chunk(9, &id, MAX).await.expect_err("no copy");
    assert!(
        matches!(&err, SetError::ChunkUnavailable { block: 9, failures, .. } if failures.0.len() == 2)
    );
    assert!(!err.is_not_found(), "one member is broken, not just empty");
    let text = err.to_string();
    assert!(text.contains("bad: ") && text.contains("empty: "), "{text}");
    assert!(text.contains(&id.hex()), "{text}");
    let s = set.stats();
    assert_eq!((s.members[0].errors, s.members[1].errors), (1, 1));
    assert_eq!(s.fallbacks, 0);
}

#[tokio::test]
async fn a_slow_member_is_hedged_then_ranked_after_the_fast_one() {
    let (_, slow_store) = mem_member("slow");
    let slow = slow_member("slow", Arc::clone(&slow_store), Duration::from_secs(2));
    let (fast, _) = mem_member("fast");
    let opts = SetOptions {
        hedge_min: Duration::from_millis(200),
        hedge_max: Duration::from_millis(800),
        penalty: Duration::from_secs(10),
    };
    let set = DestinationSet::with_options(vec![slow, fast], Layout::Duplicate, opts).expect("set");
    let (first, second) = (block(7, 4096), block(8, 4096));
    let mut ids = Vec::new();
    for data in [&first, &second] {
        let (id, stored) = chunk::encode(data);
        // Written past the throttle (puts are not slowed, but keep it direct).
        let unthrottled =
            Destination::from_store("slow", Arc::clone(&slow_store), "").expect("from_store");
        unthrottled
            .put_chunk(&id, stored.clone())
            .await
            .expect("put");
        set.members()[1].put_chunk(&id, stored).await.expect("put");
        ids.push(id);
    }

    let started = tokio::time::Instant::now();
    assert_eq!(set.get_chunk(0, &ids[0], MAX).await.expect("get"), first);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "hedged read took {took:?}");
    assert!(
        took >= Duration::from_millis(200),
        "hedged only after the deadline: {took:?}"
    );
    let s = set.stats();
    assert_eq!((s.hedges, s.fallbacks), (1, 1));
    assert_eq!((s.members[1].hedges_started, s.members[1].served), (1, 1));
    assert_eq!(s.members[0].served, 0);
    assert!(
        s.members[0].latency_ewma_micros >= 200_000,
        "the outrun slow member is known to be slow: {s:?}"
    );

    // The fast member now ranks first: no hedge, no fallback.
    assert_eq!(set.board.order(&[0, 1]), vec![1, 0]);
    let started = tokio::time::Instant::now();
    assert_eq!(set.get_chunk(1, &ids[1], MAX).await.expect("get"), second);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    let s = set.stats();
    assert_eq!((s.hedges, s.fallbacks), (1, 1));
    assert_eq!(s.members[1].served, 2);
}

#[tokio::test]
async fn a_corrupt_copy_is_served_elsewhere_and_repaired() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = file_member(tmp.path(), "a");
    let b = file_member(tmp.path(), "b");
    let set = set_of(vec![a, b], Layout::Duplicate);
    let data = block(9, MAX);
    let (id, stored) = chunk::encode(&data);
    set.put_chunk(4, &id, &stored).await.expect("put");
    let file = chunk_file(tmp.path(), "a", &id);
    let mut bytes = std::fs::read(&file).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).expect("corrupt");
    assert!(
        set.members()[0].get_chunk(&id, MAX).await.is_err(),
        "corrupt now"
    );

    assert_eq!(set.get_chunk(4, &id, MAX).await.expect("get"), data);
    let s = set.stats();
    assert_eq!(
        (
            s.members[0].corrupt,
            s.members[0].repaired,
            s.members[0].errors
        ),
        (1, 1, 0)
    );
    assert_eq!((s.members[1].served, s.fallbacks), (1, 1));
    assert_eq!(std::fs::read(&file).expect("read"), stored, "rewritten");
    assert_eq!(
        set.members()[0]
            .get_chunk(&id, MAX)
            .await
            .expect("repaired"),
        data
    );
}

#[tokio::test]
async fn an_oversized_copy_counts_as_corrupt_and_is_repaired() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = file_member(tmp.path(), "a");
    let b = file_member(tmp.path(), "b");
    let set = set_of(vec![a, b], Layout::Striped { stripe_blocks: 4 });
    let data = block(10, 4096);
    // Block 0 belongs to `a`; `b` holds a copy.
    let id = put_raw(&set.members()[0], &data).await;
    put_raw(&set.members()[1], &data).await;
    std::fs::write(chunk_file(tmp.path(), "a", &id), vec![0u8; 64 << 10]).expect("oversize");
    assert_eq!(set.get_chunk(0, &id, 4096).await.expect("get"), data);
    let s = set.stats();
    assert_eq!((s.members[0].corrupt, s.members[0].repaired), (1, 1));
    assert_eq!(
        set.members()[0]
            .get_chunk(&id, 4096)
            .await
            .expect("repaired"),
        data
    );
}

#[test]
fn get_chunk_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let (a, _) = mem_member("a");
    let set = set_of(vec![a], Layout::Single);
    let id = chunk::encode(b"x").0;
    let fut = set.get_chunk(0, &id, MAX);
    assert_send(&fut);
    let put = set.put_chunk(0, &id, b"x");
    assert_send(&put);
}
