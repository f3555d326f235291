use super::*;
use rand::Rng;

fn sample() -> Manifest {
    let mut blocks = BTreeMap::new();
    for i in [0u64, 1, 7, 19] {
        blocks.insert(i, ChunkId::of(&i.to_le_bytes()));
    }
    Manifest {
        snapshot_id: 42,
        volume_id: 7,
        // 19 full blocks plus a 1000-byte tail: 20 blocks.
        size_bytes: 19 * BLOCK_SIZE + 1000,
        block_size: BLOCK_SIZE as u32,
        parent_id: 41,
        created_unix_ms: -5,
        blocks,
    }
}

/// Re-signs `bytes` (whose checksum is the last 32 bytes) after an edit, so
/// the decoder's later checks are reached.
fn resign(mut bytes: Vec<u8>) -> Vec<u8> {
    let body = bytes.len() - CHECKSUM_LEN;
    let sum: [u8; 32] = Sha256::digest(&bytes[..body]).into();
    bytes[body..].copy_from_slice(&sum);
    bytes
}

fn expect_err(bytes: &[u8]) -> ManifestError {
    match Manifest::decode(bytes) {
        Ok(m) => panic!("accepted bad manifest {m:?}"),
        Err(e) => e,
    }
}

#[test]
fn round_trip_and_geometry() {
    let m = sample();
    let bytes = m.encode();
    assert_eq!(&bytes[..7], MAGIC);
    assert_eq!(bytes[7], VERSION);
    assert_eq!(bytes.len(), HEADER_LEN + 4 * ENTRY_LEN + CHECKSUM_LEN);
    assert_eq!(Manifest::decode(&bytes).expect("decode"), m);
    assert_eq!(m.block_count(), 20);
    assert_eq!(m.block_len(0), BLOCK_SIZE as usize);
    assert_eq!(m.block_len(19), 1000);
    assert_eq!(m.block_len(20), 0);
    assert_eq!(m.block_len(u64::MAX), 0);
    assert_eq!(m.data_bytes(), 3 * BLOCK_SIZE + 1000);
    m.validate().expect("valid");

    let empty = Manifest {
        size_bytes: 0,
        blocks: BTreeMap::new(),
        ..sample()
    };
    assert_eq!(empty.block_count(), 0);
    assert_eq!(empty.data_bytes(), 0);
    assert_eq!(Manifest::decode(&empty.encode()).expect("empty"), empty);

    let exact = Manifest {
        size_bytes: 20 * BLOCK_SIZE,
        ..sample()
    };
    assert_eq!(exact.block_count(), 20);
    assert_eq!(exact.block_len(19), BLOCK_SIZE as usize);
}

#[test]
fn refuses_bad_magic_and_unknown_version() {
    let bytes = sample().encode();
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(matches!(expect_err(&bad), ManifestError::BadMagic));
    assert!(matches!(expect_err(b""), ManifestError::BadMagic));
    assert!(matches!(expect_err(b"BSNAP"), ManifestError::BadMagic));

    let mut v2 = bytes.clone();
    v2[7] = 2;
    let err = expect_err(&resign(v2));
    assert!(matches!(err, ManifestError::UnknownVersion(2)));
    let msg = err.to_string();
    assert!(
        msg.contains("version 2") && msg.contains("upgrade"),
        "{msg}"
    );
}

#[test]
fn refuses_bad_checksum_truncation_and_trailing_bytes() {
    let bytes = sample().encode();
    let mut flipped = bytes.clone();
    flipped[70] ^= 1;
    assert!(matches!(expect_err(&flipped), ManifestError::BadChecksum));
    let mut sum_flipped = bytes.clone();
    let last = sum_flipped.len() - 1;
    sum_flipped[last] ^= 0x80;
    assert!(matches!(
        expect_err(&sum_flipped),
        ManifestError::BadChecksum
    ));

    for cut in [8, 20, HEADER_LEN, HEADER_LEN + 39, bytes.len() - 1] {
        assert!(
            matches!(expect_err(&bytes[..cut]), ManifestError::Truncated { .. }),
            "cut at {cut}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        expect_err(&longer),
        ManifestError::TrailingBytes { extra: 1 }
    ));
    // A count claiming more entries than fit is "truncated", not an allocation.
    let mut huge = bytes.clone();
    huge[52..60].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(expect_err(&huge), ManifestError::Truncated { .. }));
}

