//! `bulk`: N parallel flows writing as fast as they can for a fixed time; throughput is
//! what the sink confirms it received, over the time until its confirmation.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use super::{run_threads, Dialer, LoadResult};
use crate::server::{Header, Mode};
use crate::{Error, Result};

/// Parameters of a bulk run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkParams {
    /// Parallel flows (connections), one thread each.
    pub flows: usize,
    /// How long each flow writes.
    pub duration: Duration,
    /// Stop a flow after this many bytes even if time is left (exact counts in tests).
    pub max_bytes_per_flow: Option<u64>,
    /// Size of each write (default 256 KiB).
    pub write_size: usize,
}

impl Default for BulkParams {
    fn default() -> Self {
        BulkParams {
            flows: 1,
            duration: Duration::from_secs(10),
            max_bytes_per_flow: None,
            write_size: 256 * 1024,
        }
    }
}

/// Runs a bulk upload through `dialer`.
pub fn run_bulk(dialer: &Dialer, p: &BulkParams) -> Result<LoadResult> {
    if p.flows == 0 || p.write_size == 0 {
        return Err(Error::Usage(
            "bulk needs at least one flow and a write size".into(),
        ));
    }
    let start = Barrier::new(p.flows);
    run_threads(p.flows, |_| {
        let mut r = LoadResult::empty();
        match one_flow(dialer, p, &start) {
            Ok((sent, confirmed, elapsed)) => {
                r.bytes_sent = sent;
                r.bytes_received = confirmed;
                r.elapsed = elapsed;
                r.connections = 1;
                if sent != confirmed {
                    r.record_error(format!("sink confirmed {confirmed} of {sent} bytes"));
                }
            }
            Err(e) => r.record_error(e),
        }
        r
    })
}

fn one_flow(dialer: &Dialer, p: &BulkParams, start: &Barrier) -> Result<(u64, u64, Duration)> {
    let mut s = dialer.connect();
    // Every thread must reach the barrier, even after a failed connect.
    start.wait();
    let s = s.as_mut().map_err(|e| Error::Protocol(e.to_string()))?;
    let io = |e: io::Error| Error::io("bulk flow", e);
    let header = Header {
        mode: Mode::Sink,
        request: 0,
        response: 0,
    };
    s.write_all(&header.encode()).map_err(io)?;
    let buf = vec![b'b'; p.write_size];
    let began = Instant::now();
    let deadline = began + p.duration;
    let cap = p.max_bytes_per_flow.unwrap_or(u64::MAX);
    let mut sent = 0u64;
    while sent < cap && Instant::now() < deadline {
        let want = (cap - sent).min(buf.len() as u64) as usize;
        match s.write(&buf[..want]) {
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    s.shutdown(Shutdown::Write).map_err(io)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).map_err(io)?;
    Ok((sent, u64::from_be_bytes(count), began.elapsed()))
}
