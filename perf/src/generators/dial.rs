//! How a client reaches the server: directly (also when iptables captures the
//! connection), or through a SOCKS5 entry.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::{Error, Result};

/// Opens connections to the load server, the way the scenario's target requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialer {
    /// The load server's address (the original destination).
    pub server: SocketAddr,
    /// A SOCKS5 proxy to go through, if any.
    pub socks5: Option<SocketAddr>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Dialer {
    /// Connects straight to `server` (or through whatever captures it).
    pub fn direct(server: SocketAddr) -> Dialer {
        Dialer {
            server,
            socks5: None,
        }
    }

    /// Connects through the SOCKS5 proxy at `proxy` (no authentication, CONNECT).
    pub fn socks5(server: SocketAddr, proxy: SocketAddr) -> Dialer {
        Dialer {
            server,
            socks5: Some(proxy),
        }
    }

    /// Opens one connection with TCP_NODELAY set.
    pub fn connect(&self) -> Result<TcpStream> {
        let first = self.socks5.unwrap_or(self.server);
        let mut s = TcpStream::connect_timeout(&first, CONNECT_TIMEOUT)
            .map_err(|e| Error::io(format!("connecting to {first}"), e))?;
        s.set_nodelay(true)
            .map_err(|e| Error::io("setting TCP_NODELAY", e))?;
        if let Some(proxy) = self.socks5 {
            socks5_connect(&mut s, proxy, self.server)?;
        }
        Ok(s)
    }
}

fn socks5_connect(s: &mut TcpStream, proxy: SocketAddr, target: SocketAddr) -> Result<()> {
    let fail = |reason: String| Error::Socks5 {
        proxy: proxy.to_string(),
        reason,
    };
    let io = |e: std::io::Error| fail(e.to_string());
    // Greeting and CONNECT in one write: the proxy answers both in order.
    let mut req = vec![5u8, 1, 0, 5, 1, 0];
    match target.ip() {
        IpAddr::V4(ip) => {
            req.push(1);
            req.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            req.push(4);
            req.extend_from_slice(&ip.octets());
        }
    }
    req.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&req).map_err(io)?;
    let mut method = [0u8; 2];
    s.read_exact(&mut method).map_err(io)?;
    if method != [5, 0] {
        return Err(fail(format!("no acceptable auth method ({method:?})")));
    }
    let mut head = [0u8; 4];
    s.read_exact(&mut head).map_err(io)?;
    if head[0] != 5 || head[1] != 0 {
        return Err(fail(format!(
            "CONNECT to {target} refused, reply code {}",
            head[1]
        )));
    }
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l).map_err(io)?;
            usize::from(l[0]) + 2
        }
        t => return Err(fail(format!("bad address type {t} in reply"))),
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot SOCKS5 server that checks the request bytes and answers `reply`.
    fn fake_socks(reply: u8) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 13];
            s.read_exact(&mut req).unwrap();
            s.write_all(&[5, 0, 5, reply, 0, 1, 0, 0, 0, 0, 0, 0])
                .unwrap();
            req.to_vec()
        });
        (addr, h)
    }

    #[test]
    fn socks5_sends_greeting_and_ipv4_connect() {
        let (proxy, h) = fake_socks(0);
        let target: SocketAddr = "10.1.2.3:4567".parse().unwrap();
        Dialer::socks5(target, proxy).connect().unwrap();
        let req = h.join().unwrap();
        assert_eq!(req, vec![5, 1, 0, 5, 1, 0, 1, 10, 1, 2, 3, 0x11, 0xd7]);
    }

    #[test]
    fn socks5_refusal_is_an_error_naming_the_code() {
        let (proxy, _h) = fake_socks(5);
        let err = Dialer::socks5("10.1.2.3:80".parse().unwrap(), proxy)
            .connect()
            .unwrap_err();
        assert!(err.to_string().contains("reply code 5"), "{err}");
    }
}
