use std::collections::HashSet;

use super::*;
use crate::BLOCK_SIZE;

const MAX: usize = BLOCK_SIZE as usize;

fn file_dest(dir: &std::path::Path) -> Destination {
    let spec = DestinationSpec {
        name: "local".into(),
        url: format!("file://{}", dir.join("dest").display()),
        ..DestinationSpec::default()
    };
    Destination::open(&spec).expect("open file destination")
}

fn manifest(id: u64, chunks: &[ChunkId]) -> Manifest {
    Manifest {
        snapshot_id: id,
        volume_id: 1,
        size_bytes: 16 * BLOCK_SIZE,
        block_size: BLOCK_SIZE as u32,
        parent_id: 0,
        created_unix_ms: 1_700_000_000_000,
        blocks: chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64, *c))
            .collect(),
    }
}

async fn put(dest: &Destination, data: &[u8]) -> ChunkId {
    let (id, stored) = chunk::encode(data);
    dest.put_chunk(&id, stored).await.expect("put chunk");
    id
}

#[tokio::test]
async fn chunks_put_has_get_delete() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = file_dest(tmp.path());
    assert_eq!(dest.name(), "local");
    let data = vec![7u8; 100_000];
    let id = ChunkId::of(&data);
    assert!(!dest.has_chunk(&id).await.expect("has"));
    assert!(matches!(
        dest.get_chunk(&id, MAX).await,
        Err(DestinationError::NotFound { .. })
    ));
    put(&dest, &data).await;
    assert!(dest.has_chunk(&id).await.expect("has"));
    assert_eq!(dest.get_chunk(&id, MAX).await.expect("get"), data);
    let hex = id.hex();
    let file = tmp.path().join(format!("dest/chunks/{}/{hex}", &hex[..2]));
    assert!(file.is_file(), "documented key layout");
    assert_eq!(dest.list_chunks().await.expect("list"), vec![id]);
    // max_len smaller than the chunk: refused.
    assert!(matches!(
        dest.get_chunk(&id, 1000).await,
        Err(DestinationError::Chunk {
            source: ChunkError::TooLarge { .. },
            ..
        }) | Err(DestinationError::ObjectTooLarge { .. })
    ));
    dest.delete_chunk(&id).await.expect("delete");
    dest.delete_chunk(&id).await.expect("delete again is ok");
    assert!(!dest.has_chunk(&id).await.expect("has"));
    assert!(dest.list_chunks().await.expect("list").is_empty());
}

#[tokio::test]
async fn tampered_chunk_on_disk_is_corrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = file_dest(tmp.path());
    let data: Vec<u8> = (0..MAX).map(|i| (i % 97) as u8).collect();
    let id = put(&dest, &data).await;
    let hex = id.hex();
    let file = tmp.path().join(format!("dest/chunks/{}/{hex}", &hex[..2]));
    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    std::fs::write(&file, &bytes).expect("tamper");
    let err = dest
        .get_chunk(&id, MAX)
        .await
        .expect_err("tampered chunk accepted");
    assert!(
        matches!(
            err,
            DestinationError::Chunk {
                source: ChunkError::Corrupt { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(&hex), "{err}");
}

#[tokio::test]
async fn manifests_put_get_list_delete() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = file_dest(tmp.path());
    assert!(dest.list_manifests().await.expect("list empty").is_empty());
    let a = manifest(3, &[ChunkId::of(b"a")]);
    let b = manifest(12, &[ChunkId::of(b"b"), ChunkId::of(b"c")]);
    dest.put_manifest(&b).await.expect("put b");
    dest.put_manifest(&a).await.expect("put a");
    assert!(tmp
        .path()
        .join("dest/manifests/00000000000000000012")
        .is_file());
    assert_eq!(dest.list_manifests().await.expect("list"), vec![3, 12]);
    assert_eq!(dest.get_manifest(12).await.expect("get"), b);
    assert!(matches!(
        dest.get_manifest(99).await,
        Err(DestinationError::NotFound { .. })
    ));
    // A manifest stored under another id's key is refused on read.
    std::fs::copy(
        tmp.path().join("dest/manifests/00000000000000000012"),
        tmp.path().join("dest/manifests/00000000000000000013"),
    )
    .expect("copy");
    assert!(matches!(
        dest.get_manifest(13).await,
        Err(DestinationError::ManifestIdMismatch { found: 12, .. })
    ));
    // Invalid manifests are not stored.
    let bad = Manifest {
        block_size: 4096,
        ..manifest(20, &[])
    };
    assert!(matches!(
        dest.put_manifest(&bad).await,
        Err(DestinationError::InvalidManifest {
            snapshot_id: 20,
            ..
        })
    ));
    dest.delete_manifest(3).await.expect("delete");
    dest.delete_manifest(3).await.expect("delete again is ok");
    dest.delete_manifest(13).await.expect("delete copy");
    assert_eq!(dest.list_manifests().await.expect("list"), vec![12]);
}

#[tokio::test]
async fn listings_ignore_foreign_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = file_dest(tmp.path());
    let id = put(&dest, b"x").await;
    dest.put_manifest(&manifest(5, &[id])).await.expect("put");
    for junk in [
        "chunks/ab/not-a-chunk",
        "chunks/README",
        "manifests/5",
        "manifests/notes.txt",
        "other/file",
    ] {
        let p = tmp.path().join("dest").join(junk);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, b"junk").expect("write junk");
    }
    assert_eq!(dest.list_chunks().await.expect("list"), vec![id]);
    assert_eq!(dest.list_manifests().await.expect("list"), vec![5]);
    // Junk does not disturb the sweep either.
    let stats = dest.sweep(&HashSet::new()).await.expect("sweep");
    assert_eq!(
        stats,
        SweepStats {
            chunks_listed: 1,
            manifests: 1,
            chunks_deleted: 0
        }
    );
}

