//! Helpers shared by the integration tests: a blocking data-plane client.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use basalt_auth::session::{OpenReader, SealWriter};
use basalt_proto::wire::{read_frame, write_frame, Header, Opcode, PeerRole, Status};
use basalt_storage::data_client::{self, DataClient};
use basalt_storage::testing::shared_pki;

pub const VOL: u64 = 11;
pub const SIZE: u64 = 8 << 20;

pub struct Client {
    /// The socket (shutdown, timeouts); frames go through `r` and `w`.
    pub s: TcpStream,
    pub r: OpenReader<TcpStream>,
    pub w: SealWriter<TcpStream>,
    next: u64,
    buf: Vec<u8>,
}

impl Client {
    /// Connects as `role` with the certificate of `id` (under the shared
    /// test CA); a backend serves volume [`VOL`] with attachment 0.
    pub fn connect(addr: SocketAddr, role: PeerRole, id: &str) -> Client {
        Self::connect_as(addr, role, id, VOL, 0)
    }

    /// A backend for `volume_id` as `attachment` (both ignored for
    /// replication). Panics if refused.
    pub fn connect_as(
        addr: SocketAddr,
        role: PeerRole,
        id: &str,
        volume_id: u64,
        attachment: u64,
    ) -> Client {
        Self::try_connect_as(addr, role, id, volume_id, attachment).unwrap()
    }

    pub fn try_connect_as(
        addr: SocketAddr,
        role: PeerRole,
        id: &str,
        volume_id: u64,
        attachment: u64,
    ) -> std::io::Result<Client> {
        let pki = shared_pki();
        let (creds, hello) = match role {
            PeerRole::Backend => data_client::backend(&pki, id, volume_id, attachment),
            PeerRole::Replication => data_client::replication(&pki, id),
        };
        let DataClient { s, r, w } = DataClient::connect(addr, &creds, &hello)?;
        Ok(Client {
            s,
            r,
            w,
            next: 1,
            buf: Vec::new(),
        })
    }

    /// Writes raw (already encoded) frames, sealed.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    pub fn call(&mut self, mut h: Header, payload: &[u8]) -> (Header, Vec<u8>) {
        h.request_id = self.next;
        self.next += 1;
        let h = h.with_payload(payload);
        write_frame(&mut self.w, &h, &[payload]).unwrap();
        let r = read_frame(&mut self.r, &mut self.buf).unwrap();
        assert_eq!(r.request_id, h.request_id);
        (r, self.buf.clone())
    }

    pub fn op(&mut self, op: Opcode, epoch: u64, offset: u64, len: u32, payload: &[u8]) -> Status {
        let h = Header {
            offset,
            length: len,
            ..Header::request(op, 0, VOL, epoch)
        };
        self.call(h, payload).0.status
    }

    pub fn read(&mut self, epoch: u64, offset: u64, len: u32) -> (Status, Vec<u8>) {
        let h = Header {
            offset,
            length: len,
            ..Header::request(Opcode::Read, 0, VOL, epoch)
        };
        let (r, p) = self.call(h, &[]);
        (r.status, p)
    }
}

/// Polls `cond` until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
