use super::*;
use crate::BLOCK_SIZE;

const MAX: usize = BLOCK_SIZE as usize;

fn sample_block() -> Vec<u8> {
    // Compressible but not trivial: a text-like pattern with some varying bytes.
    (0..MAX)
        .map(|i| (i % 251) as u8 ^ ((i / 4096) as u8))
        .collect()
}

#[test]
fn round_trip_compressible_and_incompressible() {
    let block = sample_block();
    let (id, stored) = encode(&block);
    assert_eq!(id, ChunkId::of(&block));
    assert_eq!(&stored[..4], MAGIC);
    assert_eq!(stored[4], CODEC_ZSTD);
    assert!(
        stored.len() < block.len() / 4,
        "zstd should shrink a patterned block"
    );
    assert_eq!(decode(&id, &stored, MAX).expect("decode"), block);

    let mut noise = vec![0u8; 4096];
    rand::fill(&mut noise[..]);
    let (nid, nstored) = encode(&noise);
    assert_eq!(nstored[4], CODEC_RAW, "incompressible data is stored raw");
    assert_eq!(nstored.len(), HEADER_LEN + noise.len());
    assert_eq!(decode(&nid, &nstored, MAX).expect("decode raw"), noise);

    let (eid, estored) = encode(&[]);
    assert_eq!(
        decode(&eid, &estored, MAX).expect("decode empty"),
        Vec::<u8>::new()
    );
}

#[test]
fn flipped_bits_never_yield_wrong_data() {
    // 16 KiB keeps the exhaustive loop fast in debug builds.
    let block: Vec<u8> = sample_block()[..16 << 10].to_vec();
    let (id, stored) = encode(&block);
    assert_eq!(stored[4], CODEC_ZSTD);
    let (mut refused, mut harmless) = (0, 0);
    for pos in 0..stored.len() {
        for bit in 0..8 {
            let mut bad = stored.clone();
            bad[pos] ^= 1 << bit;
            match decode(&id, &bad, MAX) {
                // Some bits of a zstd frame are unused padding: a flip there
                // still decodes to the right bytes, which the hash proves.
                Ok(data) => {
                    assert_eq!(data, block, "flip at byte {pos} bit {bit}: wrong data");
                    harmless += 1;
                }
                Err(e) => {
                    refused += 1;
                    if pos >= HEADER_LEN {
                        assert!(
                            matches!(e, ChunkError::Corrupt { .. }),
                            "flip at byte {pos} bit {bit}: {e:?}"
                        );
                    }
                }
            }
        }
    }
    assert!(
        refused > harmless * 20,
        "{refused} refused, {harmless} harmless"
    );
    // The magic, codec and length bytes are never harmless.
    for pos in 0..HEADER_LEN {
        let mut bad = stored.clone();
        bad[pos] ^= 0x01;
        assert!(
            decode(&id, &bad, MAX).is_err(),
            "header flip at {pos} accepted"
        );
    }
}

#[test]
fn wrong_id_is_corrupt() {
    let (_, stored) = encode(b"hello");
    let other = ChunkId::of(b"world");
    let err = decode(&other, &stored, MAX).expect_err("wrong id accepted");
    assert!(matches!(err, ChunkError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&other.hex()));
}

#[test]
fn huge_claimed_length_is_refused_before_allocating() {
    let (id, mut stored) = encode(&sample_block());
    stored[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
    // If this allocated 4 GiB first it would still pass, so also check the
    // error kind carries the claimed length and the bound.
    match decode(&id, &stored, MAX) {
        Err(ChunkError::TooLarge { len, max, .. }) => {
            assert_eq!(len, u64::from(u32::MAX));
            assert_eq!(max, MAX);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // A length within max_len but a zstd frame that expands past it is corrupt.
    let (id, stored) = encode(&vec![0u8; 1 << 20]);
    let res = decode(&id, &stored, 1 << 20);
    assert!(res.is_ok());
    let mut lying = stored.clone();
    lying[5..9].copy_from_slice(&1024u32.to_le_bytes());
    assert!(matches!(
        decode(&id, &lying, 1 << 20),
        Err(ChunkError::Corrupt { .. })
    ));
}

#[test]
fn short_and_foreign_inputs_are_refused() {
    let id = ChunkId::of(b"x");
    for input in [
        &b""[..],
        b"BCK",
        b"BCK1\x01\x00\x00",
        b"NOPE\x01\x00\x00\x00\x00",
    ] {
        assert!(matches!(
            decode(&id, input, MAX),
            Err(ChunkError::Corrupt { .. })
        ));
    }
    let err = decode(&id, b"BCK1\x07\x01\x00\x00\x00x", MAX).expect_err("codec 7");
    assert!(matches!(err, ChunkError::UnknownCodec { codec: 7, .. }));
}

#[test]
fn zero_detection() {
    assert!(is_zero(&[]));
    assert!(is_zero(&vec![0u8; MAX]));
    assert!(is_zero(&[0u8; 63]));
    for len in [1usize, 63, 64, 65, 200, MAX] {
        for pos in [0, len / 2, len - 1] {
            let mut b = vec![0u8; len];
            b[pos] = 0x10;
            assert!(!is_zero(&b), "len {len}, non-zero byte at {pos}");
        }
    }
}

#[test]
fn hex_round_trip_and_errors() {
    let id = ChunkId::of(b"abc");
    assert_eq!(
        id.hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(id.to_string(), id.hex());
    assert_eq!(format!("{id:?}"), format!("ChunkId({})", id.hex()));
    assert_eq!(ChunkId::from_hex(&id.hex()).expect("parse"), id);
    assert_eq!(
        ChunkId::from_hex(&id.hex().to_uppercase()).expect("parse upper"),
        id
    );
    for bad in [
        "",
        "ab",
        &"g".repeat(64),
        &"a".repeat(63),
        &"a".repeat(65),
        "é",
    ] {
        assert!(ChunkId::from_hex(bad).is_err(), "{bad:?} accepted");
    }
}
