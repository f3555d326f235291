use super::test_support::*;
use super::*;
use crate::chunk;

fn mems(n: usize) -> Vec<Arc<Destination>> {
    (0..n).map(|i| mem_member(&format!("d{i}")).0).collect()
}

#[test]
fn new_refuses_bad_member_counts_stripes_and_names() {
    assert!(matches!(
        DestinationSet::new(mems(0), Layout::Single),
        Err(SetError::SingleMembers { count: 0 })
    ));
    assert!(matches!(
        DestinationSet::new(mems(2), Layout::Single),
        Err(SetError::SingleMembers { count: 2 })
    ));
    for layout in [Layout::Duplicate, Layout::Striped { stripe_blocks: 1 }] {
        for count in [0, 1, MAX_MEMBERS + 1] {
            let err = DestinationSet::new(mems(count), layout).expect_err("count");
            assert!(
                matches!(err, SetError::MemberCount { count: c, .. } if c == count),
                "{err}"
            );
            assert!(err.to_string().contains(layout.as_str()), "{err}");
        }
        DestinationSet::new(mems(2), layout).expect("2 members");
        DestinationSet::new(mems(MAX_MEMBERS), layout).expect("8 members");
    }
    assert!(matches!(
        DestinationSet::new(mems(2), Layout::Striped { stripe_blocks: 0 }),
        Err(SetError::ZeroStripe)
    ));
    let twice = vec![mem_member("a").0, mem_member("b").0, mem_member("a").0];
    let err = DestinationSet::new(twice, Layout::Duplicate).expect_err("twice");
    assert!(
        matches!(&err, SetError::DuplicateMember { name } if name == "a"),
        "{err}"
    );
    DestinationSet::new(mems(1), Layout::Single).expect("single");
}

#[test]
fn holders_per_layout() {
    let single = DestinationSet::new(mems(1), Layout::Single).expect("set");
    assert_eq!(single.holders(0), vec![0]);
    assert_eq!(single.holders(1234), vec![0]);
    let dup = DestinationSet::new(mems(3), Layout::Duplicate).expect("set");
    assert_eq!(dup.holders(7), vec![0, 1, 2]);
    let striped = DestinationSet::new(mems(3), Layout::Striped { stripe_blocks: 2 }).expect("set");
    let got: Vec<usize> = (0..8).map(|b| striped.holders(b)[0]).collect();
    assert_eq!(got, vec![0, 0, 1, 1, 2, 2, 0, 0]);
    assert!((0..8).all(|b| striped.holders(b).len() == 1));
    assert_eq!(striped.layout(), Layout::Striped { stripe_blocks: 2 });
    assert_eq!(striped.members().len(), 3);
    assert_eq!(striped.members()[2].name(), "d2");
}

#[test]
fn full_copies_hold_every_block() {
    let mut m = mems(4);
    let copies = m.split_off(2);
    let striped = DestinationSet::new(m, Layout::Striped { stripe_blocks: 1 })
        .expect("set")
        .with_copies(copies)
        .expect("copies");
    // Stripes over the first two only; both copies hold everything.
    assert_eq!(striped.holders(0), vec![0, 2, 3]);
    assert_eq!(striped.holders(1), vec![1, 2, 3]);
    assert_eq!(striped.stats().members.len(), 4);
    let dup = DestinationSet::new(mems(2), Layout::Duplicate).expect("set");
    let again = mems(1);
    assert!(
        dup.with_copies(again).is_err(),
        "a copy named like a member is refused"
    );
}

#[tokio::test]
async fn striped_put_stores_each_chunk_in_its_holder_only() {
    let set = DestinationSet::new(mems(2), Layout::Striped { stripe_blocks: 1 }).expect("set");
    let mut ids = Vec::new();
    for block in 0..4u64 {
        let (id, stored) = chunk::encode(&block_data(block));
        let out = set.put_chunk(block, &id, &stored).await.expect("put");
        assert_eq!(
            out,
            PutOutcome {
                new_bytes: stored.len() as u64,
                reused: false
            }
        );
        ids.push(id);
    }
    for (block, id) in ids.iter().enumerate() {
        let holder = block % 2;
        assert!(set.members()[holder].has_chunk(id).await.expect("has"));
        assert!(!set.members()[1 - holder].has_chunk(id).await.expect("has"));
    }
}

