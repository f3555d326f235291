//! Stateful target: the storage server's request handling
//! (`dataplane::handle_request`, what every data-plane connection runs)
//! over a real store in a tmpfs directory, driven by an arbitrary sequence
//! of requests from several peers (backends of the right volume and
//! attachment, of a superseded or future attachment, of another volume;
//! the mirror's primary; a stranger) interleaved with the control
//! service's layout changes (epochs, attachments, roles) and grows.
//!
//! Checked against a model (the copies' bytes, epochs, attachments, roles):
//! - every request gets exactly one response, with its request id;
//! - a copy's epoch and attachment change only through a layout, never
//!   move back, and never jump more than `MAX_EPOCH_JUMP`;
//! - a mutation answered `Ok` came from a peer allowed to make it (a
//!   backend with the volume's current epoch and attachment on a primary,
//!   or the mirror's own primary with the current epoch) and lay within
//!   the volume; anything else changes no byte;
//! - a read answered `Ok` returns the model's bytes;
//! - a superseded attachment is never answered `Ok`.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use basalt_proto::wire::{Flags, Header, Opcode, PeerRole, Status};
use basalt_storage::copy::MAX_EPOCH_JUMP;
use basalt_storage::dataplane::{handle_request, Connections, DataCtx};
use basalt_storage::meta::{PeerMeta, Role};
use basalt_storage::mirror::LinkSettings;
use basalt_storage::session::{DataTls, Peer};
use basalt_storage::store::{Layout, Store};
use libfuzzer_sys::fuzz_target;
use tokio::sync::mpsc;

