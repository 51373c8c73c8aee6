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
pub mod peer;
pub mod prometheus;
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

/// `n` distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
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

/// True (with a message) when the test must be skipped because it needs root for
/// network namespaces and iptables.
pub fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipped: network namespaces and iptables need root");
    true
}

/// An HTTP/2 CONNECT request to `authority` (`ip:port`, or anything to test refusals).
pub fn connect_request(authority: &str) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .body(())
        .expect("request")
}

/// Whether the other side closed the stream (EOF or reset) within a few seconds.
pub fn closed_by_peer(s: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("read timeout");
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// Waits up to `limit` for `cond`, polling every 50 ms; panics naming `what` otherwise.
pub fn wait_for(what: &str, limit: std::time::Duration, cond: impl Fn() -> bool) {
    let until = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < until,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Pins the calling thread to `cpu` (one this process may use).
pub fn pin_thread_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data, set to the one CPU before the call.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(rc, 0, "cannot pin this thread to CPU {cpu}");
}