fn block_data(b: u64) -> Vec<u8> {
    block(b as u8, 4096)
}

#[tokio::test]
async fn duplicate_put_stores_everywhere_then_reuses() {
    let set = DestinationSet::new(mems(3), Layout::Duplicate).expect("set");
    let (id, stored) = chunk::encode(&block_data(1));
    let out = set.put_chunk(5, &id, &stored).await.expect("put");
    assert_eq!(out.new_bytes, 3 * stored.len() as u64);
    assert!(!out.reused);
    for m in set.members() {
        assert_eq!(m.get_chunk(&id, MAX).await.expect("get"), block_data(1));
    }
    let again = set.put_chunk(5, &id, &stored).await.expect("put again");
    assert_eq!(
        again,
        PutOutcome {
            new_bytes: 0,
            reused: true
        }
    );

    // One member lost it: only that one is written.
    set.members()[1].delete_chunk(&id).await.expect("delete");
    let refill = set.put_chunk(5, &id, &stored).await.expect("refill");
    assert_eq!(
        refill,
        PutOutcome {
            new_bytes: stored.len() as u64,
            reused: false
        }
    );
    assert!(set.members()[1].has_chunk(&id).await.expect("has"));
}

#[tokio::test]
async fn put_chunk_error_names_the_failing_destination() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let members = vec![
        file_member(tmp.path(), "good"),
        broken_member(tmp.path(), "bad"),
    ];
    let set = DestinationSet::new(members, Layout::Duplicate).expect("set");
    let (id, stored) = chunk::encode(&block_data(2));
    let err = set
        .put_chunk(0, &id, &stored)
        .await
        .expect_err("bad member");
    assert!(err.to_string().contains("\"bad\""), "{err}");
}

#[tokio::test]
async fn manifests_go_everywhere_and_are_read_with_fallback() {
    let set = DestinationSet::new(mems(2), Layout::Striped { stripe_blocks: 1 }).expect("set");
    let m = manifest(42, &[ChunkId::of(b"x")]);
    set.put_manifest(&m).await.expect("put manifest");
    for d in set.members() {
        assert_eq!(d.get_manifest(42).await.expect("in every member"), m);
    }
    // The first member lost it: the second serves it.
    set.members()[0].delete_manifest(42).await.expect("delete");
    assert_eq!(set.get_manifest(42).await.expect("fallback"), m);

    set.delete_manifest(42).await.expect("delete everywhere");
    for d in set.members() {
        assert!(d.list_manifests().await.expect("list").is_empty());
    }
    let err = set.get_manifest(42).await.expect_err("gone");
    assert!(err.is_not_found(), "{err}");
    let text = err.to_string();
    assert!(text.contains("d0: ") && text.contains("d1: "), "{text}");
}

#[tokio::test]
async fn manifest_read_skips_a_broken_member_and_writes_name_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let members = vec![
        broken_member(tmp.path(), "bad"),
        file_member(tmp.path(), "good"),
    ];
    let set = DestinationSet::new(members, Layout::Duplicate).expect("set");
    let m = manifest(7, &[ChunkId::of(b"y")]);
    let err = set.put_manifest(&m).await.expect_err("bad member");
    assert!(matches!(&err, SetError::Incomplete { failures, .. } if failures.0.len() == 1));
    assert!(err.to_string().contains("bad: "), "{err}");
    assert!(!err.to_string().contains("good: "), "{err}");
    // The good member stored it anyway; reads fall back to it.
    assert_eq!(set.get_manifest(7).await.expect("fallback"), m);
    let stats = set.stats();
    assert_eq!(stats.members[0].errors, 1, "{stats:?}");
    // Now the broken member ranks last: it is not even asked.
    assert_eq!(set.get_manifest(7).await.expect("again"), m);
    assert_eq!(set.stats().members[0].errors, 1);
    let err = set.delete_manifest(7).await.expect_err("bad member");
    assert!(err.to_string().contains("bad: "), "{err}");
    assert!(set.members()[1]
        .list_manifests()
        .await
        .expect("list")
        .is_empty());
}
