//! The destination flow against a real S3 server (s3s-fs).
//!
//! Needs the `s3s-fs` binary (see `basalt_snapshot::testing::find_s3s_fs`):
//! skipped loudly when it is missing, and a failure when `CI` is set.

use std::collections::{BTreeMap, HashSet};

use basalt_snapshot::testing::s3_server_or_skip;
use basalt_snapshot::{
    chunk, ChunkId, Destination, DestinationError, Manifest, SweepStats, BLOCK_SIZE,
};

const MAX: usize = BLOCK_SIZE as usize;

fn manifest(id: u64, chunks: &[ChunkId]) -> Manifest {
    Manifest {
        snapshot_id: id,
        volume_id: 9,
        size_bytes: 8 * BLOCK_SIZE + 512,
        block_size: BLOCK_SIZE as u32,
        parent_id: id.saturating_sub(1),
        created_unix_ms: 1_700_000_000_000,
        blocks: chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64 * 2, *c))
            .collect::<BTreeMap<_, _>>(),
    }
}

#[tokio::test]
async fn s3_put_get_list_sweep() {
    let Some(server) = s3_server_or_skip("s3_put_get_list_sweep") else {
        return;
    };
    let mut spec = server.spec_for(&server.bucket);
    spec.url = format!("s3://{}/cluster-a/snaps", server.bucket);
    let dest = Destination::open(&spec).expect("open s3 destination");

    // Chunks: absent, put, present, verified read, documented key layout.
    let blocks: Vec<Vec<u8>> = (0..5u8)
        .map(|i| {
            (0..MAX)
                .map(|j| (j as u8).wrapping_mul(i + 1) ^ i)
                .collect()
        })
        .collect();
    let mut ids = Vec::new();
    for b in &blocks {
        let (id, stored) = chunk::encode(b);
        assert!(!dest.has_chunk(&id).await.expect("has"));
        dest.put_chunk(&id, stored).await.expect("put chunk");
        assert!(dest.has_chunk(&id).await.expect("has"));
        ids.push(id);
    }
    assert_eq!(dest.get_chunk(&ids[2], MAX).await.expect("get"), blocks[2]);
    let hex = ids[0].hex();
    let on_disk = server
        .root
        .join(&server.bucket)
        .join(format!("cluster-a/snaps/chunks/{}/{hex}", &hex[..2]));
    assert!(
        on_disk.is_file(),
        "key layout: {} missing",
        on_disk.display()
    );
    let mut listed = dest.list_chunks().await.expect("list chunks");
    listed.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(listed, want);

    // A chunk damaged in the bucket is refused, not returned.
    let mut bytes = std::fs::read(&on_disk).expect("read chunk file");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&on_disk, &bytes).expect("tamper");
    let err = dest
        .get_chunk(&ids[0], MAX)
        .await
        .expect_err("tampered chunk accepted");
    assert!(matches!(err, DestinationError::Chunk { .. }), "{err:?}");
    let (_, good) = chunk::encode(&blocks[0]);
    dest.put_chunk(&ids[0], good).await.expect("repair");

    // Manifests.
    let m1 = manifest(1, &[ids[0], ids[1]]);
    let m2 = manifest(2, &[ids[1], ids[2]]);
    dest.put_manifest(&m1).await.expect("put m1");
    dest.put_manifest(&m2).await.expect("put m2");
    assert_eq!(dest.list_manifests().await.expect("list"), vec![1, 2]);
    assert_eq!(dest.get_manifest(2).await.expect("get m2"), m2);
    assert!(matches!(
        dest.get_manifest(3).await,
        Err(DestinationError::NotFound { .. })
    ));

    // Sweep: 3 is kept, 4 is garbage.
    let keep: HashSet<ChunkId> = [ids[3]].into();
    let stats = dest.sweep(&keep).await.expect("sweep");
    assert_eq!(
        stats,
        SweepStats {
            chunks_listed: 5,
            manifests: 2,
            chunks_deleted: 1
        }
    );
    assert!(!dest.has_chunk(&ids[4]).await.expect("has"));
    for id in &ids[..4] {
        assert!(dest.has_chunk(id).await.expect("has"), "{id} deleted");
    }

    dest.delete_manifest(1).await.expect("delete m1");
    dest.delete_manifest(1).await.expect("delete m1 again");
    let stats = dest.sweep(&HashSet::new()).await.expect("sweep 2");
    assert_eq!(
        stats,
        SweepStats {
            chunks_listed: 4,
            manifests: 1,
            chunks_deleted: 2
        }
    );
    let left: HashSet<ChunkId> = dest
        .list_chunks()
        .await
        .expect("list")
        .into_iter()
        .collect();
    assert_eq!(left, [ids[1], ids[2]].into());
    assert_eq!(dest.get_chunk(&ids[1], MAX).await.expect("get"), blocks[1]);
}

#[tokio::test]
async fn s3_wrong_credentials_are_refused() {
    let Some(server) = s3_server_or_skip("s3_wrong_credentials_are_refused") else {
        return;
    };
    let mut spec = server.spec_for(&server.bucket);
    spec.secret_access_key = "not-the-secret".into();
    let dest = Destination::open(&spec).expect("open");
    let err = dest
        .list_manifests()
        .await
        .expect_err("bad secret accepted");
    assert!(matches!(err, DestinationError::Store { .. }), "{err:?}");
    assert!(!err.to_string().contains("not-the-secret"), "{err}");
}