/// Shared by the file and S3 tests: stores chunks, two manifests, and checks
/// that a sweep deletes exactly the unreferenced, unkept chunks.
pub(crate) async fn sweep_scenario(dest: &Destination) {
    let blocks: Vec<Vec<u8>> = (0..6u8)
        .map(|i| vec![i + 1; 4096 * usize::from(i + 1)])
        .collect();
    let mut ids = Vec::new();
    for b in &blocks {
        ids.push(put(dest, b).await);
    }
    // m1 uses 0,1; m2 uses 1,2; 3 is kept (upload in progress); 4 and 5 are garbage.
    dest.put_manifest(&manifest(1, &[ids[0], ids[1]]))
        .await
        .expect("put m1");
    dest.put_manifest(&manifest(2, &[ids[1], ids[2]]))
        .await
        .expect("put m2");
    let keep: HashSet<ChunkId> = [ids[3]].into();
    let stats = dest.sweep(&keep).await.expect("sweep");
    assert_eq!(
        stats,
        SweepStats {
            chunks_listed: 6,
            manifests: 2,
            chunks_deleted: 2
        }
    );
    let mut left = dest.list_chunks().await.expect("list");
    left.sort();
    let mut want = ids[..4].to_vec();
    want.sort();
    assert_eq!(left, want);
    for (i, id) in ids.iter().enumerate().take(4) {
        assert_eq!(
            dest.get_chunk(id, MAX).await.expect("kept chunk"),
            blocks[i]
        );
    }
    // Dropping m1 frees chunk 0 only (1 is still in m2); dropping `keep` frees 3.
    dest.delete_manifest(1).await.expect("delete m1");
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
}

#[tokio::test]
async fn sweep_deletes_exactly_unreferenced_chunks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    sweep_scenario(&file_dest(tmp.path())).await;
}

#[tokio::test]
async fn sweep_aborts_on_unreadable_manifest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = file_dest(tmp.path());
    let garbage = put(&dest, b"garbage").await;
    dest.put_manifest(&manifest(1, &[])).await.expect("put");
    let path = tmp.path().join("dest/manifests/00000000000000000001");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[10] ^= 1;
    std::fs::write(&path, bytes).expect("damage manifest");
    let err = dest
        .sweep(&HashSet::new())
        .await
        .expect_err("sweep on damaged manifest");
    assert!(
        matches!(
            err,
            DestinationError::Manifest {
                source: ManifestError::BadChecksum,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        dest.has_chunk(&garbage).await.expect("has"),
        "nothing deleted"
    );
}

#[test]
fn open_refuses_bad_specs() {
    for (url, creds) in [
        ("http://example/b", true),
        ("file://relative/dir", false),
        ("s3://", true),
        ("s3://bucket", false),
        ("s3://bucket/a//b", true),
    ] {
        let spec = DestinationSpec {
            name: "x".into(),
            url: url.into(),
            access_key_id: if creds { "k".into() } else { String::new() },
            secret_access_key: if creds { "s".into() } else { String::new() },
            ..DestinationSpec::default()
        };
        let err = Destination::open(&spec).expect_err(url);
        assert!(
            matches!(err, DestinationError::Open { .. }),
            "{url}: {err:?}"
        );
    }
}
