//! A blocking data-plane client for tests and tools (not a stable API):
//! TLS with given credentials, then a Hello, then frames through the
//! sealed reader and writer.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use basalt_auth::session::{self, OpenReader, SealWriter};
use basalt_auth::testing::TestPki;
use basalt_auth::{Credentials, Grant, Role};
use basalt_proto::wire::{exchange_hello, Hello, PeerRole};

pub struct DataClient {
    /// The socket, for shutdown and timeouts.
    pub s: TcpStream,
    pub r: OpenReader<TcpStream>,
    pub w: SealWriter<TcpStream>,
}

impl DataClient {
    /// Connects as `creds` and says `hello`; fails if either step is
    /// refused.
    pub fn connect(addr: SocketAddr, creds: &Credentials, hello: &Hello) -> io::Result<DataClient> {
        let config = session::client_config(creds, None, false).map_err(io::Error::other)?;
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let keys = session::connect_blocking(&config, &mut s)?;
        s.set_read_timeout(None)?;
        let mut r = OpenReader::new(s.try_clone()?, keys.opener);
        let mut w = SealWriter::new(s.try_clone()?, keys.sealer);
        exchange_hello(&mut r, &mut w, hello)?;
        Ok(DataClient { s, r, w })
    }
}

/// A grant for `node` to address `volume_id` as `attachment`, valid for a
/// day, signed by `pki`.
pub fn grant(
    pki: &TestPki,
    node: &str,
    volume_id: u64,
    attachment: u64,
    read_only: bool,
) -> Vec<u8> {
    pki.ca
        .sign_grant(&Grant {
            volume_id,
            attachment,
            node: node.to_owned(),
            read_only,
            expires_unix: basalt_auth::grant::now_unix() + 86400,
        })
        .expect("sign a test grant")
}

/// Credentials and Hello of a backend on `node` for `volume_id` as
/// `attachment` (read-write), under `pki`.
pub fn backend(pki: &TestPki, node: &str, volume_id: u64, attachment: u64) -> (Credentials, Hello) {
    let hello = Hello {
        role: PeerRole::Backend,
        volume_id,
        attachment,
        grant: grant(pki, node, volume_id, attachment, false),
    };
    (pki.issue(Role::Node, node), hello)
}

/// Credentials and Hello of storage server `id` replicating.
pub fn replication(pki: &TestPki, id: &str) -> (Credentials, Hello) {
    (pki.issue(Role::Storage, id), Hello::replication())
}

/// Server side for fake peers in tests: accepts `stream` as storage server
/// `id` of `pki` (TLS and Hello).
pub async fn accept_as(
    stream: tokio::net::TcpStream,
    pki: &TestPki,
    id: &str,
) -> io::Result<(crate::session::Peer, crate::session::ServerHalves)> {
    let tls = crate::session::DataTls::new(&pki.issue(Role::Storage, id), false)
        .map_err(io::Error::other)?;
    crate::session::accept(stream, &tls, Duration::from_secs(30)).await
}
