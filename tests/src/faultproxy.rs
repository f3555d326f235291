//! A TCP proxy that a test can cut: the network between a server and
//! everyone else, without root or network namespaces.
//!
//! While cut, every byte in either direction is read and dropped (a
//! blackhole: senders see no error, just silence) and new connections are
//! accepted and held without reaching the target. Healing closes every
//! connection that lived through the cut, so peers reconnect afresh (as they
//! would after their own timeouts on a real network).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

struct Shared {
    target: SocketAddr,
    cut: AtomicBool,
    stop: AtomicBool,
    /// Every open socket (client and upstream sides), to close on heal.
    socks: Mutex<Vec<TcpStream>>,
    /// Bytes dropped while cut.
    dropped: AtomicU64,
    /// Added before every forwarded read (a slow path), milliseconds.
    delay_ms: AtomicU64,
}

pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port, forwarding to `target`.
    pub fn start(target: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("fault proxy: bind")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            socks: Mutex::default(),
            dropped: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || accept_loop(listener, s))?;
        Ok(FaultProxy { addr, shared })
    }

    /// The address clients should use.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts dropping everything.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    /// Stops dropping; closes the connections that lived through the cut.
    pub fn heal(&self) {
        let socks = std::mem::take(&mut *lock(&self.shared.socks));
        for s in socks {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Delays every forwarded read by `d` in both directions (a slow but
    /// working path); zero restores full speed.
    pub fn set_delay(&self, d: Duration) {
        self.shared
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Bytes dropped while cut so far.
    pub fn dropped_bytes(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for s in std::mem::take(&mut *lock(&self.shared.socks)) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, s: Arc<Shared>) {
    for client in listener.incoming() {
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let _ = client.set_nodelay(true);
        if s.cut.load(Ordering::SeqCst) {
            // Held: the handshake never answers, like a dead network path.
            if let Ok(c) = client.try_clone() {
                lock(&s.socks).push(c);
            }
            let s2 = s.clone();
            let _ = std::thread::Builder::new()
                .name("proxy-held".into())
                .spawn(move || pump(client, None, s2));
            continue;
        }
        let Ok(upstream) = TcpStream::connect_timeout(&s.target, Duration::from_secs(1)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = upstream.set_nodelay(true);
        let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
            client.try_clone(),
            upstream.try_clone(),
            client.try_clone(),
            upstream.try_clone(),
        ) else {
            continue;
        };
        lock(&s.socks).extend([c3, u3]);
        let (sa, sb) = (s.clone(), s.clone());
        let _ = std::thread::Builder::new()
            .name("proxy-up".into())
            .spawn(move || pump(client, Some(upstream), sa));
        let _ = std::thread::Builder::new()
            .name("proxy-down".into())
            .spawn(move || pump(u2, Some(c2), sb));
    }
}

/// Copies `from` to `to` until either closes; drops the bytes while cut
/// (or always, with no `to`).
fn pump(mut from: TcpStream, mut to: Option<TcpStream>, s: Arc<Shared>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = s.delay_ms.load(Ordering::SeqCst);
        if delay > 0 && to.is_some() {
            std::thread::sleep(Duration::from_millis(delay));
        }
        match to.as_mut() {
            Some(t) if !s.cut.load(Ordering::SeqCst) => {
                if t.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            _ => {
                s.dropped.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    if let Some(t) = to {
        let _ = t.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut w = c.try_clone().unwrap();
                    let mut r = std::io::BufReader::new(c);
                    let mut line = String::new();
                    while r.read_line(&mut line).unwrap_or(0) > 0 {
                        if w.write_all(line.as_bytes()).is_err() {
                            break;
                        }
                        line.clear();
                    }
                });
            }
        });
        a
    }

    fn roundtrip(c: &mut TcpStream, msg: &str) -> std::io::Result<String> {
        c.write_all(msg.as_bytes())?;
        let mut buf = vec![0u8; msg.len()];
        c.read_exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    #[test]
    fn forwards_blackholes_and_heals() {
        let p = FaultProxy::start(echo_server()).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert_eq!(roundtrip(&mut c, "hello\n").unwrap(), "hello\n");

        p.cut();
        let e = roundtrip(&mut c, "lost\n").unwrap_err();
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        );
        // A new connection is accepted but goes nowhere.
        let mut c2 = TcpStream::connect(p.addr()).unwrap();
        c2.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(roundtrip(&mut c2, "void\n").is_err());
        assert!(p.dropped_bytes() >= 10);

        p.heal();
        // Connections that lived through the cut are closed...
        let mut b = [0u8; 1];
        assert!(matches!(c.read(&mut b), Ok(0) | Err(_)));
        // ...and new ones work again.
        let mut c3 = TcpStream::connect(p.addr()).unwrap();
        c3.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(roundtrip(&mut c3, "back\n").unwrap(), "back\n");
    }

    #[test]
    fn delays_every_read() {
        let p = FaultProxy::start(echo_server()).unwrap();
        let mut c = TcpStream::connect(p.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        p.set_delay(Duration::from_millis(150));
        let t = std::time::Instant::now();
        assert_eq!(roundtrip(&mut c, "slow\n").unwrap(), "slow\n");
        // Delayed on the way there and on the way back.
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        p.set_delay(Duration::ZERO);
        assert_eq!(roundtrip(&mut c, "fast\n").unwrap(), "fast\n");
    }
}
