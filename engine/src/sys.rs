//! Every raw syscall and `unsafe` block of the engine, behind safe functions.
//! Each function states the invariant that makes it sound.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// The destination a connection had before iptables/nftables redirected it to us
/// (`SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` for IPv6).
pub fn original_dst(stream: &impl AsRawFd, local: SocketAddr) -> io::Result<SocketAddr> {
    let addr = with_sock(stream.as_raw_fd(), |sock| {
        if local.is_ipv4() || is_v4_mapped(local) {
            sock.original_dst_v4()
        } else {
            sock.original_dst_v6()
        }
    })?;
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })
}

fn is_v4_mapped(addr: SocketAddr) -> bool {
    matches!(addr, SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some())
}

/// Makes the next close of this socket send RST instead of FIN (`SO_LINGER` 0).
pub fn set_reset_on_close(stream: &impl AsRawFd) -> io::Result<()> {
    with_sock(stream.as_raw_fd(), |s| s.set_linger(Some(Duration::ZERO)))
}

/// Sets `SO_LINGER` 0 on a raw descriptor owned by a live connection of this shard.
///
/// Sound because the shard only calls it for descriptors of connections still in its
/// table: the task that owns them has not dropped them (single-threaded shard).
pub fn set_reset_on_close_fd(fd: RawFd) -> io::Result<()> {
    // `fd` is open for as long as the table entry exists (see above).
    with_sock(fd, |s| s.set_linger(Some(Duration::ZERO)))
}

/// Turns on TCP keepalive probes with these timings (`SO_KEEPALIVE`, `TCP_KEEPIDLE`,
/// `TCP_KEEPINTVL`, `TCP_KEEPCNT`).
pub fn set_keepalive(
    stream: &impl AsRawFd,
    time: Duration,
    interval: Duration,
    retries: u32,
) -> io::Result<()> {
    let ka = socket2::TcpKeepalive::new()
        .with_time(time)
        .with_interval(interval)
        .with_retries(retries);
    with_sock(stream.as_raw_fd(), |s| s.set_tcp_keepalive(&ka))
}

/// Why an upstream socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The source address asked for cannot be used: the connection is not made from
    /// another one, whose `sourceIps` policy would not be the workload's.
    #[error("cannot connect from {ip}: {error}")]
    Source {
        /// The address asked for.
        ip: std::net::IpAddr,
        /// Why it cannot be bound.
        error: io::Error,
    },
    /// The socket could not be created or the connect not started.
    #[error(transparent)]
    Socket(#[from] io::Error),
}

impl ConnectError {
    /// As an `io::Error` (for callers that ask for no source address).
    pub fn into_io(self) -> io::Error {
        match self {
            ConnectError::Socket(e) => e,
            e @ ConnectError::Source { .. } => io::Error::new(io::ErrorKind::AddrNotAvailable, e),
        }
    }
}

/// A TCP socket for an upstream connection to `dst`, not yet connected: `SO_MARK` (so
/// capture rules can exclude our own traffic), `TCP_NODELAY`, and bound to `source` when
/// given: the workload's own address, never silently another. An address of this host
/// is bound as is; any other needs `IP_TRANSPARENT` (CAP_NET_ADMIN, and return traffic
/// routed to this host, as in-pod or TPROXY setups do), else [`ConnectError::Source`].
pub fn upstream_socket(
    dst: SocketAddr,
    mark: u32,
    source: Option<std::net::IpAddr>,
) -> Result<Socket, ConnectError> {
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_cloexec(true)?;
    if let Some(ip) = source {
        bind_source(&sock, ip, dst).map_err(|error| ConnectError::Source { ip, error })?;
    }
    if mark != 0 {
        sock.set_mark(mark).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot set SO_MARK {mark} (needs CAP_NET_ADMIN; use --packet-mark 0 to disable): {e}"))
        })?;
    }
    sock.set_tcp_nodelay(true)?;
    Ok(sock)
}

/// Binds `sock` (for `dst`) to `ip`, port chosen by the kernel.
fn bind_source(sock: &Socket, ip: std::net::IpAddr, dst: SocketAddr) -> io::Result<()> {
    let ip = ip.to_canonical();
    if ip.is_ipv4() != dst.ip().to_canonical().is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!(
                "the source is IPv{} and the destination {dst} is not",
                if ip.is_ipv4() { 4 } else { 6 }
            ),
        ));
    }
    // A v4 source on a socket for a v4-mapped destination is bound v4-mapped.
    let local = match (ip, dst) {
        (std::net::IpAddr::V4(v4), SocketAddr::V6(_)) => {
            SocketAddr::new(v4.to_ipv6_mapped().into(), 0)
        }
        _ => SocketAddr::new(ip, 0),
    };
    match sock.bind(&local.into()) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
        Err(e) => return Err(e),
    }
    let transparent = if dst.is_ipv4() {
        sock.set_ip_transparent_v4(true)
    } else {
        sock.set_ip_transparent_v6(true)
    };
    transparent.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("not an address of this host, and IP_TRANSPARENT is not permitted ({e}; it needs CAP_NET_ADMIN)"),
        )
    })?;
    sock.bind(&local.into())
}

