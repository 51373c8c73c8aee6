//! SOCKS5 (RFC 1928) as an entry for hosts without capture: no authentication, CONNECT
//! only, IPv4, IPv6 and domain-name destinations. Parsing is sans-I/O: functions take
//! the bytes read so far and say "need more", a request, or the error reply to send.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest greeting: version, count, 255 methods.
pub const MAX_GREETING: usize = 2 + 255;
/// Longest request: header, domain length, 255-byte name, port.
pub const MAX_REQUEST: usize = 4 + 1 + 255 + 2;

/// Reply codes (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// Succeeded.
    Succeeded = 0x00,
    /// General SOCKS server failure.
    GeneralFailure = 0x01,
    /// Connection not allowed by ruleset.
    NotAllowed = 0x02,
    /// Network unreachable.
    NetworkUnreachable = 0x03,
    /// Host unreachable.
    HostUnreachable = 0x04,
    /// Connection refused.
    ConnectionRefused = 0x05,
    /// Command not supported.
    CommandNotSupported = 0x07,
    /// Address type not supported.
    AddressTypeNotSupported = 0x08,
}

/// Where the client wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address.
    Addr(SocketAddr),
    /// A host name to resolve, and a port.
    Domain(String, u16),
}

/// Why a SOCKS5 exchange was refused; says which reply (if any) to send before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Socks5Error {
    /// Not SOCKS version 5.
    #[error("not a SOCKS5 client (version byte {0:#04x})")]
    Version(u8),
    /// The client offers no method we accept (we only accept "no authentication").
    #[error(
        "client offers no acceptable authentication method (only 'no authentication' is supported)"
    )]
    NoAcceptableMethod,
    /// A command other than CONNECT.
    #[error("unsupported SOCKS5 command {0:#04x} (only CONNECT is supported)")]
    Command(u8),
    /// An address type other than IPv4, IPv6, domain.
    #[error("unsupported SOCKS5 address type {0:#04x}")]
    AddressType(u8),
    /// A malformed field (reserved byte, empty or non-UTF-8 domain, port 0).
    #[error("malformed SOCKS5 request: {0}")]
    Malformed(&'static str),
}

impl Socks5Error {
    /// The bytes to send before closing, if the protocol has a reply for this error.
    pub fn reply(&self) -> Option<Vec<u8>> {
        match self {
            Socks5Error::Version(_) => None,
            Socks5Error::NoAcceptableMethod => Some(vec![5, 0xFF]),
            Socks5Error::Command(_) => Some(reply(Reply::CommandNotSupported, None).to_vec()),
            Socks5Error::AddressType(_) => {
                Some(reply(Reply::AddressTypeNotSupported, None).to_vec())
            }
            Socks5Error::Malformed(_) => Some(reply(Reply::GeneralFailure, None).to_vec()),
        }
    }
}

/// Parses the greeting. `Ok(None)`: more bytes needed; `Ok(Some(n))`: the greeting used
/// `n` bytes and the answer is `[5, 0]` (no authentication).
pub fn parse_greeting(buf: &[u8]) -> Result<Option<usize>, Socks5Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != 5 {
        return Err(Socks5Error::Version(version));
    }
    let Some(&n) = buf.get(1) else {
        return Ok(None);
    };
    let n = n as usize;
    if n == 0 {
        return Err(Socks5Error::NoAcceptableMethod);
    }
    let Some(methods) = buf.get(2..2 + n) else {
        return Ok(None);
    };
    if methods.contains(&0) {
        Ok(Some(2 + n))
    } else {
        Err(Socks5Error::NoAcceptableMethod)
    }
}

/// Parses the request. `Ok(None)`: more bytes needed; `Ok(Some((target, n)))`: the
/// request used `n` bytes.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Target, usize)>, Socks5Error> {
    if buf.len() < 4 {
        if let Some(&v) = buf.first() {
            if v != 5 {
                return Err(Socks5Error::Version(v));
            }
        }
        return Ok(None);
    }
    let (version, cmd, rsv, atyp) = (buf[0], buf[1], buf[2], buf[3]);
    if version != 5 {
        return Err(Socks5Error::Version(version));
    }
    if cmd != 1 {
        return Err(Socks5Error::Command(cmd));
    }
    if rsv != 0 {
        return Err(Socks5Error::Malformed("reserved byte is not zero"));
    }
    let (addr_len, start) = match atyp {
        1 => (4, 4),
        4 => (16, 4),
        3 => match buf.get(4) {
            None => return Ok(None),
            Some(0) => return Err(Socks5Error::Malformed("empty domain name")),
            Some(&l) => (l as usize, 5),
        },
        other => return Err(Socks5Error::AddressType(other)),
    };
    let end = start + addr_len + 2;
    let Some(body) = buf.get(start..end) else {
        return Ok(None);
    };
    let port = u16::from_be_bytes([body[addr_len], body[addr_len + 1]]);
    if port == 0 {
        return Err(Socks5Error::Malformed("port 0"));
    }
    let target = match atyp {
        1 => {
            let b: [u8; 4] = body[..4]
                .try_into()
                .map_err(|_| Socks5Error::Malformed("address"))?;
            Target::Addr(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(b)), port))
        }
        4 => {
            let b: [u8; 16] = body[..16]
                .try_into()
                .map_err(|_| Socks5Error::Malformed("address"))?;
            Target::Addr(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), port))
        }
        _ => {
            let name = std::str::from_utf8(&body[..addr_len])
                .map_err(|_| Socks5Error::Malformed("domain name is not UTF-8"))?;
            if name.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                return Err(Socks5Error::Malformed("domain name has control characters"));
            }
            // An IP literal sent as a domain name is an address.
            match name.parse::<IpAddr>() {
                Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
                Err(_) => Target::Domain(name.to_string(), port),
            }
        }
    };
    Ok(Some((target, end)))
}