#[test]
fn refuses_bad_geometry() {
    let bad_bs = Manifest {
        block_size: 4096,
        ..sample()
    };
    assert!(matches!(
        bad_bs.validate(),
        Err(ManifestError::BadBlockSize(4096))
    ));
    assert!(matches!(
        expect_err(&bad_bs.encode()),
        ManifestError::BadBlockSize(4096)
    ));

    let too_big = Manifest {
        size_bytes: MAX_SIZE_BYTES + 1,
        ..sample()
    };
    assert!(matches!(
        expect_err(&too_big.encode()),
        ManifestError::TooLarge(_)
    ));
    let at_limit = Manifest {
        size_bytes: MAX_SIZE_BYTES,
        ..sample()
    };
    assert!(Manifest::decode(&at_limit.encode()).is_ok());

    // Block 19 exists only while the volume is longer than 19 blocks.
    let short = Manifest {
        size_bytes: 19 * BLOCK_SIZE,
        ..sample()
    };
    assert!(short.validate().is_err());
    assert!(matches!(
        expect_err(&short.encode()),
        ManifestError::IndexOutOfRange {
            index: 19,
            block_count: 19
        }
    ));
}

#[test]
fn refuses_unsorted_and_duplicate_entries() {
    let bytes = sample().encode();
    let entry = |i: usize| HEADER_LEN + i * ENTRY_LEN;
    // Swap entries 1 and 2 (indexes 1 and 7) -> unsorted.
    let mut swapped = bytes.clone();
    let (e1, e2) = (
        bytes[entry(1)..entry(2)].to_vec(),
        bytes[entry(2)..entry(3)].to_vec(),
    );
    swapped[entry(1)..entry(2)].copy_from_slice(&e2);
    swapped[entry(2)..entry(3)].copy_from_slice(&e1);
    assert!(matches!(
        expect_err(&resign(swapped)),
        ManifestError::Unsorted {
            previous: 7,
            index: 1
        }
    ));
    // Entry 2 repeats index 1 -> duplicate.
    let mut dup = bytes.clone();
    dup[entry(2)..entry(2) + 8].copy_from_slice(&1u64.to_le_bytes());
    assert!(matches!(
        expect_err(&resign(dup)),
        ManifestError::Unsorted {
            previous: 1,
            index: 1
        }
    ));
}

#[test]
fn random_mutations_never_panic() {
    let base = sample().encode();
    let mut rng = rand::rng();
    let mut accepted = 0;
    for round in 0..3000 {
        let mut b = base.clone();
        match round % 4 {
            0 => {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 => b.truncate(rng.random_range(0..b.len())),
            2 => {
                let n = rng.random_range(1..64);
                b.extend((0..n).map(|_| rng.random::<u8>()));
            }
            _ => {
                // Random edits re-signed, so the checks past the checksum run.
                for _ in 0..rng.random_range(1..6) {
                    let i = rng.random_range(0..b.len() - CHECKSUM_LEN);
                    b[i] = rng.random();
                }
                b = resign(b);
            }
        }
        if let Ok(m) = Manifest::decode(&b) {
            accepted += 1;
            // Whatever is accepted must be valid and re-encode identically.
            m.validate().expect("decoded manifest is valid");
            assert_eq!(m.encode(), b);
        }
    }
    // Pure random garbage too.
    for _ in 0..500 {
        let n = rng.random_range(0..300);
        let b: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        assert!(Manifest::decode(&b).is_err());
    }
    assert!(accepted < 3000, "mutations were not detected");
}
