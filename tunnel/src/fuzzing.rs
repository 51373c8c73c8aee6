//! Bodies of the tunnel's fuzz targets (`tunnel/fuzz`), shared with the unit test that
//! runs them over the seed corpus, so `cargo test` replays every committed seed.
//!
//! [`connect`] checks what port 15008 checks of a request ([`crate::connect::target`]),
//! on requests built two ways: from a method and a URI directly, and as the HTTP/2
//! server delivers them from arbitrary frames a client sends. It never panics unless a
//! decision breaks a property it checks, which is a bug in this crate.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use http::{Method, Request, StatusCode, Uri};

use crate::connect::{self, BadRequest};
use crate::settings::H2Settings;

/// The HTTP/2 client connection preface (RFC 9113 §3.4), before the client's SETTINGS.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Polls of a future that makes no progress before the body gives up on it: the input
/// is in memory, so a future still pending after this many polls waits for nothing.
const MAX_IDLE_POLLS: usize = 64;

/// Checks the decision for `req` against what it must mean, and returns the status the
/// destination node answers with.
fn check_target<B>(req: &Request<B>) -> StatusCode {
    let decision = connect::target(req);
    match &decision {
        Ok(addr) => {
            assert_eq!(req.method(), Method::CONNECT, "non-CONNECT accepted");
            let authority = req.uri().authority().map(|a| a.as_str());
            let parsed = authority.and_then(|a| a.parse::<SocketAddr>().ok());
            assert_eq!(parsed, Some(*addr), "target is not the authority");
            assert_eq!(addr.to_string().parse::<SocketAddr>().ok(), Some(*addr));
        }
        Err(BadRequest::Method(m)) => {
            assert_ne!(req.method(), Method::CONNECT, "CONNECT refused as a method");
            assert!(m.chars().count() <= 32, "method echoed unbounded: {m:?}");
        }
        Err(BadRequest::NoAuthority) => assert!(req.uri().authority().is_none()),
        Err(BadRequest::Authority(a)) => {
            let authority = req.uri().authority().map(|a| a.as_str());
            assert!(authority.is_some_and(|a| a.parse::<SocketAddr>().is_err()));
            assert!(
                a.chars().count() <= 128,
                "authority echoed unbounded: {a:?}"
            );
        }
    }
    match decision {
        Ok(_) => StatusCode::OK,
        Err(e) => {
            assert!(["method", "authority"].contains(&e.label()));
            assert!(!e.to_string().is_empty());
            StatusCode::BAD_REQUEST
        }
    }
}

/// A request from a method and a URI, as the bytes of `data` spell them (method, one
/// space, URI); `None` when `http` refuses either, as an HTTP/2 server refuses the
/// stream.
fn direct(data: &[u8]) -> Option<StatusCode> {
    let space = data.iter().position(|&b| b == b' ')?;
    let method = Method::from_bytes(&data[..space]).ok()?;
    let uri = Uri::try_from(&data[space + 1..]).ok()?;
    let req = Request::builder().method(method).uri(uri).body(()).ok()?;
    Some(check_target(&req))
}

/// A client connection in memory: reads give the preface then `rest`, then end of
/// file if `eof` is set or else nothing more (a client waiting for answers); writes
/// are taken and dropped.
struct Wire<'a> {
    preface: &'a [u8],
    rest: &'a [u8],
    eof: bool,
}

impl Wire<'_> {
    /// True when a read must wait: everything was read and the client is still there.
    fn waits(&self) -> bool {
        self.preface.is_empty() && self.rest.is_empty() && !self.eof
    }
}

impl futures_io::AsyncRead for Wire<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.waits() {
            return Poll::Pending;
        }
        let src = if this.preface.is_empty() {
            &mut this.rest
        } else {
            &mut this.preface
        };
        let n = buf.len().min(src.len());
        buf[..n].copy_from_slice(&src[..n]);
        *src = &src[n..];
        Poll::Ready(Ok(n))
    }
}

impl futures_io::AsyncBufRead for Wire<'_> {
    fn poll_fill_buf(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.waits() {
            Poll::Pending
        } else if this.preface.is_empty() {
            Poll::Ready(Ok(this.rest))
        } else {
            Poll::Ready(Ok(this.preface))
        }
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        let src = if this.preface.is_empty() {
            &mut this.rest
        } else {
            &mut this.preface
        };
        *src = &src[amt.min(src.len())..];
    }
}

impl futures_io::AsyncWrite for Wire<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs the 15008 server side over `frames` (what a client sends after the preface):
/// every request h2 delivers is decided and answered as the engine answers it.
/// Returns how many requests were accepted (answered 200).
fn over_h2(frames: &[u8], eof: bool) -> usize {
    let settings = H2Settings::default();
    let mut cx = Context::from_waker(Waker::noop());
    let wire = Wire {
        preface: PREFACE,
        rest: frames,
        eof,
    };
    let mut handshake = pin!(crate::server::accept(wire, &settings));
    let mut conn = match poll_bounded(handshake.as_mut(), &mut cx) {
        Some(Ok(conn)) => conn,
        Some(Err(_)) | None => return 0,
    };
    let (mut accepted, mut idle) = (0, 0);
    while idle < MAX_IDLE_POLLS {
        match conn.poll_accept(&mut cx) {
            Poll::Ready(Some(Ok((req, mut respond)))) => {
                idle = 0;
                let status = check_target(&req);
                if let Ok(Some(_stream)) = crate::server::answer(&mut respond, status) {
                    assert_eq!(status, StatusCode::OK, "a refusal left its stream open");
                    accepted += 1;
                }
            }
            Poll::Ready(Some(Err(_)) | None) => break,
            Poll::Pending => idle += 1,
        }
    }
    accepted
}

/// Polls `f` until it is ready or has been pending [`MAX_IDLE_POLLS`] times.
fn poll_bounded<F: Future>(mut f: Pin<&mut F>, cx: &mut Context<'_>) -> Option<F::Output> {
    (0..MAX_IDLE_POLLS).find_map(|_| match f.as_mut().poll(cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    })
}

/// The fuzz entry point. The first byte chooses how the rest is read: even, as a
/// method, a space and a URI; odd, as HTTP/2 frames a client sends after its
/// preface (bit 1: then closes the connection; otherwise waits for answers).
/// Returns how many requests were accepted (for the seed test).
pub fn connect(data: &[u8]) -> usize {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 0 => usize::from(direct(rest) == Some(StatusCode::OK)),
        Some((mode, rest)) => over_h2(rest, mode & 2 != 0),
        None => 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn connect_fuzz_seed_corpus_runs_clean() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/connect");
        let (mut files, mut direct_ok, mut h2_ok) = (0, 0, 0);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            let accepted = connect(&data);
            match data.first() {
                Some(m) if m % 2 == 0 => direct_ok += accepted,
                _ => h2_ok += accepted,
            }
            files += 1;
        }
        assert!(files >= 8, "seed corpus missing in {}", dir.display());
        // Seeds reach an accepted request both ways, through h2 too.
        assert!(
            direct_ok > 0 && h2_ok > 0,
            "{direct_ok} direct, {h2_ok} over h2"
        );
    }

    #[test]
    fn authorities_connect_refuses_are_echoed_bounded() {
        let long = format!("CONNECT {}:80", "a".repeat(300));
        assert_eq!(direct(long.as_bytes()), Some(StatusCode::BAD_REQUEST));
        assert_eq!(direct(b"CONNECT 10.0.0.2:8080"), Some(StatusCode::OK));
        assert_eq!(
            direct(b"GET http://10.0.0.2:80/"),
            Some(StatusCode::BAD_REQUEST)
        );
    }
}