/// Volumes: 1 starts as a primary, 2 as a mirror of server "p".
const SIZE: u64 = 64 << 10;
const MAX_OPS: usize = 48;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Who {
    /// Backend of `volume` stating attachment current + `delta` (wrapping).
    Backend { volume: u8, delta: i8 },
    /// Replication peer "p" (volume 2's primary) or a stranger.
    Replica { primary: bool },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Epoch {
    Current,
    Delta(i8),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Offset {
    Block(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    Request {
        who: Who,
        volume: u8,
        opcode: u8,
        replica: bool,
        fua: bool,
        epoch: Epoch,
        offset: Offset,
        sectors: u8,
        fill: u8,
    },
    /// The control service's SetLayout: epoch + `epoch`, attachment +
    /// `attachment`, primary or mirror.
    Layout {
        volume: u8,
        epoch: u32,
        attachment: i8,
        primary: bool,
    },
}

#[derive(Clone, Debug)]
struct Model {
    data: Vec<u8>,
    epoch: u64,
    attachment: u64,
    primary: bool,
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Data-plane TLS settings (unused: requests are handled directly).
fn tls() -> Arc<DataTls> {
    static TLS: std::sync::OnceLock<Arc<DataTls>> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let pki = basalt_auth::testing::TestPki::new();
        Arc::new(
            DataTls::new(&pki.issue(basalt_auth::Role::Storage, "s"), false).expect("test TLS"),
        )
    })
    .clone()
}

fn hello(who: Who, models: &[Model; 2]) -> Peer {
    match who {
        Who::Backend { volume, delta } => {
            let v = u64::from(volume % 3);
            let current = models
                .get(v.saturating_sub(1) as usize)
                .map_or(0, |m| m.attachment);
            Peer {
                role: PeerRole::Backend,
                id: "b".into(),
                volume_id: v,
                attachment: current.wrapping_add(delta as i64 as u64),
                read_only: false,
            }
        }
        Who::Replica { primary } => Peer {
            role: PeerRole::Replication,
            id: if primary { "p".into() } else { "x".into() },
            volume_id: 0,
            attachment: 0,
            read_only: false,
        },
    }
}

fn layout(m: &Model) -> Layout {
    Layout {
        role: if m.primary {
            Role::Primary
        } else {
            Role::Mirror
        },
        epoch: m.epoch,
        mirrors: Vec::<PeerMeta>::new(),
        primary_server_id: if m.primary { String::new() } else { "p".into() },
        syncing: vec![],
        attachment: m.attachment,
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::Builder::new()
        .prefix("fuzz-storage-")
        .tempdir_in("/dev/shm")
        .expect("tmpfs dir");
    let _rt = rt().enter();
    let settings = LinkSettings {
        local_server_id: "s".into(),
        tls: tls(),
        reconnect: Duration::from_millis(50),
        connect_timeout: Duration::from_millis(50),
        sync_timeout: Duration::from_millis(50),
        queue_bytes: 1 << 20,
    };
    let store = Arc::new(Store::open(dir.path(), settings, None).expect("store"));
    let mut models = [
        Model {
            data: vec![0; SIZE as usize],
            epoch: 1,
            attachment: 1,
            primary: true,
        },
        Model {
            data: vec![0; SIZE as usize],
            epoch: 1,
            attachment: 1,
            primary: false,
        },
    ];
    for (i, m) in models.iter().enumerate() {
        store
            .create(i as u64 + 1, SIZE, layout(m))
            .expect("create copy");
    }
    let ctx = DataCtx {
        store: store.clone(),
        tls: tls(),
        mirror_timeout: Duration::from_millis(50),
        mirror_sync_timeout: Duration::from_millis(50),
        connections: Arc::new(Connections::new(4)),
        handshake_timeout: Duration::from_secs(1),
        peer_timeout: Duration::from_secs(1),
        response_budget: 1 << 20,
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut payload = Vec::new();
    for (n, op) in ops.into_iter().take(MAX_OPS).enumerate() {
        match op {
            Op::Layout {
                volume,
                epoch,
                attachment,
                primary,
            } => {
                let v = (volume % 2) as usize;
                let mut next = models[v].clone();
                next.epoch = next.epoch.saturating_add(u64::from(epoch));
                next.attachment = next.attachment.wrapping_add(attachment as i64 as u64);
                next.primary = primary;
                let ok = store.set_layout(v as u64 + 1, layout(&next)).is_ok();
                let allowed = next.epoch - models[v].epoch <= MAX_EPOCH_JUMP
                    && next.attachment >= models[v].attachment;
                assert_eq!(ok, allowed, "layout {next:?} from {:?}", models[v].epoch);
                if ok {
                    models[v].epoch = next.epoch;
                    models[v].attachment = next.attachment;
                    models[v].primary = next.primary;
                }
            }
            Op::Request {
                who,
                volume,
                opcode,
                replica,
                fua,
                epoch,
                offset,
                sectors,
                fill,
            } => {
                let peer = hello(who, &models);
                let volume_id = u64::from(volume % 3);
                let model = volume_id
                    .checked_sub(1)
                    .and_then(|i| models.get(i as usize))
                    .cloned();
                let current = model.as_ref().map_or(1, |m| m.epoch);
                let epoch = match epoch {
                    Epoch::Current => current,
                    Epoch::Delta(d) => current.wrapping_add(d as i64 as u64),
                    Epoch::Raw(e) => e,
                };
                let offset = match offset {
                    Offset::Block(b) => u64::from(b) * 4096,
                    Offset::Raw(o) => o,
                };
                let opcode = match opcode % 6 {
                    0 => Opcode::Read,
                    1 => Opcode::Write,
                    2 => Opcode::Flush,
                    3 => Opcode::Discard,
                    4 => Opcode::WriteZeroes,
                    _ => Opcode::Ping,
                };
                let length = u32::from(sectors % 17) * 512;
                let body = vec![fill; length as usize];
                let mut flags = 0;
                if replica {
                    flags |= Flags::REPLICA;
                }
                if fua {
                    flags |= Flags::FUA;
                }
                let mut h = Header {
                    offset,
                    length: if opcode == Opcode::Flush { 0 } else { length },
                    flags: Flags(flags),
                    ..Header::request(opcode, n as u64 + 1, volume_id, epoch)
                };
                if opcode == Opcode::Write {
                    h = h.with_payload(&body);
                    payload.clear();
                    payload.extend_from_slice(&body);
                } else {
                    payload.clear();
                }
                handle_request(&ctx, &peer, h, &mut payload, &tx);
                // Flush and FUA answer from a task: wait for the answer.
                let frame = rt()
                    .block_on(async {
                        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
                    })
                    .expect("every request is answered")
                    .expect("channel open");
                assert!(rx.try_recv().is_err(), "one answer per request");
                let mut hb = [0u8; 64];
                hb.copy_from_slice(&frame[..64]);
                let r = Header::decode(&hb).expect("a valid response header");
                assert_eq!(r.request_id, h.request_id);
                assert!(r.is_response());
                if opcode == Opcode::Ping {
                    assert_eq!(r.status, Status::Ok, "a ping is always answered");
                    continue;
                }
                let Some(m) = model else {
                    assert_ne!(r.status, Status::Ok, "{opcode:?} for volume {volume_id}");
                    continue;
                };
                let v = (volume_id - 1) as usize;
                let in_range = offset
                    .checked_add(u64::from(h.length))
                    .is_some_and(|end| end <= SIZE);
                let allowed = match peer.role {
                    PeerRole::Backend => {
                        peer.volume_id == volume_id
                            && peer.attachment == m.attachment
                            && m.primary
                            && !replica
                    }
                    PeerRole::Replication => peer.id == "p" && !m.primary && replica,
                };
                if r.status == Status::Ok {
                    assert!(allowed, "{opcode:?} from {peer:?} answered Ok on {m:?}");
                    assert_eq!(epoch, m.epoch, "Ok for a foreign epoch");
                }
                if peer.role == PeerRole::Backend
                    && peer.volume_id == volume_id
                    && peer.attachment < m.attachment
                {
                    assert_ne!(r.status, Status::Ok, "a superseded attachment was served");
                }
                if r.status == Status::Ok {
                    let (o, l) = (offset as usize, h.length as usize);
                    match opcode {
                        Opcode::Write => models[v].data[o..o + l].fill(fill),
                        Opcode::Discard | Opcode::WriteZeroes => models[v].data[o..o + l].fill(0),
                        Opcode::Read => {
                            assert!(in_range);
                            assert_eq!(&frame[64..], &models[v].data[o..o + l], "read data");
                        }
                        _ => {}
                    }
                }
            }
        }
        for (i, m) in models.iter().enumerate() {
            let c = store.get(i as u64 + 1).expect("copy");
            assert_eq!(c.epoch(), m.epoch, "only layouts change epochs");
            assert_eq!(c.attachment(), m.attachment);
            assert_eq!(c.meta().epoch, m.epoch, "persisted epoch");
        }
    }
    for (i, m) in models.iter().enumerate() {
        let c = store.get(i as u64 + 1).expect("copy");
        let mut got = vec![0u8; SIZE as usize];
        c.read_at(0, &mut got).expect("read the copy");
        assert!(got == m.data, "copy {} differs from the model", i + 1);
    }
}

fuzz_target!(|ops: Vec<Op>| run(ops));
