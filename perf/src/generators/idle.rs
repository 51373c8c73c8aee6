//! `idle`: open N connections that each reach the server, and hold them; the caller
//! samples the proxies' memory while they are held.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Instant;

use super::{run_threads, Dialer, LoadResult};
use crate::server::{Header, Mode};
use crate::{Error, Result};

/// Parameters of an idle run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleParams {
    /// Connections to hold.
    pub connections: usize,
    /// Threads opening them.
    pub openers: usize,
}

impl Default for IdleParams {
    fn default() -> Self {
        IdleParams {
            connections: 1000,
            openers: 4,
        }
    }
}

/// Connections held open; dropping it closes them.
#[derive(Debug)]
pub struct IdleConns {
    conns: Vec<TcpStream>,
    /// How opening went: `connections` is the number established end to end.
    pub result: LoadResult,
}

impl IdleConns {
    /// Number of connections held.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether no connection is held.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

/// Opens `p.connections` connections, each confirmed by the server's greeting byte.
pub fn open_idle(dialer: &Dialer, p: &IdleParams) -> Result<IdleConns> {
    let openers = p.openers.clamp(1, p.connections.max(1));
    let held = Mutex::new(Vec::with_capacity(p.connections));
    let started = Instant::now();
    let mut result = run_threads(openers, |i| {
        let mut r = LoadResult::empty();
        let mine = p.connections / openers + usize::from(i < p.connections % openers);
        let mut local = Vec::with_capacity(mine);
        for _ in 0..mine {
            match open_one(dialer) {
                Ok(s) => {
                    local.push(s);
                    r.connections += 1;
                }
                Err(e) => r.record_error(e),
            }
        }
        if let Ok(mut h) = held.lock() {
            h.extend(local);
        }
        r
    })?;
    result.elapsed = started.elapsed();
    let conns = held
        .into_inner()
        .map_err(|_| Error::Protocol("an idle opener panicked".into()))?;
    Ok(IdleConns { conns, result })
}

fn open_one(dialer: &Dialer) -> Result<TcpStream> {
    let mut s = dialer.connect()?;
    let header = Header {
        mode: Mode::Idle,
        request: 0,
        response: 0,
    };
    let io = |e| Error::io("idle connection", e);
    s.write_all(&header.encode()).map_err(io)?;
    let mut hello = [0u8; 1];
    s.read_exact(&mut hello).map_err(io)?;
    if hello != *b"!" {
        return Err(Error::Protocol(format!(
            "unexpected idle greeting {hello:?}"
        )));
    }
    Ok(s)
}
