//! A minimal SOCKS5 client for tests (the protocol bytes are what is under test).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Connects through the SOCKS5 proxy at `proxy` to `target`; returns the stream after
/// a successful reply, or the reply code on refusal.
pub fn connect(proxy: SocketAddr, target: SocketAddr) -> io::Result<Result<TcpStream, u8>> {
    let mut s = TcpStream::connect(proxy)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(&[5, 1, 0])?;
    let mut greet = [0u8; 2];
    s.read_exact(&mut greet)?;
    if greet != [5, 0] {
        return Err(io::Error::other(format!(
            "unexpected greeting answer {greet:?}"
        )));
    }
    s.write_all(&request(target))?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)?;
    if reply[1] != 0 {
        return Ok(Err(reply[1]));
    }
    s.set_read_timeout(None)?;
    Ok(Ok(s))
}

/// The CONNECT request bytes for `target`.
pub fn request(target: SocketAddr) -> Vec<u8> {
    let mut r = vec![5, 1, 0];
    match target {
        SocketAddr::V4(a) => {
            r.push(1);
            r.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            r.push(4);
            r.extend_from_slice(&a.ip().octets());
        }
    }
    r.extend_from_slice(&target.port().to_be_bytes());
    r
}
