//! Data-plane sessions: the TLS handshake (both sides present a cluster
//! certificate), then the sealed Hello that says what the connection is
//! for. See `proto/WIRE.md`.
//!
//! Who may connect as what:
//! - a backend: a node's certificate, and a grant signed by the control
//!   service for that node, naming the volume and the attachment the
//!   Hello names, not expired;
//! - a replicating primary: a storage server's certificate; its id (from
//!   the certificate, not a claim) must be the primary a mirror's metadata
//!   names (checked per frame in `dataplane.rs`).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use basalt_auth::session::{self, ClientConfig, OpenReader, SealWriter, ServerConfig};
use basalt_auth::{Credentials, GrantVerifier, Principal, Role};
use basalt_proto::wire::{Header, Hello, Opcode, PeerRole, Status, MAX_HELLO_PAYLOAD};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::frames::{encode_frame, read_frame_bounded, StallDeadline};

/// This server's data-plane TLS settings and the grant checker.
pub struct DataTls {
    pub server: Arc<ServerConfig>,
    /// For links to mirrors: any storage server of the cluster (the link
    /// checks it reached the one it wanted).
    pub client: Arc<ClientConfig>,
    pub grants: GrantVerifier,
}

impl DataTls {
    /// `clear`: accept backends that ask for frames in the clear, and
    /// replicate in the clear (`--data-encryption off`, trusted networks
    /// only; the handshake and the Hello checks are the same).
    pub fn new(creds: &Credentials, clear: bool) -> anyhow::Result<DataTls> {
        Ok(DataTls {
            server: session::server_config(creds, clear)?,
            client: session::client_config(creds, None, clear)?,
            grants: GrantVerifier::new(&creds.ca_pem)?,
        })
    }
}

/// An authenticated peer and what its connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub role: PeerRole,
    /// The id in its certificate (a node's or a storage server's).
    pub id: String,
    /// For a backend: the volume, attachment and mode of its grant.
    pub volume_id: u64,
    pub attachment: u64,
    pub read_only: bool,
}

/// Decides whether `who` may use a connection as `hello` says, at `now`
/// (unix seconds).
pub fn judge(
    who: &Principal,
    hello: &Hello,
    grants: &GrantVerifier,
    now: u64,
) -> Result<Peer, String> {
    match hello.role {
        PeerRole::Backend => {
            if who.role != Role::Node {
                return Err(format!("{who} may not connect as a backend (nodes only)"));
            }
            let g = grants
                .verify(&hello.grant, now)
                .map_err(|e| e.to_string())?;
            if g.node != who.id {
                return Err(format!("{who} presented a grant issued to node {}", g.node));
            }
            if g.volume_id != hello.volume_id || g.attachment != hello.attachment {
                return Err(format!(
                    "{who} asked for volume {} attachment {} with a grant for volume {} attachment {}",
                    hello.volume_id, hello.attachment, g.volume_id, g.attachment
                ));
            }
            Ok(Peer {
                role: PeerRole::Backend,
                id: who.id.clone(),
                volume_id: g.volume_id,
                attachment: g.attachment,
                read_only: g.read_only,
            })
        }
        PeerRole::Replication => {
            if who.role != Role::Storage {
                return Err(format!("{who} may not replicate (storage servers only)"));
            }
            Ok(Peer {
                role: PeerRole::Replication,
                id: who.id.clone(),
                volume_id: 0,
                attachment: 0,
                read_only: false,
            })
        }
    }
}

fn denied(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

/// The halves of an accepted connection.
pub type ServerHalves = (
    OpenReader<OwnedReadHalf>,
    SealWriter<StallDeadline<OwnedWriteHalf>>,
);

/// Server side: TLS, then the Hello, answered `Ok` or `Unauthorized`.
pub async fn accept(
    mut stream: TcpStream,
    tls: &DataTls,
    peer_timeout: Duration,
) -> io::Result<(Peer, ServerHalves)> {
    let keys = session::accept(&tls.server, &mut stream).await?;
    let (rd, wr) = stream.into_split();
    let mut rd = OpenReader::new(rd, keys.opener);
    let mut wr = SealWriter::new(StallDeadline::new(wr, peer_timeout), keys.sealer);
    let mut buf = Vec::new();
    let h = read_frame_bounded(&mut rd, &mut buf, MAX_HELLO_PAYLOAD).await?;
    if h.opcode != Opcode::Hello || h.is_response() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "expected a Hello first",
        ));
    }
    let verdict = Hello::decode(&buf)
        .map_err(|e| e.to_string())
        .and_then(|hello| {
            judge(
                &keys.peer,
                &hello,
                &tls.grants,
                basalt_auth::grant::now_unix(),
            )
        });
    let status = if verdict.is_ok() {
        Status::Ok
    } else {
        Status::Unauthorized
    };
    wr.write_all(&h.response(status).encode()).await?;
    wr.flush().await?;
    let peer = verdict.map_err(denied)?;
    Ok((peer, (rd, wr)))
}

