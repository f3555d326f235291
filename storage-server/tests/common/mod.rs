//! Helpers shared by the integration tests: a blocking data-plane client.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use basalt_proto::wire::{
    read_frame, write_frame, Header, Hello, HelloChallenge, Identity, Opcode, PeerRole, Status,
};

pub const VOL: u64 = 11;
pub const SIZE: u64 = 8 << 20;

pub struct Client {
    pub s: TcpStream,
    next: u64,
    buf: Vec<u8>,
}

impl Client {
    /// Connects as `role`; a backend serves volume [`VOL`] with attachment 0.
    pub fn connect(addr: SocketAddr, role: PeerRole, id: &str) -> Client {
        let volume_id = if role == PeerRole::Backend { VOL } else { 0 };
        Self::connect_as(
            addr,
            Identity {
                role,
                peer_id: id,
                volume_id,
                attachment: 0,
            },
        )
    }

    pub fn connect_as(addr: SocketAddr, who: Identity<'_>) -> Client {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = Vec::new();
        let h = read_frame(&mut s, &mut buf).unwrap();
        assert_eq!(h.opcode, Opcode::Hello);
        let ch = HelloChallenge::decode(&buf).unwrap();
        let body = Hello::new(b"", &ch, who).encode();
        write_frame(
            &mut s,
            &Header::request(Opcode::Hello, 0, 0, 0).with_payload(&body),
            &[&body],
        )
        .unwrap();
        let r = read_frame(&mut s, &mut buf).unwrap();
        assert_eq!(r.status, Status::Ok);
        Client { s, next: 1, buf }
    }

    pub fn call(&mut self, mut h: Header, payload: &[u8]) -> (Header, Vec<u8>) {
        h.request_id = self.next;
        self.next += 1;
        let h = h.with_payload(payload);
        write_frame(&mut self.s, &h, &[payload]).unwrap();
        let r = read_frame(&mut self.s, &mut self.buf).unwrap();
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
