//! One client HTTP/2 connection to a destination node, and the streams opened on it.
//!
//! A [`Tunnel`] is cheap to clone (it is h2's request handle plus shard-local
//! counters). Its driver future must be spawned on the shard's executor; when the
//! connection ends the driver marks the tunnel closed so the pool stops handing it out.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use futures_io::{AsyncBufRead, AsyncWrite};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Request, StatusCode};

use crate::io::H2Io;
use crate::payload::Payload;
use crate::settings::H2Settings;

/// A client HTTP/2 connection to one destination node.
#[derive(Debug, Clone)]
pub struct Tunnel {
    sender: SendRequest<Payload>,
    pub(crate) state: Rc<TunnelState>,
}

/// Shard-local bookkeeping of one tunnel.
#[derive(Debug)]
pub(crate) struct TunnelState {
    /// Open streams.
    pub(crate) streams: Cell<u32>,
    /// Streams promised to callers waiting for this tunnel's handshake.
    pub(crate) promised: Rc<Cell<u32>>,
    /// The most streams this tunnel carries at once: ours, and the server's limit
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`) as last seen by the driver. The server's
    /// SETTINGS arrive after the handshake returns, and may change later.
    pub(crate) max_streams: u32,
    /// The server's stream limit, updated by the driver after every poll.
    pub(crate) peer_limit: Cell<u32>,
    /// Since when no stream is open.
    pub(crate) idle_since: Cell<Option<Instant>>,
    /// Set when the connection ended.
    pub(crate) closed: Cell<bool>,
}

impl TunnelState {
    pub(crate) fn has_room(&self) -> bool {
        // A server limit of 0 counts as 1: the stream waits in h2's queue (bounded by
        // the open timeout) rather than every checkout making a new tunnel.
        !self.closed.get()
            && self.streams.get() + self.promised.get()
                < self.max_streams.min(self.peer_limit.get().max(1))
    }
}

/// A counted place for one stream on a tunnel; dropping it frees the place.
#[derive(Debug)]
pub struct StreamSlot {
    state: Rc<TunnelState>,
}

impl StreamSlot {
    pub(crate) fn take(state: &Rc<TunnelState>) -> Self {
        state.streams.set(state.streams.get() + 1);
        state.idle_since.set(None);
        Self {
            state: state.clone(),
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let left = self.state.streams.get().saturating_sub(1);
        self.state.streams.set(left);
        if left == 0 {
            self.state.idle_since.set(Some(Instant::now()));
        }
    }
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The destination answered the CONNECT with a status other than 200.
    #[error("the destination answered {0}")]
    Status(StatusCode),
    /// The connection failed or was refused at the HTTP/2 level.
    #[error("HTTP/2 error: {0}")]
    H2(#[from] h2::Error),
}

/// An open CONNECT stream: send and receive halves, and its slot on the tunnel.
#[derive(Debug)]
pub struct OpenStream {
    /// Client → destination.
    pub send: SendStream<Payload>,
    /// Destination → client.
    pub recv: RecvStream,
    /// Holds the stream's place on the tunnel until dropped.
    pub slot: StreamSlot,
}

/// Runs the HTTP/2 client handshake over `io`. Returns the tunnel and its driver,
/// which the caller spawns; the tunnel carries at most `max_streams` streams at once
/// (fewer if the server allows fewer: its limit is followed as its SETTINGS arrive).
pub async fn handshake<S>(
    io: S,
    settings: &H2Settings,
    max_streams: u32,
    promised: Rc<Cell<u32>>,
) -> Result<(Tunnel, Driver<S>), h2::Error>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    let (sender, connection) = settings
        .client()
        .initial_max_send_streams(max_streams as usize)
        .handshake::<_, Payload>(H2Io::new(io))
        .await?;
    let state = Rc::new(TunnelState {
        streams: Cell::new(0),
        promised,
        max_streams,
        peer_limit: Cell::new(peer_limit(&connection)),
        idle_since: Cell::new(Some(Instant::now())),
        closed: Cell::new(false),
    });
    let driver = Driver {
        connection,
        state: state.clone(),
    };
    Ok((Tunnel { sender, state }, driver))
}

/// Drives one tunnel's connection: resolves when it ends. Dropping it closes the
/// connection at once (its streams fail); either way the tunnel is marked closed.
#[derive(Debug)]
pub struct Driver<S>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    connection: h2::client::Connection<H2Io<S>, Payload>,
    state: Rc<TunnelState>,
}

impl<S> Driver<S>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    /// The connection's PING handle for a keepalive (once; `None` after).
    pub fn ping_pong(&mut self) -> Option<h2::PingPong> {
        self.connection.ping_pong()
    }
}

impl<S> Future for Driver<S>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    type Output = Result<(), h2::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.connection).poll(cx);
        this.state.peer_limit.set(peer_limit(&this.connection));
        if polled.is_ready() {
            this.state.closed.set(true);
        }
        polled
    }
}

impl<S> Drop for Driver<S>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    fn drop(&mut self) {
        self.state.closed.set(true);
    }
}

fn peer_limit<S>(connection: &h2::client::Connection<S, Payload>) -> u32
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    u32::try_from(connection.max_concurrent_send_streams()).unwrap_or(u32::MAX)
}

impl Tunnel {
    /// Whether the connection has ended or can take no new stream (GOAWAY received,
    /// connection error, or closed by us). A GOAWAY leaves the connection open for
    /// the streams it carries, but refuses new ones at once: checked here without
    /// waiting, and remembered.
    pub fn is_closed(&self) -> bool {
        if self.state.closed.get() {
            return true;
        }
        let mut sender = self.sender.clone();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(Err(_)) = sender.poll_ready(&mut cx) {
            self.state.closed.set(true);
            return true;
        }
        false
    }

    /// Open streams on this tunnel.
    pub fn streams(&self) -> u32 {
        self.state.streams.get()
    }

    /// Sends `req` on a new stream and waits for the answer; a 200 yields the stream.
    pub async fn open(&self, req: Request<()>, slot: StreamSlot) -> Result<OpenStream, OpenError> {
        let mut sender = self.sender.clone();
        let sent = match futures_lite::future::poll_fn(|cx| sender.poll_ready(cx)).await {
            Ok(()) => sender.send_request(req, false),
            Err(e) => Err(e),
        };
        let (response, send) = match sent {
            Ok(s) => s,
            Err(e) => {
                // The connection takes no new streams: the pool must not offer it again.
                self.state.closed.set(true);
                return Err(e.into());
            }
        };
        let response = response.await?;
        if response.status() != StatusCode::OK {
            return Err(OpenError::Status(response.status()));
        }
        Ok(OpenStream {
            send,
            recv: response.into_body(),
            slot,
        })
    }
}
