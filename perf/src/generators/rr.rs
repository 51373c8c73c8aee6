//! `rr`: request/response over C persistent connections, closed-loop or at a fixed
//! total rate; `crr`: connect, one request/response, close.
//!
//! At a fixed rate, latency is measured from when each request was *due*, not from when
//! it was sent: a stall delays every later request, and those delays count
//! (coordinated-omission correction, as wrk2 does). Closed-loop runs record the plain
//! service time.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::{new_histogram, run_threads, Dialer, LoadResult};
use crate::server::{read_message, Header, Mode};
use crate::{Error, Result};

/// Parameters of a request/response run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RrParams {
    /// Persistent connections, one thread each.
    pub connections: usize,
    /// Request size in bytes (at least 1).
    pub request_size: u32,
    /// Response size in bytes (at least 1).
    pub response_size: u32,
    /// How long to run.
    pub duration: Duration,
    /// Total requests per second over all connections; `None` is closed-loop.
    pub rate: Option<f64>,
    /// Stop each connection after this many requests (exact counts in tests).
    pub max_requests_per_conn: Option<u64>,
}

impl Default for RrParams {
    fn default() -> Self {
        RrParams {
            connections: 1,
            request_size: 1,
            response_size: 1,
            duration: Duration::from_secs(10),
            rate: None,
            max_requests_per_conn: None,
        }
    }
}

/// Parameters of a connect/request/response/close run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrrParams {
    /// Concurrent clients, one thread each.
    pub concurrency: usize,
    /// Request size in bytes (at least 1).
    pub request_size: u32,
    /// Response size in bytes (at least 1).
    pub response_size: u32,
    /// How long to run.
    pub duration: Duration,
    /// Stop each client after this many connections (exact counts in tests).
    pub max_conns_per_client: Option<u64>,
}

impl Default for CrrParams {
    fn default() -> Self {
        CrrParams {
            concurrency: 1,
            request_size: 1,
            response_size: 1,
            duration: Duration::from_secs(10),
            max_conns_per_client: None,
        }
    }
}

/// Runs persistent-connection request/response load through `dialer`.
pub fn run_rr(dialer: &Dialer, p: &RrParams) -> Result<LoadResult> {
    if p.connections == 0 || p.request_size == 0 || p.response_size == 0 {
        return Err(Error::Usage(
            "rr needs connections and non-empty messages".into(),
        ));
    }
    let interval = match p.rate {
        Some(r) if r > 0.0 => Some(Duration::from_secs_f64(p.connections as f64 / r)),
        Some(r) => return Err(Error::Usage(format!("rr rate must be positive, not {r}"))),
        None => None,
    };
    let started = Instant::now();
    let mut total = run_threads(p.connections, |_| {
        let mut r = LoadResult::empty();
        if let Err(e) = rr_conn(dialer, p, interval, &mut r) {
            r.record_error(e);
        }
        r
    })?;
    total.elapsed = started.elapsed();
    Ok(total)
}

fn rr_conn(
    dialer: &Dialer,
    p: &RrParams,
    interval: Option<Duration>,
    r: &mut LoadResult,
) -> Result<()> {
    let mut hist = new_histogram()?;
    let mut s = dialer.connect()?;
    let header = Header {
        mode: Mode::Rr,
        request: p.request_size,
        response: p.response_size,
    };
    let io = |e| Error::io("rr exchange", e);
    s.write_all(&header.encode()).map_err(io)?;
    r.connections = 1;
    let req = vec![b'q'; p.request_size as usize];
    let mut resp = vec![0u8; p.response_size as usize];
    let began = Instant::now();
    let deadline = began + p.duration;
    let cap = p.max_requests_per_conn.unwrap_or(u64::MAX);
    let mut outcome = Ok(());
    while r.requests < cap {
        let due = match interval {
            Some(iv) => began + iv.mul_f64(r.requests as f64),
            None => Instant::now(),
        };
        if due >= deadline {
            break;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if let Err(e) = s.write_all(&req) {
            outcome = Err(io(e));
            break;
        }
        match read_message(&mut s, &mut resp) {
            Ok(true) => {}
            Ok(false) => {
                outcome = Err(Error::Protocol("server closed the connection".into()));
                break;
            }
            Err(e) => {
                outcome = Err(io(e));
                break;
            }
        }
        hist.saturating_record(nanos(due.elapsed()));
        r.requests += 1;
        r.bytes_sent += u64::from(p.request_size);
        r.bytes_received += u64::from(p.response_size);
    }
    r.latency = Some(hist);
    outcome
}

/// Runs connect/request/response/close load through `dialer`.
pub fn run_crr(dialer: &Dialer, p: &CrrParams) -> Result<LoadResult> {
    if p.concurrency == 0 || p.request_size == 0 || p.response_size == 0 {
        return Err(Error::Usage(
            "crr needs clients and non-empty messages".into(),
        ));
    }
    let started = Instant::now();
    let mut total = run_threads(p.concurrency, |_| {
        let mut r = LoadResult::empty();
        let hist = new_histogram();
        let mut hist = match hist {
            Ok(h) => h,
            Err(e) => {
                r.record_error(e);
                return r;
            }
        };
        let deadline = Instant::now() + p.duration;
        let cap = p.max_conns_per_client.unwrap_or(u64::MAX);
        while r.connections + r.errors < cap && Instant::now() < deadline {
            let t0 = Instant::now();
            match crr_once(dialer, p) {
                Ok(()) => {
                    hist.saturating_record(nanos(t0.elapsed()));
                    r.connections += 1;
                    r.requests += 1;
                    r.bytes_sent += u64::from(p.request_size);
                    r.bytes_received += u64::from(p.response_size);
                }
                Err(e) => r.record_error(e),
            }
        }
        r.latency = Some(hist);
        r
    })?;
    total.elapsed = started.elapsed();
    Ok(total)
}

fn crr_once(dialer: &Dialer, p: &CrrParams) -> Result<()> {
    let mut s = dialer.connect()?;
    let header = Header {
        mode: Mode::Crr,
        request: p.request_size,
        response: p.response_size,
    };
    let mut msg = header.encode().to_vec();
    msg.resize(msg.len() + p.request_size as usize, b'q');
    let io = |e| Error::io("crr exchange", e);
    s.write_all(&msg).map_err(io)?;
    let mut resp = vec![0u8; p.response_size as usize];
    if !read_message(&mut s, &mut resp).map_err(io)? {
        return Err(Error::Protocol("server closed before answering".into()));
    }
    // Wait for the server's close, so the server side holds TIME_WAIT, not the client.
    let mut end = [0u8; 1];
    match s.read(&mut end) {
        Ok(0) => Ok(()),
        Ok(_) => Err(Error::Protocol("bytes after the crr response".into())),
        Err(e) => Err(io(e)),
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}
