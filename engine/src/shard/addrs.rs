//! The addresses a shard listens on, and whether a destination is one of them.

use std::net::SocketAddr;

use crate::sys;

/// The addresses every shard listens on, with `:0` ports already resolved.
#[derive(Debug, Clone, Default)]
pub struct BoundAddrs {
    /// Captured outbound.
    pub outbound: Option<SocketAddr>,
    /// Captured inbound plaintext.
    pub inbound: Option<SocketAddr>,
    /// SOCKS5 entry.
    pub socks5: Option<SocketAddr>,
    /// HBONE (15008).
    pub hbone: Option<SocketAddr>,
    /// Our other ports (HBONE, admin, metrics, readiness): never a relay target.
    pub reserved: Vec<SocketAddr>,
}

impl BoundAddrs {
    /// Whether `dst` reaches one of our own listeners (relaying there would loop):
    /// an unspecified address (`0.0.0.0`, `[::]`: connecting there reaches this host),
    /// the connection's own local address, one of our ports on the address its listener
    /// is bound to, or, for a wildcard listener, on any address of this host. A listener
    /// on 127.0.0.1 is not reached through 127.0.0.2: that is someone else's port.
    pub fn is_own(&self, dst: SocketAddr, local: Option<SocketAddr>) -> bool {
        // IPv4-mapped IPv6 addresses (dual-stack sockets) compare as IPv4.
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let dst = canonical(dst);
        let local = local.map(canonical);
        if dst.ip().is_unspecified() || Some(dst) == local {
            return true;
        }
        let mut ours = [self.outbound, self.inbound, self.socks5, self.hbone]
            .into_iter()
            .flatten()
            .chain(self.reserved.iter().copied())
            .map(canonical)
            .filter(|a| a.port() == dst.port())
            .peekable();
        if ours.peek().is_none() {
            return false;
        }
        let ip = dst.ip();
        // Asked only for one of our ports: no system call for ordinary destinations.
        let this_host =
            ip.is_loopback() || local.is_some_and(|l| l.ip() == ip) || sys::is_local_address(ip);
        ours.any(|a| a.ip() == ip || (a.ip().is_unspecified() && this_host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> BoundAddrs {
        let a = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        BoundAddrs {
            outbound: a("[::]:15001"),
            inbound: a("[::]:15006"),
            socks5: a("127.0.0.1:15080"),
            hbone: a("[::]:15008"),
            reserved: vec!["127.0.0.1:15000".parse().unwrap()],
        }
    }

    fn own(dst: &str) -> bool {
        addrs().is_own(dst.parse().unwrap(), None)
    }

    #[test]
    fn unspecified_targets_are_this_host_on_any_port() {
        assert!(own("0.0.0.0:15080"));
        assert!(own("[::]:15080"));
        assert!(own("[::ffff:0.0.0.0]:15001"));
        assert!(own("0.0.0.0:8080"), "0.0.0.0 is never a destination");
    }

    #[test]
    fn loopback_addresses_on_our_ports_are_a_loop_where_a_listener_takes_them() {
        assert!(own("127.0.0.1:15080"));
        assert!(own("127.0.0.1:15000"));
        // Wildcard listeners take every loopback address.
        assert!(own("[::1]:15001"));
        assert!(own("127.0.0.2:15006"));
        assert!(own("[::ffff:127.0.0.3]:15008"));
        // Listeners on 127.0.0.1 do not: another process may own these.
        assert!(!own("127.0.0.2:15080"));
        assert!(!own("127.9.9.9:15000"));
        assert!(!own("127.0.0.2:8080"));
    }

    #[test]
    fn a_local_interface_address_on_a_wildcard_port_is_a_loop() {
        // Whatever this host's addresses are, the probe must agree with a bind.
        let lo_any = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let _ = lo_any.connect("192.0.2.1:9");
        if let Ok(a) = lo_any.local_addr() {
            if !a.ip().is_unspecified() {
                assert!(own(&format!("{}:15001", a.ip())), "{a} is local");
            }
        }
        assert!(
            !own("192.0.2.1:15001"),
            "a documentation address is not local"
        );
    }
}
