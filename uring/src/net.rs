//! TCP listeners and streams over the ring: multishot accept, multishot receive into the
//! provided-buffer ring, sends (plain and vectored), connect with a linked timeout,
//! shutdown and close, all as SQEs.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use io_uring::{cqueue, opcode, types};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use crate::buf::{BufRef, BufRing};
use crate::op::{check, Op};
use crate::runtime::{with_core, Entries, OpKind, MAX_IOV};
use crate::sys::IoBuf;

/// An open socket; closed through the ring when the last handle goes.
#[derive(Debug)]
struct Fd(Option<OwnedFd>);

impl Fd {
    fn raw(&self) -> RawFd {
        self.0.as_ref().map_or(-1, |fd| fd.as_raw_fd())
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            let mut fd = Some(fd);
            let _ = with_core(|core| {
                if let Some(fd) = fd.take() {
                    core.close_later(fd);
                }
            });
            // Outside a runtime `fd` is still here and closes synchronously.
        }
    }
}

/// A send of `B` from an offset; the buffer and offset come back with the result.
pub(crate) type SendOp<B> = Op<(B, usize)>;

/// A listening TCP socket.
#[derive(Debug)]
pub struct TcpListener {
    fd: Rc<Fd>,
    local: SocketAddr,
}

impl TcpListener {
    /// Binds with `SO_REUSEADDR` (and `SO_REUSEPORT` when `reuse_port`), listening with a
    /// backlog of 1024.
    pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Self::from_std(socket.into())
    }

    /// Takes over a bound, listening std socket.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(false)?;
        let local = listener.local_addr()?;
        Ok(TcpListener {
            fd: Rc::new(Fd(Some(OwnedFd::from(listener)))),
            local,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Takes over a listening socket2 socket.
    pub fn from_socket(socket: Socket) -> io::Result<TcpListener> {
        Self::from_std(socket.into())
    }

    /// A stream of accepted connections from one multishot accept.
    pub fn incoming(&self) -> Incoming {
        Incoming {
            fd: self.fd.clone(),
            op: None,
        }
    }
}

/// Accepted connections, from a multishot accept re-armed whenever the kernel ends it.
pub struct Incoming {
    fd: Rc<Fd>,
    op: Option<u32>,
}

impl Incoming {
    /// The next accepted connection.
    pub async fn next(&mut self) -> io::Result<TcpStream> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Polls for the next accepted connection. An error (such as `EMFILE`) ends the
    /// current multishot; the next poll arms a new one.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        loop {
            let Some(id) = self.op else {
                let fd = self.fd.raw();
                let id = with_core(|core| {
                    core.submit(OpKind::Accept, |_| {
                        Entries::One(
                            opcode::AcceptMulti::new(types::Fd(fd))
                                .flags(libc::SOCK_CLOEXEC)
                                .build(),
                        )
                    })
                })??;
                self.op = Some(id);
                continue;
            };
            match with_core(|core| core.poll_cqe(id, cx))? {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.op = None;
                    let _ = with_core(|core| core.release(id, None));
                }
                Poll::Ready(Some(c)) if c.res >= 0 => {
                    let fd = crate::sys::owned_fd(c.res);
                    return Poll::Ready(Ok(TcpStream::from_owned(fd)));
                }
                Poll::Ready(Some(c)) => {
                    return Poll::Ready(Err(io::Error::from_raw_os_error(-c.res)));
                }
            }
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(id) = self.op.take() {
            let _ = with_core(|core| core.release(id, None));
        }
    }
}

/// How to open an upstream connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// `SO_MARK` for the socket (0: none; needs `CAP_NET_ADMIN`).
    pub mark: u32,
    /// Deadline for the handshake, as a linked timeout SQE (None: the kernel's).
    pub timeout: Option<Duration>,
}

/// A connected TCP socket. Clones share the socket; it is closed (through the ring)
/// when the last clone and the last op using it are gone.
#[derive(Clone, Debug)]
pub struct TcpStream {
    fd: Rc<Fd>,
}

impl TcpStream {
    fn from_owned(fd: OwnedFd) -> TcpStream {
        TcpStream {
            fd: Rc::new(Fd(Some(fd))),
        }
    }

