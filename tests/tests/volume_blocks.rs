//! Block access to volumes by id (seed 002's "upload block" / "download
//! block"), through the CLI and the gRPC API of a real cluster: an image
//! uploaded into a detached volume, read back through the volume's backend
//! and downloaded; refused while the volume is attached read-write; bad
//! blocks refused without changing anything; a volume still loading its
//! snapshot downloaded whole at once.

use std::time::Duration;

use basalt_proto::control as pb;
use basalt_tests::controlplane::ManagedCluster;
use basalt_tests::snaps::{attach, noise, read_all, snapshot, MIB};
use sha2::{Digest, Sha256};

const BLOCK: usize = 512 << 10;
const SIZE: usize = 16 * MIB;

fn sha(d: &[u8]) -> Vec<u8> {
    Sha256::digest(d).to_vec()
}

#[test]
fn upload_download_and_refusals() {
    let root = tempfile::Builder::new()
        .prefix("basalt-volblocks-")
        .tempdir()
        .unwrap();
    // A slow background hydration: the restored volume below is still cold
    // when it is downloaded.
    let args = vec!["--hydration-rate-mib".to_owned(), "1".to_owned()];
    let c = ManagedCluster::start_with_control_args(root.path(), 3, &args).unwrap();
    c.cli_json(&["volume", "create", "vb", "--size", "16M"])
        .unwrap();

    // An image ending inside a block: the rest of that block keeps the
    // volume's data (zeroes here).
    let image = noise(3, 6 * MIB + 4096);
    let img = root.path().join("in.raw");
    std::fs::write(&img, &image).unwrap();
    let up = c
        .cli_json(&["volume", "upload", "vb", img.to_str().unwrap()])
        .expect("volume upload");
    assert_eq!(up["blocks"], 13, "{up}");
    let mut want = image.clone();
    want.resize(SIZE, 0);
    let out = root.path().join("out.raw");
    c.cli_json(&["volume", "download", "vb", out.to_str().unwrap()])
        .expect("volume download");
    assert!(
        std::fs::read(&out).unwrap() == want,
        "downloaded image differs"
    );

    // Refused while attached read-write; the backend sees the upload.
    let mut b = attach(&c, "vb");
    assert!(
        read_all(&mut b, SIZE) == want,
        "the backend reads what was uploaded"
    );
    for args in [
        vec!["volume", "upload", "vb", img.to_str().unwrap()],
        vec!["volume", "download", "vb", out.to_str().unwrap()],
    ] {
        let (ok, _, err) = c.cli(&args).unwrap();
        assert!(
            !ok && err.contains("attached read-write"),
            "{args:?}: {err}"
        );
    }
    drop(b);
    c.cli_json(&["volume", "detach", "vb"]).unwrap();

    // Bad blocks through the API: refused, nothing changed.
    let mut cl = c.client().unwrap();
    let vol = || {
        Some(pb::VolumeRef {
            name: "vb".into(),
            tenant: "default".into(),
            id: 0,
        })
    };
    let other = noise(9, BLOCK);
    let bad = [
        (2u64, other.clone(), sha(b"not it"), "SHA-256"),
        (32, other.clone(), sha(&other), "out of range"),
        (2, other[..4096].to_vec(), sha(&other[..4096]), "exactly"),
    ];
    for (index, data, sum, why) in bad {
        let e =
            c.rt.block_on(cl.write_volume_block(pb::WriteVolumeBlockRequest {
                volume: vol(),
                block_index: index,
                data,
                sha256: sum,
            }))
            .expect_err("a bad write must fail");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(why), "{why}: {}", e.message());
    }
    let r =
        c.rt.block_on(cl.read_volume_block(pb::ReadVolumeBlockRequest {
            volume: vol(),
            block_index: 2,
        }))
        .unwrap()
        .into_inner();
    assert!(r.data == want[2 * BLOCK..3 * BLOCK] && r.sha256 == sha(&r.data));

    // A volume still loading its snapshot is downloaded whole at once.
    assert_eq!(snapshot(&c, "vb.s1").unwrap()["state"], "COMPLETE");
    let v = c
        .cli_json(&["volume", "create", "cold", "--from-snapshot", "vb.s1"])
        .unwrap();
    assert_eq!(v["hydration"]["complete"], false, "{v}");
    let out2 = root.path().join("cold.raw");
    c.cli_json(&["volume", "download", "cold", out2.to_str().unwrap()])
        .expect("download of a hydrating volume");
    assert!(
        std::fs::read(&out2).unwrap() == want,
        "hydrating volume differs"
    );
    c.wait_volume("cold", Duration::from_secs(120), |v| {
        v["hydration"]["complete"] == true
    })
    .unwrap();
}
