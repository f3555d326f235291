//! Sessions over real TCP: a blocking client against an async server.

use std::io::{Read, Write};
use std::net::TcpStream;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::testing::TestPki;
use crate::{Principal, Role};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Echoes sealed data back, after sending the peer's principal.
async fn echo_server(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<Principal> {
    let (mut s, _) = listener.accept().await?;
    let keys = accept(&config, &mut s).await?;
    let (rd, wr) = s.into_split();
    let mut rd = OpenReader::new(rd, keys.opener);
    let mut wr = SealWriter::new(wr, keys.sealer);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            wr.flush().await?;
            return Ok(keys.peer);
        }
        wr.write_all(&buf[..n]).await?;
        wr.flush().await?;
    }
}

fn client(addr: std::net::SocketAddr, config: &Arc<ClientConfig>) -> io::Result<(Keys, TcpStream)> {
    let mut s = TcpStream::connect(addr)?;
    let keys = connect_blocking(config, &mut s)?;
    Ok((keys, s))
}

#[test]
fn a_node_and_a_storage_server_exchange_sealed_data_both_ways() {
    let pki = TestPki::new();
    let server = server_config(&pki.issue(Role::Storage, "s1"), false).unwrap();
    let node = client_config(&pki.issue(Role::Node, "n1"), None, false).unwrap();
    let rt = rt();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = rt.spawn(echo_server(listener, server));
    let (keys, s) = client(addr, &node).unwrap();
    assert_eq!(keys.peer, Principal::new(Role::Storage, "s1").unwrap());
    let mut wr = SealWriter::new(s.try_clone().unwrap(), keys.sealer);
    let mut rd = OpenReader::new(s.try_clone().unwrap(), keys.opener);
    // Sizes around the record bound, and one many records long.
    let data: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i * 31 % 251) as u8).collect();
    for len in [
        1,
        4096,
        record::MAX_PLAINTEXT,
        record::MAX_PLAINTEXT + 1,
        data.len(),
    ] {
        wr.write_all(&data[..len]).unwrap();
        let mut back = vec![0u8; len];
        rd.read_exact(&mut back).unwrap();
        assert!(back == data[..len], "{len} bytes came back altered");
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let peer = rt.block_on(srv).unwrap().unwrap();
    assert_eq!(peer, Principal::new(Role::Node, "n1").unwrap());
    // The connection then ends cleanly.
    let mut rest = Vec::new();
    assert_eq!(rd.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn peers_outside_the_cluster_or_in_the_wrong_role_are_refused() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let rt = rt();
    let run = |server_creds: crate::Credentials, client: Arc<ClientConfig>| {
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let srv = rt.spawn(echo_server(
            listener,
            server_config(&server_creds, false).unwrap(),
        ));
        let c = client_test(addr, &client);
        let s = rt.block_on(srv).unwrap();
        (c, s)
    };
    // A client with a certificate of another CA.
    let (c, s) = run(
        pki.issue(Role::Storage, "s1"),
        client_config(&other.issue(Role::Node, "n1"), None, false).unwrap(),
    );
    assert!(c.is_err() && s.is_err(), "foreign client: {c:?} {s:?}");
    // A server of another CA.
    let (c, _) = run(
        other.issue(Role::Storage, "s1"),
        client_config(&pki.issue(Role::Node, "n1"), None, false).unwrap(),
    );
    assert!(c.is_err(), "foreign server accepted");
    // A node pretending to be a storage server.
    let (c, _) = run(
        pki.issue(Role::Node, "n2"),
        client_config(&pki.issue(Role::Node, "n1"), None, false).unwrap(),
    );
    let e = c.unwrap_err().to_string();
    assert!(e.contains("is not a storage server"), "{e}");
    // The wrong storage server.
    let (c, _) = run(
        pki.issue(Role::Storage, "s2"),
        client_config(&pki.issue(Role::Storage, "s1"), Some("s3"), false).unwrap(),
    );
    let e = c.unwrap_err().to_string();
    assert!(e.contains("expected storage server s3"), "{e}");
    // The expected one.
    let (c, s) = run(
        pki.issue(Role::Storage, "s3"),
        client_config(&pki.issue(Role::Storage, "s1"), Some("s3"), false).unwrap(),
    );
    assert!(c.is_ok() && s.is_ok(), "{c:?} {s:?}");
}

/// Connects, then closes: the server's result tells whether it accepted.
fn client_test(addr: std::net::SocketAddr, config: &Arc<ClientConfig>) -> io::Result<Principal> {
    let (keys, s) = client(addr, config)?;
    // The server sees the client's Finished only once it reads; a refused
    // client certificate shows up as an alert on our next read.
    let mut wr = SealWriter::new(s.try_clone()?, keys.sealer);
    wr.write_all(b"x")?;
    let mut rd = OpenReader::new(s.try_clone()?, keys.opener);
    let mut b = [0u8; 1];
    rd.read_exact(&mut b)?;
    s.shutdown(std::net::Shutdown::Write)?;
    Ok(keys.peer)
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let pki = TestPki::new();
    let rt = rt();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = rt.spawn(echo_server(
        listener,
        server_config(&pki.issue(Role::Storage, "s1"), false).unwrap(),
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::pem::PemObject::from_pem_slice(pki.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let anon =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let anon = Arc::new(anon);
    let mut s = TcpStream::connect(addr).unwrap();
    let name = rustls::pki_types::ServerName::try_from("s1.storage.basalt").unwrap();
    let c = ClientConnection::new(anon, name).unwrap();
    let _ = drive::handshake_blocking(Connection::Client(c), &mut s);
    let _ = s.write_all(b"hello");
    let r = rt.block_on(srv).unwrap();
    assert!(r.is_err(), "a client without a certificate was accepted");
    // And a peer speaking something else entirely.
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = rt.spawn(echo_server(
        listener,
        server_config(&pki.issue(Role::Storage, "s1"), false).unwrap(),
    ));
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0xff; 64]).unwrap();
    assert!(rt.block_on(srv).unwrap().is_err());
}

#[test]
fn frames_in_the_clear_only_when_both_sides_agree() {
    let pki = TestPki::new();
    let rt = rt();
    let run = |accept_clear: bool, clear: bool| {
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = server_config(&pki.issue(Role::Storage, "s1"), accept_clear).unwrap();
        let srv = rt.spawn(echo_server(listener, server));
        let config = client_config(&pki.issue(Role::Node, "n1"), None, clear).unwrap();
        let r = client(addr, &config).map(|(keys, s)| {
            let plain = keys.sealer.is_none() && keys.opener.is_none();
            let mut wr = SealWriter::new(s.try_clone().unwrap(), keys.sealer);
            let mut rd = OpenReader::new(s.try_clone().unwrap(), keys.opener);
            wr.write_all(b"0123456789").unwrap();
            let mut back = [0u8; 10];
            rd.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"0123456789");
            s.shutdown(std::net::Shutdown::Write).unwrap();
            plain
        });
        let _ = rt.block_on(srv);
        r
    };
    // A server that requires encryption refuses a client asking for the
    // clear; one that accepts both encrypts unless asked not to.
    assert!(run(false, true).is_err());
    assert!(!run(false, false).unwrap());
    assert!(!run(true, false).unwrap());
    assert!(run(true, true).unwrap());
}
