//! zpath-tests: helpers for the end-to-end tests over real sockets: running `zpath`
//! nodes as real processes, echo servers, a SOCKS5 client, network namespaces.
//! The tests themselves live in `tests/tests/`.

// Test support: a failed set-up step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod echo;
pub mod h2raw;
pub mod mesh;
pub mod netns;
pub mod node;
pub mod socks5;

pub use node::{Node, NodeOptions};

/// Whether the tests run as root (network namespaces and iptables need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local address").port()
}

/// Deterministic test data of `len` bytes, different for each `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Sends `data`, half-closes, and reads the answer until the other side's FIN.
pub fn roundtrip(mut s: std::net::TcpStream, data: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut reader = s.try_clone().expect("clone stream");
    let reading = std::thread::spawn(move || {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).expect("read the answer");
        got
    });
    s.write_all(data).expect("send");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    reading.join().expect("reader thread")
}
