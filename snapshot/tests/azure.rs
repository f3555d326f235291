//! The destination flow against Azurite, the Azure Blob Storage emulator.
//!
//! Needs Azurite (scripts/setup.sh installs it with npm): skipped loudly when
//! it is missing, and a failure when `CI` is set.

use std::collections::BTreeMap;

use basalt_snapshot::testing::azurite::azurite_or_skip;
use basalt_snapshot::{
    chunk, ChunkId, Destination, DestinationError, Manifest, StoreKind, BLOCK_SIZE,
};

const MAX: usize = BLOCK_SIZE as usize;

fn block(seed: u8) -> Vec<u8> {
    (0..MAX)
        .map(|j| (j as u8).wrapping_mul(seed | 1) ^ seed)
        .collect()
}

#[tokio::test]
async fn azure_chunks_manifests_access_and_usage() {
    let Some(server) = azurite_or_skip("azure_chunks_manifests_access_and_usage") else {
        return;
    };
    let mut spec = server.spec_for(&server.container);
    spec.url = format!("az://{}/cluster-a", server.container);
    assert_eq!(spec.kind(), Some(StoreKind::Azure));
    let dest = Destination::open(&spec).expect("open azure destination");
    dest.check_access().await.expect("access check");

    let blocks: Vec<Vec<u8>> = (0..3).map(block).collect();
    let mut ids: Vec<ChunkId> = Vec::new();
    for b in &blocks {
        let (id, stored) = chunk::encode(b);
        assert!(!dest.has_chunk(&id).await.expect("has"));
        dest.put_chunk(&id, stored).await.expect("put chunk");
        assert!(dest.has_chunk(&id).await.expect("has"));
        ids.push(id);
    }
    assert_eq!(dest.get_chunk(&ids[1], MAX).await.expect("get"), blocks[1]);
    let mut listed = dest.list_chunks().await.expect("list");
    listed.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(listed, want);

    let m = Manifest {
        snapshot_id: 7,
        volume_id: 1,
        size_bytes: 3 * BLOCK_SIZE,
        block_size: BLOCK_SIZE as u32,
        parent_id: 0,
        created_unix_ms: 1_700_000_000_000,
        blocks: ids
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64, *c))
            .collect::<BTreeMap<_, _>>(),
    };
    dest.put_manifest(&m).await.expect("put manifest");
    assert_eq!(dest.get_manifest(7).await.expect("get manifest"), m);
    let usage = dest.usage().await.expect("usage");
    assert_eq!((usage.chunks, usage.manifests), (3, 1));
    assert!(usage.chunk_bytes > 0);

    // The same container under another prefix sees none of it.
    let mut other = spec.clone();
    other.url = format!("az://{}/cluster-b", server.container);
    let other = Destination::open(&other).expect("open");
    assert!(matches!(
        other.get_manifest(7).await,
        Err(DestinationError::NotFound { .. })
    ));
    assert!(other.list_chunks().await.expect("list").is_empty());
}

#[tokio::test]
async fn azure_bad_key_or_container_says_what_is_wrong() {
    let Some(server) = azurite_or_skip("azure_bad_key_or_container_says_what_is_wrong") else {
        return;
    };
    let mut spec = server.spec_for(&server.container);
    // A valid base64 key that is not the account's.
    spec.secret_access_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=".into();
    let err = Destination::open(&spec)
        .expect("open")
        .check_access()
        .await
        .expect_err("a wrong key must be refused");
    assert!(err.to_string().contains("credentials are wrong"), "{err}");
    assert!(!err.to_string().contains(&spec.secret_access_key), "{err}");

    let missing = server.spec_for("no-such-container");
    let err = Destination::open(&missing)
        .expect("open")
        .check_access()
        .await
        .expect_err("a missing container must be refused");
    assert!(err.to_string().contains("does not exist"), "{err}");

    // Nothing was left behind by the refused checks.
    let dest = Destination::open(&server.spec_for(&server.container)).expect("open");
    assert_eq!(dest.usage().await.expect("usage").chunks, 0);
}