    /// Takes over a connected std socket.
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(false)?;
        Ok(Self::from_owned(OwnedFd::from(stream)))
    }

    /// Connects to `addr` with `IORING_OP_CONNECT`, linked to a timeout when one is set.
    pub async fn connect(addr: SocketAddr, options: &ConnectOptions) -> io::Result<TcpStream> {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        )?;
        Self::connect_socket(socket, addr, options).await
    }

    /// Connects a socket the caller made (bound to a source, say) to `addr`, as
    /// [`TcpStream::connect`] does; `options.mark` is set when not 0.
    pub async fn connect_socket(
        socket: Socket,
        addr: SocketAddr,
        options: &ConnectOptions,
    ) -> io::Result<TcpStream> {
        socket.set_nonblocking(false)?;
        if options.mark != 0 {
            socket.set_mark(options.mark).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot set SO_MARK {} (needs CAP_NET_ADMIN): {e}",
                        options.mark
                    ),
                )
            })?;
        }
        socket.set_tcp_nodelay(true)?;
        let timeout = options.timeout;
        if timeout == Some(Duration::ZERO) {
            // A linked timeout of zero would fire before the connect is even tried.
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connection to {addr} not tried: its deadline is zero"),
            ));
        }
        let op = Op::submit(socket, |socket, store| {
            // The entry points at the address inside the slot's store, which does not move.
            let target = store.addr.insert(SockAddr::from(addr));
            let connect = opcode::Connect::new(
                types::Fd(socket.as_raw_fd()),
                target.as_ptr().cast(),
                target.len(),
            )
            .build();
            match timeout {
                Some(t) => {
                    store.ts = types::Timespec::from(t);
                    Entries::Linked(connect, opcode::LinkTimeout::new(&store.ts).build())
                }
                None => Entries::One(connect),
            }
        })
        .map_err(|(e, _)| e)?;
        let (res, socket) = op.await;
        match res {
            0 => Ok(Self::from_owned(OwnedFd::from(socket))),
            r if r == -libc::ECANCELED && timeout.is_some() => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connection to {addr} timed out after {:?}: is the upstream reachable?",
                    timeout.unwrap_or_default()
                ),
            )),
            r => Err(io::Error::from_raw_os_error(-r)),
        }
    }

    /// A receiver of this connection's bytes (one multishot receive at a time).
    pub fn recv_stream(&self) -> io::Result<RecvStream> {
        let (large, small) = with_core(|core| (core.rings[0].clone(), core.rings.get(1).cloned()))?;
        Ok(RecvStream {
            fd: self.fd.clone(),
            want_small: small.is_some(),
            large,
            small,
            op: None,
            on_small: false,
            quiet: 0,
            eof: false,
            waiting_for_buffer: false,
        })
    }

    /// Sends from `buf` (one `IORING_OP_SEND`); returns how much went, and the buffer.
    pub async fn send<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        let (res, (buf, _)) = self.send_at(buf, 0).await;
        (res, buf)
    }

    /// Sends all of `buf`, resubmitting after short sends.
    pub async fn send_all<B: IoBuf>(&self, buf: B) -> (io::Result<()>, B) {
        let mut offset = 0;
        let mut buf = buf;
        while offset < buf.len() {
            let (res, (back, _)) = self.send_at(buf, offset).await;
            buf = back;
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => offset += n,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    async fn send_at<B: IoBuf>(&self, buf: B, offset: usize) -> (io::Result<usize>, (B, usize)) {
        match self.send_op(buf, offset) {
            Ok(op) => {
                let (res, data) = op.await;
                (check(res), data)
            }
            Err((e, data)) => (Err(e), data),
        }
    }

    /// The op sending `buf[offset..]`.
    pub(crate) fn send_op<B: IoBuf>(
        &self,
        buf: B,
        offset: usize,
    ) -> Result<SendOp<B>, (io::Error, (B, usize))> {
        let fd = self.fd.raw();
        Op::submit((buf, offset), |(buf, offset), _| {
            let start = (*offset).min(buf.len());
            let len = (buf.len() - start).min(u32::MAX as usize) as u32;
            let ptr = buf.as_ptr().wrapping_add(start);
            Entries::One(
                opcode::Send::new(types::Fd(fd), ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build(),
            )
        })
    }

    /// Sends from several buffers in one `IORING_OP_SENDMSG`, skipping the first `skip`
    /// bytes; at most [`MAX_IOV`] buffers are used. Returns how much went.
    pub async fn send_vectored<B: IoBuf>(
        &self,
        bufs: Vec<B>,
        skip: usize,
    ) -> (io::Result<usize>, Vec<B>) {
        let fd = self.fd.raw();
        let op = Op::submit(bufs, |bufs, store| {
            let mut skip = skip;
            let mut n = 0;
            for buf in bufs {
                if n == MAX_IOV {
                    break;
                }
                if skip >= buf.len() {
                    skip -= buf.len();
                    continue;
                }
                store.iov[n] = libc::iovec {
                    iov_base: buf.as_ptr().wrapping_add(skip) as *mut libc::c_void,
                    iov_len: buf.len() - skip,
                };
                skip = 0;
                n += 1;
            }
            let mut msg = crate::sys::empty_msghdr();
            msg.msg_iov = store.iov.as_mut_ptr();
            msg.msg_iovlen = n;
            store.msg = msg;
            Entries::One(
                opcode::SendMsg::new(types::Fd(fd), &store.msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build(),
            )
        });
        match op {
            Ok(op) => {
                let (res, bufs) = op.await;
                (check(res), bufs)
            }
            Err((e, bufs)) => (Err(e), bufs),
        }
    }

    /// Sends every byte of `bufs` with vectored sends.
    pub async fn send_all_vectored<B: IoBuf>(&self, bufs: Vec<B>) -> (io::Result<()>, Vec<B>) {
        let total: usize = bufs.iter().map(IoBuf::len).sum();
        let mut sent = 0;
        let mut bufs = bufs;
        while sent < total {
            let (res, back) = self.send_vectored(bufs, sent).await;
            bufs = back;
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), bufs),
                Ok(n) => sent += n,
                Err(e) => return (Err(e), bufs),
            }
        }
        (Ok(()), bufs)
    }

    /// Shuts down one or both directions (`IORING_OP_SHUTDOWN`).
    pub async fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        check(self.shutdown_op(how)?.await.0).map(drop)
    }

    pub(crate) fn shutdown_op(&self, how: Shutdown) -> io::Result<Op<()>> {
        let how = match how {
            Shutdown::Read => libc::SHUT_RD,
            Shutdown::Write => libc::SHUT_WR,
            Shutdown::Both => libc::SHUT_RDWR,
        };
        let fd = self.fd.raw();
        Op::submit((), |_, _| {
            Entries::One(opcode::Shutdown::new(types::Fd(fd), how).build())
        })
        .map_err(|(e, ())| e)
    }

    /// Closes the socket now (`IORING_OP_CLOSE`) if this is its last handle; otherwise
    /// only drops this handle.
    pub async fn close(self) -> io::Result<()> {
        let Ok(mut fd) = Rc::try_unwrap(self.fd) else {
            return Ok(());
        };
        let Some(owned) = fd.0.take() else {
            return Ok(());
        };
        // The op owns the number only: once the SQE is submitted the kernel closes it, so
        // nothing may close it again, even if this future is dropped first.
        let raw = owned.into_raw_fd();
        let op = Op::submit(raw, |raw, _| {
            Entries::One(opcode::Close::new(types::Fd(*raw)).build())
        })
        .map_err(|(e, raw)| {
            drop(crate::sys::owned_fd(raw));
            e
        })?;
        let (res, _) = op.await;
        check(res).map(drop)
    }

    fn sock(&self) -> io::Result<SockRef<'_>> {
        match &self.fd.0 {
            Some(fd) => Ok(SockRef::from(fd)),
            None => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    /// The destination a connection had before an iptables REDIRECT sent it here.
    pub fn original_dst(&self) -> io::Result<SocketAddr> {
        let sock = self.sock()?;
        let local = sock.local_addr()?.as_socket();
        let addr = match local {
            Some(SocketAddr::V6(a)) if a.ip().to_ipv4_mapped().is_none() => {
                sock.original_dst_v6()?
            }
            _ => sock.original_dst_v4()?,
        };
        addr.as_socket().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "original destination is not an IP address",
            )
        })
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock()?
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "peer is not an IP address"))
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock()?.local_addr()?.as_socket().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "local end is not an IP address")
        })
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.sock()?.set_tcp_nodelay(on)
    }

    /// Whether the close will send RST (`SO_LINGER` 0 was set, here or on the raw
    /// descriptor).
    pub fn resets_on_close(&self) -> bool {
        matches!(self.sock().and_then(|s| s.linger()), Ok(Some(d)) if d.is_zero())
    }

    /// Makes the close send RST instead of FIN (`SO_LINGER` 0): for aborting.
    pub fn set_reset_on_close(&self) -> io::Result<()> {
        self.sock()?.set_linger(Some(Duration::ZERO))
    }
}

