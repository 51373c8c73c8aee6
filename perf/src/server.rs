//! The sink/echo application the generators talk to, and its tiny wire protocol.
//!
//! Every connection starts with a 12-byte [`Header`] from the client naming the mode:
//! * `Sink`: the server reads until EOF, then answers the byte count (u64, big endian)
//!   and closes — bulk throughput counted by the receiver.
//! * `Rr`: repeatedly read `request` bytes and answer `response` bytes, until EOF.
//! * `Crr`: one request/response, then the server closes first (so TIME_WAIT stays on
//!   the server side and a client can open connections at a high rate).
//! * `Idle`: the server writes one byte (so the client knows the path is established
//!   end to end) and waits for EOF.
//!
//! One thread per connection with a small stack: enough for thousands of idle
//! connections, and nothing shared between connections.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use crate::{Error, Result};

/// What the server does on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Count bytes until EOF, answer the count.
    Sink = 1,
    /// Request/response until EOF.
    Rr = 2,
    /// One request/response, then close.
    Crr = 3,
    /// Say one byte, then wait for EOF.
    Idle = 4,
}

/// The first bytes of every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The mode.
    pub mode: Mode,
    /// Request size in bytes (`Rr`, `Crr`).
    pub request: u32,
    /// Response size in bytes (`Rr`, `Crr`).
    pub response: u32,
}

const MAGIC: [u8; 2] = *b"ZP";
/// Encoded header length.
pub const HEADER_LEN: usize = 12;
/// Largest request or response the server accepts (16 MiB).
pub const MAX_MESSAGE: u32 = 16 << 20;

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..2].copy_from_slice(&MAGIC);
        b[2] = self.mode as u8;
        b[4..8].copy_from_slice(&self.request.to_be_bytes());
        b[8..12].copy_from_slice(&self.response.to_be_bytes());
        b
    }

    /// Decodes and validates a header.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header> {
        if b[..2] != MAGIC {
            return Err(Error::Protocol(format!("bad magic {:02x?}", &b[..2])));
        }
        let mode = match b[2] {
            1 => Mode::Sink,
            2 => Mode::Rr,
            3 => Mode::Crr,
            4 => Mode::Idle,
            m => return Err(Error::Protocol(format!("unknown mode {m}"))),
        };
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let (request, response) = (word(4), word(8));
        if request > MAX_MESSAGE || response > MAX_MESSAGE {
            return Err(Error::Protocol(format!(
                "message sizes {request}/{response} exceed {MAX_MESSAGE}"
            )));
        }
        Ok(Header {
            mode,
            request,
            response,
        })
    }
}

/// A bound load server; [`Server::run`] serves until the process ends.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
}

impl Server {
    /// Binds the listening socket.
    pub fn bind(addr: SocketAddr) -> Result<Server> {
        let listener =
            TcpListener::bind(addr).map_err(|e| Error::io(format!("binding {addr}"), e))?;
        Ok(Server { listener })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::io("reading the listener address", e))
    }

    /// Accepts connections forever, one thread each.
    pub fn run(self) {
        for conn in self.listener.incoming() {
            let Ok(stream) = conn else { continue };
            let spawned = std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let _ = serve_conn(stream);
                });
            if spawned.is_err() {
                // Out of threads: the connection is dropped, which the client counts as an error.
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    /// Serves on a background thread (for tests and in-process use).
    pub fn spawn(self) -> Result<SocketAddr> {
        let addr = self.local_addr()?;
        std::thread::Builder::new()
            .name("zpath-perf-server".into())
            .spawn(move || self.run())
            .map_err(|e| Error::io("spawning the server thread", e))?;
        Ok(addr)
    }
}

fn serve_conn(mut s: TcpStream) -> Result<()> {
    s.set_nodelay(true)
        .map_err(|e| Error::io("TCP_NODELAY", e))?;
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h)
        .map_err(|e| Error::io("reading header", e))?;
    let h = Header::decode(&h)?;
    let io = |e| Error::io("serving", e);
    match h.mode {
        Mode::Sink => {
            let n = drain(&mut s).map_err(io)?;
            s.write_all(&n.to_be_bytes()).map_err(io)?;
        }
        Mode::Rr => {
            let resp = vec![b'r'; h.response as usize];
            let mut req = vec![0u8; h.request as usize];
            while read_message(&mut s, &mut req).map_err(io)? {
                s.write_all(&resp).map_err(io)?;
            }
        }
        Mode::Crr => {
            let mut req = vec![0u8; h.request as usize];
            if read_message(&mut s, &mut req).map_err(io)? {
                s.write_all(&vec![b'r'; h.response as usize]).map_err(io)?;
            }
        }
        Mode::Idle => {
            s.write_all(b"!").map_err(io)?;
            drain(&mut s).map_err(io)?;
        }
    }
    Ok(())
}

/// Reads until EOF, returning the byte count.
fn drain(s: &mut TcpStream) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads one whole message; `Ok(false)` on a clean EOF before its first byte.
pub(crate) fn read_message(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            mode: Mode::Rr,
            request: 100,
            response: 7,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn header_with_bad_magic_or_mode_or_size_is_rejected() {
        let mut b = Header {
            mode: Mode::Sink,
            request: 0,
            response: 0,
        }
        .encode();
        b[0] = b'X';
        assert!(Header::decode(&b).is_err());
        b[0] = b'Z';
        b[2] = 9;
        assert!(Header::decode(&b).is_err());
        b[2] = 2;
        b[4..8].copy_from_slice(&(MAX_MESSAGE + 1).to_be_bytes());
        assert!(Header::decode(&b).is_err());
    }
}