/// The reply bytes for `code`, with the bound address (zeros when unknown).
pub fn reply(code: Reply, bound: Option<SocketAddr>) -> [u8; 10] {
    let (ip, port) = match bound {
        Some(SocketAddr::V4(a)) => (a.ip().octets(), a.port()),
        _ => ([0; 4], 0),
    };
    let p = port.to_be_bytes();
    [5, code as u8, 0, 1, ip[0], ip[1], ip[2], ip[3], p[0], p[1]]
}

/// The reply for a failed upstream connect.
pub fn reply_for_io(e: &std::io::Error) -> Reply {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => Reply::ConnectionRefused,
        TimedOut | HostUnreachable => Reply::HostUnreachable,
        NetworkUnreachable => Reply::NetworkUnreachable,
        _ => Reply::GeneralFailure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_needs_all_methods() {
        assert_eq!(parse_greeting(&[]), Ok(None));
        assert_eq!(parse_greeting(&[5]), Ok(None));
        assert_eq!(parse_greeting(&[5, 2, 2]), Ok(None));
        assert_eq!(parse_greeting(&[5, 2, 2, 0]), Ok(Some(4)));
    }

    #[test]
    fn greeting_without_no_auth_is_refused_with_ff() {
        let e = parse_greeting(&[5, 1, 2]).unwrap_err();
        assert_eq!(e, Socks5Error::NoAcceptableMethod);
        assert_eq!(e.reply(), Some(vec![5, 0xFF]));
        assert_eq!(
            parse_greeting(&[5, 0]),
            Err(Socks5Error::NoAcceptableMethod)
        );
    }

    #[test]
    fn wrong_version_gets_no_reply() {
        let e = parse_greeting(b"GET / HTTP/1.1\r\n").unwrap_err();
        assert_eq!(e, Socks5Error::Version(b'G'));
        assert_eq!(e.reply(), None);
    }

    #[test]
    fn ipv4_ipv6_and_domain_requests_parse() {
        let v4 = [5, 1, 0, 1, 10, 0, 0, 1, 0x1f, 0x90];
        assert_eq!(
            parse_request(&v4),
            Ok(Some((Target::Addr("10.0.0.1:8080".parse().unwrap()), 10)))
        );
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&"::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0, 80]);
        assert_eq!(
            parse_request(&v6),
            Ok(Some((Target::Addr("[::1]:80".parse().unwrap()), 22)))
        );
        let mut d = vec![5, 1, 0, 3, 9];
        d.extend_from_slice(b"localhost");
        d.extend_from_slice(&[0, 80]);
        assert_eq!(
            parse_request(&d),
            Ok(Some((Target::Domain("localhost".into(), 80), 16)))
        );
    }

    #[test]
    fn truncated_requests_need_more() {
        let v4 = [5, 1, 0, 1, 10, 0, 0, 1, 0x1f, 0x90];
        for n in 0..v4.len() {
            assert_eq!(parse_request(&v4[..n]), Ok(None), "prefix of {n}");
        }
    }

    #[test]
    fn bind_and_udp_are_not_supported() {
        let e = parse_request(&[5, 2, 0, 1, 1, 2, 3, 4, 0, 80]).unwrap_err();
        assert_eq!(e, Socks5Error::Command(2));
        assert_eq!(e.reply().unwrap()[1], Reply::CommandNotSupported as u8);
        assert_eq!(parse_request(&[5, 3, 0, 1]), Err(Socks5Error::Command(3)));
    }

    #[test]
    fn unknown_address_type_is_refused() {
        let e = parse_request(&[5, 1, 0, 9, 0, 0]).unwrap_err();
        assert_eq!(e.reply().unwrap()[1], Reply::AddressTypeNotSupported as u8);
    }

    #[test]
    fn malformed_fields_are_refused() {
        assert!(matches!(
            parse_request(&[5, 1, 1, 1, 1, 2, 3, 4, 0, 80]),
            Err(Socks5Error::Malformed(_))
        ));
        assert!(matches!(
            parse_request(&[5, 1, 0, 3, 0, 0, 80]),
            Err(Socks5Error::Malformed(_))
        ));
        assert!(matches!(
            parse_request(&[5, 1, 0, 1, 1, 2, 3, 4, 0, 0]),
            Err(Socks5Error::Malformed(_))
        ));
        assert!(matches!(
            parse_request(&[5, 1, 0, 3, 2, 0xff, 0xfe, 0, 80]),
            Err(Socks5Error::Malformed(_))
        ));
    }

    #[test]
    fn reply_carries_bound_address() {
        let r = reply(Reply::Succeeded, Some("127.0.0.1:15080".parse().unwrap()));
        assert_eq!(r, [5, 0, 0, 1, 127, 0, 0, 1, 0x3a, 0xe8]);
    }
}
