//! A primary facing a failed mirror: a hung mirror is cut off at the first
//! overdue acknowledgement (not one timeout per write), and the loss of an
//! in-sync mirror is reported to the control service until the layout no
//! longer lists it.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt_proto::control as pb;
use basalt_proto::wire::{Opcode, PeerRole, Status};
use basalt_storage::fake_control;
use basalt_storage::meta::Role;
use basalt_storage::store::Layout;
use basalt_storage::testing::{LocalServer, Options};
use common::{Client, SIZE, VOL};
use tokio::sync::mpsc;
use tonic::Response;

type R<T> = Result<Response<T>, tonic::Status>;

/// The fake control's behaviour: the first report is answered REACHABLE
/// (nothing changed: the reporter must retry); the second one removes the
/// mirror from the primary's layout (epoch + 1) before it answers
/// MIRROR_REMOVED, as the real control service does.
struct FakeControl {
    reports: mpsc::UnboundedSender<pb::ReportUnreachableRequest>,
    seen: Mutex<u32>,
    primary: Arc<Mutex<Option<Arc<LocalServer>>>>,
}

impl FakeControl {
    async fn report(&self, r: pb::ReportUnreachableRequest) -> R<pb::ReportUnreachableResponse> {
        let _ = self.reports.send(r.clone());
        let n = {
            let mut seen = self.seen.lock().unwrap();
            *seen += 1;
            *seen
        };
        if n == 1 {
            return Ok(Response::new(pb::ReportUnreachableResponse {
                outcome: pb::ReportOutcome::Reachable as i32,
                epoch: r.epoch,
                ..Default::default()
            }));
        }
        let primary = self.primary.lock().unwrap().clone();
        let primary = primary.ok_or_else(|| tonic::Status::unavailable("no primary yet"))?;
        let epoch = r.epoch + 1;
        let layout = Layout {
            role: Role::Primary,
            epoch,
            mirrors: vec![],
            primary_server_id: String::new(),
            syncing: vec![],
            attachment: 0,
        };
        tokio::task::spawn_blocking(move || primary.set_layout(VOL, layout))
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ReportUnreachableResponse {
            outcome: pb::ReportOutcome::MirrorRemoved as i32,
            epoch,
            ..Default::default()
        }))
    }
}

/// A mirror that completes the handshake on its first connection and then
/// reads replica frames without ever answering (a stopped process or a
/// blackholed network); later connections are accepted by the kernel but
/// never get a handshake.
async fn hung_mirror(listener: tokio::net::TcpListener) {
    let mut held = Vec::new();
    let mut first = true;
    loop {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        if first {
            first = false;
            let pki = basalt_storage::testing::shared_pki();
            let Ok((_, (mut rd, wr))) =
                basalt_storage::data_client::accept_as(s, &pki, "s-hung").await
            else {
                return;
            };
            tokio::spawn(async move {
                let _wr = wr;
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut rd, &mut sink).await;
            });
        } else {
            held.push(s);
        }
    }
}

#[test]
fn a_hung_mirror_is_cut_off_at_once_and_reported_until_removed() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let primary_slot = Arc::new(Mutex::new(None));
    // The fake control service and the primary share one CA.
    let pki = basalt_storage::testing::shared_pki();
    let control_addr: SocketAddr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let svc = Arc::new(FakeControl {
            reports: reports_tx,
            seen: Mutex::new(0),
            primary: primary_slot.clone(),
        });
        let handler: fake_control::ReportHandler = Arc::new(move |r| {
            let svc = svc.clone();
            Box::pin(async move { svc.report(r).await })
        });
        tokio::spawn(fake_control::serve(l, &pki.control(), handler));
        addr
    });
    let mirror_addr: SocketAddr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(hung_mirror(l));
        addr
    });

    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_millis(300);
    let primary = Arc::new(
        LocalServer::start_with(
            dir.path(),
            "s-primary",
            Options {
                control: Some(format!("http://{control_addr}")),
                pki: Some(pki.clone()),
                mirror_timeout: timeout,
                ..Options::default()
            },
        )
        .unwrap(),
    );
    primary
        .create_primary_with_mirrors(VOL, SIZE, &[("s-hung", mirror_addr)])
        .unwrap();
    primary
        .wait_replicating(VOL, Duration::from_secs(10))
        .unwrap();
    *primary_slot.lock().unwrap() = Some(primary.clone());

    let mut c = Client::connect(primary.data_addr, PeerRole::Backend, "b1");
    // The first write waits out the deadline once...
    let t = Instant::now();
    assert_eq!(
        c.op(Opcode::Write, 1, 0, 4096, &[1; 4096]),
        Status::MirrorUnavailable
    );
    let first = t.elapsed();
    assert!(first >= timeout, "answered before the deadline: {first:?}");
    assert!(
        first < timeout + Duration::from_millis(700),
        "hung mirror detected late: {first:?}"
    );
    // ...then the link is down, and later writes fail at once instead of
    // each waiting for its own deadline.
    let t = Instant::now();
    for i in 0..5u64 {
        assert_eq!(
            c.op(Opcode::Write, 1, 4096 * i, 4096, &[2; 4096]),
            Status::MirrorUnavailable
        );
    }
    let five = t.elapsed();
    assert!(
        five < timeout,
        "writes after the cut-off each waited for the hung mirror: {five:?}"
    );
    println!("hung mirror: first write answered after {first:?}, the next five in {five:?}");

    // Reported with the right volume, epoch and address; after REACHABLE
    // the primary reports again.
    for n in 1..=2 {
        let r = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), reports.recv()).await })
            .unwrap_or_else(|_| panic!("report {n} not sent"))
            .unwrap();
        assert_eq!(r.volume_id, VOL);
        assert_eq!(r.epoch, 1);
        assert_eq!(r.data_address, mirror_addr.to_string());
        assert_eq!(r.reporter, "s-primary");
    }
    // The second report removed the mirror (epoch 2): writes are
    // acknowledged again, and no more reports are sent about it.
    common::wait_until(
        Duration::from_secs(10),
        "the layout without the mirror",
        || primary.epoch(VOL) == Some(2),
    );
    assert_eq!(c.op(Opcode::Write, 2, 0, 4096, &[3; 4096]), Status::Ok);
    let more = rt
        .block_on(async { tokio::time::timeout(Duration::from_millis(800), reports.recv()).await });
    assert!(
        more.is_err(),
        "reported a mirror the layout no longer lists: {more:?}"
    );
    drop(c);
    *primary_slot.lock().unwrap() = None;
}