/// The halves of a connection to a mirror.
pub type ClientHalves = (OpenReader<OwnedReadHalf>, SealWriter<OwnedWriteHalf>);

/// Client side of a replication link to storage server `expect`.
pub async fn connect_mirror(
    mut stream: TcpStream,
    tls: &DataTls,
    expect: &str,
) -> io::Result<ClientHalves> {
    let keys = session::connect(&tls.client, &mut stream).await?;
    if keys.peer.id != expect {
        return Err(denied(format!(
            "{} answered, expected storage server {expect}",
            keys.peer
        )));
    }
    let (rd, wr) = stream.into_split();
    let mut rd = OpenReader::new(rd, keys.opener);
    let mut wr = SealWriter::new(wr, keys.sealer);
    let hello = Hello::replication().encode();
    let h = Header::request(Opcode::Hello, 0, 0, 0).with_payload(&hello);
    wr.write_all(&encode_frame(&h, &hello)).await?;
    wr.flush().await?;
    let mut buf = Vec::new();
    let r = read_frame_bounded(&mut rd, &mut buf, MAX_HELLO_PAYLOAD).await?;
    if r.opcode != Opcode::Hello || !r.is_response() || r.status != Status::Ok {
        return Err(denied(format!(
            "storage server {expect} refused to take replication from us ({:?})",
            r.status
        )));
    }
    Ok((rd, wr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_auth::testing::TestPki;
    use basalt_auth::Grant;

    fn backend_hello(grant: Vec<u8>) -> Hello {
        Hello {
            role: PeerRole::Backend,
            volume_id: 7,
            attachment: 2,
            grant,
        }
    }

    #[test]
    fn only_a_node_with_a_grant_for_this_volume_and_attachment_is_a_backend() {
        let pki = TestPki::new();
        let v = GrantVerifier::new(pki.ca_pem()).unwrap();
        let grant = |node: &str, volume_id, attachment, expires_unix| {
            pki.ca
                .sign_grant(&Grant {
                    volume_id,
                    attachment,
                    node: node.into(),
                    read_only: true,
                    expires_unix,
                })
                .unwrap()
        };
        let n1 = Principal::new(Role::Node, "n1").unwrap();
        let ok = judge(&n1, &backend_hello(grant("n1", 7, 2, 100)), &v, 50).unwrap();
        assert!(ok.read_only && ok.volume_id == 7 && ok.attachment == 2);
        let refused = [
            (n1.clone(), grant("n2", 7, 2, 100)),
            (n1.clone(), grant("n1", 8, 2, 100)),
            (n1.clone(), grant("n1", 7, 1, 100)),
            (n1.clone(), grant("n1", 7, 2, 40)),
            (
                Principal::new(Role::Storage, "n1").unwrap(),
                grant("n1", 7, 2, 100),
            ),
        ];
        for (who, g) in refused {
            assert!(judge(&who, &backend_hello(g), &v, 50).is_err());
        }
        let other = TestPki::new();
        let forged = other
            .ca
            .sign_grant(&Grant {
                volume_id: 7,
                attachment: 2,
                node: "n1".into(),
                read_only: false,
                expires_unix: 100,
            })
            .unwrap();
        assert!(judge(&n1, &backend_hello(forged), &v, 50).is_err());
    }

    #[test]
    fn only_a_storage_server_replicates() {
        let pki = TestPki::new();
        let v = GrantVerifier::new(pki.ca_pem()).unwrap();
        let s1 = Principal::new(Role::Storage, "s1").unwrap();
        assert_eq!(judge(&s1, &Hello::replication(), &v, 0).unwrap().id, "s1");
        for p in [
            Principal::new(Role::Node, "s1").unwrap(),
            Principal::control(),
        ] {
            assert!(judge(&p, &Hello::replication(), &v, 0).is_err(), "{p}");
        }
    }
}