/// Consecutive receives under a small buffer's size that move a receiver on the large
/// ring back to the small one.
const QUIET_TO_SMALL: u8 = 4;

/// The received bytes of one connection: a multishot receive into a provided-buffer
/// ring, re-armed when the kernel ends it (buffer ring dry, reader behind, error).
///
/// Two size classes: a receiver starts on the small ring (when the runtime has one) and
/// moves to the large one when a receive fills a small buffer (bulk), back after
/// `QUIET_TO_SMALL` receives that would have fit a small one. A move cancels the
/// multishot and re-arms it on the other ring once every completion of the old one is
/// taken, so bytes keep their order.
pub struct RecvStream {
    fd: Rc<Fd>,
    large: Rc<BufRing>,
    small: Option<Rc<BufRing>>,
    op: Option<u32>,
    /// The op in flight draws from the small ring.
    on_small: bool,
    /// The next op should draw from the small ring.
    want_small: bool,
    quiet: u8,
    eof: bool,
    waiting_for_buffer: bool,
}

impl RecvStream {
    /// The next received bytes; `None` at end of stream.
    pub async fn recv(&mut self) -> io::Result<Option<BufRef>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next received bytes; `None` at end of stream.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<BufRef>>> {
        loop {
            if self.eof {
                return Poll::Ready(Ok(None));
            }
            let Some(id) = self.op else {
                if self.waiting_for_buffer {
                    let ring = self.ring(self.want_small);
                    if ring.available() == 0 {
                        // Re-arming now would only fail again: wait for a buffer to come
                        // back (the bytes wait in the socket, nothing is lost).
                        ring.wait_for_buffer(cx.waker());
                        return Poll::Pending;
                    }
                    self.waiting_for_buffer = false;
                }
                self.arm()?;
                continue;
            };
            let c = match with_core(|core| core.poll_cqe(id, cx))? {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.disarm();
                    continue;
                }
                Poll::Ready(Some(c)) => c,
            };
            let ring = self.ring(self.on_small);
            let buffer = cqueue::buffer_select(c.flags)
                .map(|bid| BufRef::new(ring.clone(), bid, c.res.max(0) as u32));
            match c.res {
                n if n > 0 => match buffer {
                    Some(buf) => {
                        self.choose_class(id, n as u32);
                        return Poll::Ready(Ok(Some(buf)));
                    }
                    None => {
                        return Poll::Ready(Err(io::Error::other(
                            "receive completed without a buffer",
                        )))
                    }
                },
                0 => {
                    drop(buffer);
                    self.eof = true;
                    self.disarm();
                    return Poll::Ready(Ok(None));
                }
                e if e == -libc::ENOBUFS => {
                    self.waiting_for_buffer = true;
                    self.ring(self.on_small).note_dry();
                    // The small ring ran dry: the large one takes over meanwhile.
                    self.want_small = false;
                }
                // Our own cancel (the reader was behind): re-arm once drained.
                e if e == -libc::ECANCELED => {}
                e => {
                    self.disarm();
                    return Poll::Ready(Err(io::Error::from_raw_os_error(-e)));
                }
            }
        }
    }

    /// Bytes already received and queued, without waiting: `None` when nothing is.
    pub fn try_recv(&mut self) -> Option<io::Result<Option<BufRef>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_recv(&mut cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    /// Buffers of the runtime's large ring the kernel can still fill.
    pub fn buffers_available(&self) -> u32 {
        self.large.available()
    }

    /// Whether the receive in flight draws from the small ring.
    pub fn on_small_buffers(&self) -> bool {
        self.op.is_some() && self.on_small
    }

    fn ring(&self, small: bool) -> &Rc<BufRing> {
        match (&self.small, small) {
            (Some(ring), true) => ring,
            _ => &self.large,
        }
    }

    /// After a receive of `n` bytes on op `id`: moves to the large ring when it filled a
    /// small buffer, back to the small one after enough receives that fit one.
    fn choose_class(&mut self, id: u32, n: u32) {
        let Some(small) = &self.small else { return };
        let want_small = if self.on_small {
            n < small.size()
        } else if n < small.size() {
            self.quiet = self.quiet.saturating_add(1);
            self.quiet >= QUIET_TO_SMALL
        } else {
            self.quiet = 0;
            false
        };
        self.want_small = want_small;
        if want_small != self.on_small {
            self.quiet = 0;
            let _ = with_core(|core| core.cancel(id));
        }
    }

    fn arm(&mut self) -> io::Result<()> {
        let fd = self.fd.raw();
        let small = self.want_small && self.small.is_some();
        let bgid = self.ring(small).bgid();
        let id = with_core(|core| {
            let id = core.submit(OpKind::Recv, |_| {
                Entries::One(opcode::RecvMulti::new(types::Fd(fd), bgid).build())
            })?;
            core.set_group(id, bgid);
            Ok::<_, io::Error>(id)
        })??;
        self.op = Some(id);
        self.on_small = small;
        Ok(())
    }

    fn disarm(&mut self) {
        if let Some(id) = self.op.take() {
            let _ = with_core(|core| core.release(id, None));
        }
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        self.disarm();
    }
}

impl AsRawFd for TcpStream {
    /// The descriptor, for socket options; -1 once closed. Never close it directly.
    fn as_raw_fd(&self) -> RawFd {
        self.fd.raw()
    }
}

impl AsRawFd for TcpListener {
    /// The descriptor, for socket options. Never close it directly.
    fn as_raw_fd(&self) -> RawFd {
        self.fd.raw()
    }
}