/// Whether `ip` is an address of this host (a bind to it succeeds without
/// `IP_FREEBIND`/`IP_TRANSPARENT`; with `net.ipv4.ip_nonlocal_bind` every address is,
/// which errs on the side of refusing).
pub fn is_local_address(ip: std::net::IpAddr) -> bool {
    let addr = SocketAddr::new(ip, 0);
    Socket::new(Domain::for_address(addr), Type::DGRAM, None)
        .and_then(|s| s.bind(&addr.into()))
        .is_ok()
}

/// A listening socket with `SO_REUSEPORT`, so every shard can bind the same address and
/// the kernel spreads connections across shards.
pub fn listen_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let sock = bind_reuseport(addr)?;
    sock.listen(backlog)?;
    Ok(sock)
}

/// Marks `listener` as the one for connections received on `cpu` (`SO_INCOMING_CPU`):
/// in its `SO_REUSEPORT` group the kernel (Linux 6.2 and later) hands a new connection
/// to the listener marked with the CPU that received it, and hashes among the others
/// when none is. Independent of the order listeners joined or left the group.
pub fn steer_to_cpu(listener: &Socket, cpu: usize) -> io::Result<()> {
    listener.set_cpu_affinity(cpu)
}

/// Whether this host can open IPv6 sockets (false when the kernel runs without IPv6).
pub fn ipv6_available() -> bool {
    Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)).is_ok()
}

/// `addr`, except that the IPv6 wildcard `[::]` (which listens dual-stack) becomes
/// `0.0.0.0` when the host has no IPv6.
pub fn usable_wildcard(addr: SocketAddr, ipv6: bool) -> SocketAddr {
    if addr.is_ipv6() && addr.ip().is_unspecified() && !ipv6 {
        SocketAddr::from(([0, 0, 0, 0], addr.port()))
    } else {
        addr
    }
}

/// A bound, not listening, `SO_REUSEPORT` socket: reserves a port (for `:0` addresses)
/// without receiving connections.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_cloexec(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "CPU {cpu} is beyond the {} a CPU set holds",
                libc::CPU_SETSIZE
            ),
        ));
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it (cpu is
    // in range, checked above) and sched_setaffinity only reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a borrowed view of an open descriptor. Callers pass descriptors of
/// sockets they hold (or, for drain, of live table entries), so `fd` stays open for the call.
fn with_sock<R>(fd: RawFd, f: impl FnOnce(SockRef<'_>) -> R) -> R {
    // SAFETY: per the contract above the descriptor is open for the duration of `f`;
    // BorrowedFd/SockRef never close it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    f(SockRef::from(&borrowed))
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Raises the soft open-file limit to the hard limit: a proxy holds two descriptors per
/// connection. Returns the new soft limit (the old one if it cannot be raised).
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// The soft open-file limit (`RLIMIT_NOFILE`); `u64::MAX` when unlimited.
pub fn fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv6_wildcard_falls_back_to_ipv4_only_without_ipv6() {
        let any6: SocketAddr = "[::]:15008".parse().unwrap();
        let any4: SocketAddr = "0.0.0.0:15008".parse().unwrap();
        let one6: SocketAddr = "[fd00::1]:15008".parse().unwrap();
        assert_eq!(usable_wildcard(any6, true), any6);
        assert_eq!(usable_wildcard(any6, false), any4);
        // Only the wildcard changes: a given IPv6 address fails loudly at bind instead.
        assert_eq!(usable_wildcard(one6, false), one6);
        assert_eq!(usable_wildcard(any4, false), any4);
    }

    #[test]
    fn a_source_address_is_kept_or_the_connect_refused_never_replaced() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        // TEST-NET-1: never an address of this host.
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        match upstream_socket(dst, 0, Some(ip)) {
            // IP_TRANSPARENT was permitted (CAP_NET_ADMIN).
            Ok(sock) => assert_eq!(sock.local_addr().unwrap().as_socket().unwrap().ip(), ip),
            Err(ConnectError::Source { ip: refused, .. }) => assert_eq!(refused, ip),
            Err(e) => panic!("neither kept nor refused: {e}"),
        }
        let local: std::net::IpAddr = "127.0.0.3".parse().unwrap();
        let sock = upstream_socket(dst, 0, Some(local)).unwrap();
        assert_eq!(sock.local_addr().unwrap().as_socket().unwrap().ip(), local);
    }

    #[test]
    fn a_source_of_the_other_family_is_refused() {
        let dst: SocketAddr = "[::1]:9".parse().unwrap();
        if !ipv6_available() {
            eprintln!("skipped: this host has no IPv6");
            return;
        }
        let v4 = "127.0.0.1".parse().unwrap();
        assert!(matches!(
            upstream_socket(dst, 0, Some(v4)),
            Err(ConnectError::Source { .. })
        ));
    }

    #[test]
    fn keepalive_timings_are_set_on_the_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        set_keepalive(&s, Duration::from_secs(180), Duration::from_secs(60), 9).unwrap();
        let sock = SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(180));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 9);
    }

    #[test]
    fn a_dual_stack_listener_takes_ipv4() {
        if !ipv6_available() {
            eprintln!("skipped: this host has no IPv6");
            return;
        }
        let sock = listen_reuseport("[::]:0".parse().unwrap(), 8).unwrap();
        let port = sock.local_addr().unwrap().as_socket().unwrap().port();
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("IPv4 client accepted");
    }
}
