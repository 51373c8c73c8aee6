//! A minimal reference relay (`zpath-perf relay`): SOCKS5 entry, captured outbound
//! (SO_ORIGINAL_DST), upstream sockets marked, a readiness endpoint. It exists so the
//! harness can be tested end to end without any real proxy; it is not a product (one
//! thread per direction, no limits).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};

use crate::{sys, Error, Result};

/// Where the relay listens and how it marks upstream sockets.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// SOCKS5 entry.
    pub socks5: Option<SocketAddr>,
    /// Captured outbound entry (iptables REDIRECT).
    pub outbound: Option<SocketAddr>,
    /// Readiness endpoint (answers 200 to anything).
    pub readiness: Option<SocketAddr>,
    /// SO_MARK for upstream sockets (0: none).
    pub mark: u32,
}

/// A relay with its listeners bound.
#[derive(Debug)]
pub struct Relay {
    socks5: Option<TcpListener>,
    outbound: Option<TcpListener>,
    readiness: Option<TcpListener>,
    mark: u32,
}

impl Relay {
    /// Binds every configured listener.
    pub fn bind(cfg: &RelayConfig) -> Result<Relay> {
        let bind = |a: Option<SocketAddr>| {
            a.map(|a| TcpListener::bind(a).map_err(|e| Error::io(format!("binding {a}"), e)))
                .transpose()
        };
        Ok(Relay {
            socks5: bind(cfg.socks5)?,
            outbound: bind(cfg.outbound)?,
            readiness: bind(cfg.readiness)?,
            mark: cfg.mark,
        })
    }

    /// The bound SOCKS5 address, if any.
    pub fn socks5_addr(&self) -> Option<SocketAddr> {
        self.socks5.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves on background threads and returns at once.
    pub fn spawn(self) {
        let mark = self.mark;
        if let Some(l) = self.socks5 {
            std::thread::spawn(move || accept_loop(l, mark, Entry::Socks5));
        }
        if let Some(l) = self.outbound {
            std::thread::spawn(move || accept_loop(l, mark, Entry::Captured));
        }
        if let Some(l) = self.readiness {
            std::thread::spawn(move || {
                for mut s in l.incoming().flatten() {
                    let mut b = [0u8; 1024];
                    let _ = s.read(&mut b);
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    }
}

/// Binds every listener, then serves until the process ends.
pub fn run(cfg: &RelayConfig) -> Result<()> {
    Relay::bind(cfg)?.spawn();
    loop {
        std::thread::park();
    }
}

#[derive(Clone, Copy)]
enum Entry {
    Socks5,
    Captured,
}

fn accept_loop(l: TcpListener, mark: u32, entry: Entry) {
    for s in l.incoming().flatten() {
        let _ = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = handle(s, mark, entry);
            });
    }
}

fn handle(mut down: TcpStream, mark: u32, entry: Entry) -> io::Result<()> {
    down.set_nodelay(true)?;
    let dst = match entry {
        Entry::Captured => sys::original_dst(&down)?,
        Entry::Socks5 => socks5_request(&mut down)?,
    };
    let up = if mark != 0 {
        sys::connect_marked(dst, mark)
    } else {
        TcpStream::connect(dst)
    };
    let up = match (up, entry) {
        (Ok(u), Entry::Socks5) => {
            down.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])?;
            u
        }
        (Ok(u), Entry::Captured) => u,
        (Err(e), Entry::Socks5) => {
            let _ = down.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]);
            return Err(e);
        }
        (Err(e), Entry::Captured) => return Err(e),
    };
    up.set_nodelay(true)?;
    let (mut d2, mut u2) = (down.try_clone()?, up.try_clone()?);
    let t = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || copy_half(&mut d2, &mut u2))?;
    let (mut d, mut u) = (down, up);
    copy_half(&mut u, &mut d);
    let _ = t.join();
    Ok(())
}

fn copy_half(from: &mut TcpStream, to: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Reads a no-auth SOCKS5 greeting and an IPv4 CONNECT; answers the greeting.
fn socks5_request(s: &mut TcpStream) -> io::Result<SocketAddr> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut g = [0u8; 2];
    s.read_exact(&mut g)?;
    let mut methods = vec![0u8; usize::from(g[1])];
    s.read_exact(&mut methods)?;
    if g[0] != 5 || !methods.contains(&0) {
        return Err(bad("not SOCKS5 without authentication"));
    }
    s.write_all(&[5, 0])?;
    let mut req = [0u8; 10];
    s.read_exact(&mut req)?;
    if req[..4] != [5, 1, 0, 1] {
        return Err(bad("only CONNECT to IPv4 is supported"));
    }
    let ip = Ipv4Addr::new(req[4], req[5], req[6], req[7]);
    Ok(SocketAddr::new(
        ip.into(),
        u16::from_be_bytes([req[8], req[9]]),
    ))
}
