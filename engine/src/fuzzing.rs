//! Bodies of the engine's fuzz targets (`engine/fuzz`), shared with the unit test that
//! runs them over the seed corpus, so `cargo test` replays every committed seed.
//!
//! `socks5` never panics on any input unless the SOCKS5 parser breaks one of the
//! properties it checks, which is a bug in the SOCKS5 parser (`outbound::socks5::wire`).

use crate::outbound::socks5::wire::{self as socks5, Socks5Error, Target};

/// How a SOCKS5 handshake over some bytes ends, as the engine's entry handles it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The request was read: the target, and how many bytes greeting and request used.
    Connect(Target, usize),
    /// The client is refused with this error.
    Refused(Socks5Error),
    /// The client stopped sending before its request was complete.
    Eof,
}

/// The engine's SOCKS5 handshake (`outbound::socks5`) without sockets: `data` is
/// what the client sends, arriving in reads of the sizes `reads` yields (each at least
/// one byte). Returns the outcome and the bytes after the request that were read with
/// it (the start of the client's payload).
fn handshake(data: &[u8], mut reads: impl FnMut() -> usize) -> (Outcome, Vec<u8>) {
    let mut buf = [0u8; socks5::MAX_GREETING + socks5::MAX_REQUEST];
    let (mut have, mut sent) = (0, 0);
    let mut read = |buf: &mut [u8], have: usize| -> Result<usize, Outcome> {
        if have == buf.len() {
            return Err(Outcome::Refused(Socks5Error::Malformed("request too long")));
        }
        let n = reads().max(1).min(data.len() - sent).min(buf.len() - have);
        if n == 0 {
            return Err(Outcome::Eof);
        }
        buf[have..have + n].copy_from_slice(&data[sent..sent + n]);
        sent += n;
        Ok(n)
    };
    let greeting = loop {
        match socks5::parse_greeting(&buf[..have]) {
            Ok(Some(n)) => break n,
            Ok(None) => {}
            Err(e) => return (Outcome::Refused(e), Vec::new()),
        }
        match read(&mut buf, have) {
            Ok(n) => have += n,
            Err(o) => return (o, Vec::new()),
        }
    };
    assert!(greeting <= have && greeting <= socks5::MAX_GREETING);
    buf.copy_within(greeting..have, 0);
    have -= greeting;
    loop {
        match socks5::parse_request(&buf[..have]) {
            Ok(Some((target, n))) => {
                assert!(
                    n <= have && n <= socks5::MAX_REQUEST,
                    "request used {n} of {have}"
                );
                return (
                    Outcome::Connect(target, greeting + n),
                    buf[n..have].to_vec(),
                );
            }
            Ok(None) => {}
            Err(e) => return (Outcome::Refused(e), Vec::new()),
        }
        match read(&mut buf, have) {
            Ok(n) => have += n,
            Err(o) => return (o, Vec::new()),
        }
    }
}

/// Checks what the engine would act on: a target it can dial or resolve, or a reply
/// that is a well-formed SOCKS5 answer.
fn check_outcome(outcome: &Outcome) {
    match outcome {
        Outcome::Connect(Target::Addr(addr), _) => assert_ne!(addr.port(), 0, "port 0 accepted"),
        Outcome::Connect(Target::Domain(name, port), _) => {
            assert_ne!(*port, 0, "port 0 accepted");
            assert!(!name.is_empty() && name.len() <= 255, "domain {name:?}");
            assert!(
                !name.bytes().any(|b| b.is_ascii_control() || b == b' '),
                "domain {name:?} has control characters"
            );
            assert!(
                name.parse::<std::net::IpAddr>().is_err(),
                "IP literal {name:?} left as a domain"
            );
        }
        Outcome::Refused(e) => {
            if let Some(reply) = e.reply() {
                assert!(reply.len() == 2 || reply.len() == 10, "reply {reply:?}");
                assert_eq!(reply[0], 5, "reply {reply:?}");
                assert_ne!(reply[1], 0, "a refusal replied 'succeeded'");
            }
            assert!(!e.to_string().is_empty());
        }
        Outcome::Eof => {}
    }
}

/// The fuzz entry point: the first byte chooses read sizes, the rest is what a SOCKS5
/// client sends. The handshake must end the same way however the bytes are split into
/// reads, with a target or a well-formed refusal, and never need more room than the
/// engine's buffer. Returns the outcome's kind (for the seed test): 0 connect,
/// 1 refused, 2 end of input.
pub fn socks5(data: &[u8]) -> u8 {
    let (seed, client) = data.split_first().map_or((0, data), |(s, c)| (*s, c));
    let (whole, early) = handshake(client, || usize::MAX);
    check_outcome(&whole);
    if let Outcome::Connect(_, used) = &whole {
        assert_eq!(
            early[..],
            client[*used..client.len().min(*used + early.len())],
            "bytes after the request were changed"
        );
    }
    assert_ne!(
        whole,
        Outcome::Refused(Socks5Error::Malformed("request too long")),
        "a handshake outgrew the engine's buffer"
    );
    let (bytewise, _) = handshake(client, || 1);
    assert_eq!(bytewise, whole, "one byte per read ends differently");
    let mut state = u32::from(seed) | 1;
    let (chunked, _) = handshake(client, || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        1 + (state >> 16) as usize % 64
    });
    assert_eq!(chunked, whole, "reads of random sizes end differently");
    match whole {
        Outcome::Connect(..) => 0,
        Outcome::Refused(_) => 1,
        Outcome::Eof => 2,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn socks5_fuzz_seed_corpus_runs_clean() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/socks5");
        let mut kinds = [0usize; 3];
        for entry in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            kinds[usize::from(socks5(&data))] += 1;
        }
        assert!(
            kinds.iter().sum::<usize>() >= 8,
            "seed corpus missing in {}",
            dir.display()
        );
        assert!(
            kinds.iter().all(|&k| k > 0),
            "seeds of every outcome: {kinds:?}"
        );
    }

    #[test]
    fn socks5_fuzz_body_survives_every_cut_of_a_request() {
        let mut d = vec![0, 5, 2, 2, 0, 5, 1, 0, 3, 9];
        d.extend_from_slice(b"localhost\x00\x50payload");
        for cut in 0..d.len() {
            socks5(&d[..cut]);
        }
    }
}
