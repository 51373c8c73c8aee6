//! Network namespaces for capture tests (root only): created by a test, removed when
//! the guard drops, even when the test fails.

use std::process::Command;

/// Runs a command and panics with its output if it fails.
pub fn run(cmd: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run shell");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted on drop (unless borrowed with [`Netns::existing`]).
pub struct Netns {
    /// Its name.
    pub name: String,
    owned: bool,
}

impl Netns {
    /// Creates a namespace with loopback up. The name gets the process id appended so
    /// parallel test processes do not collide.
    pub fn new(prefix: &str) -> Netns {
        let name = format!("{prefix}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&format!("ip netns add {name}"));
        let ns = Netns { name, owned: true };
        ns.exec("ip link set lo up");
        ns
    }

    /// A handle on a namespace someone else owns (not deleted on drop).
    pub fn existing(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            owned: false,
        }
    }

    /// Runs a shell command inside the namespace.
    pub fn exec(&self, cmd: &str) {
        run(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ));
    }

    /// Runs `f` on a thread that has entered the namespace; sockets it creates live there.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a namespace fd we hold; it only affects this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two hosts: namespaces joined by a veth pair, the client at `<net>.1/24` and the
/// server at `<net>.2/24` (addresses that exist only inside the two namespaces).
pub struct HostPair {
    /// The client host.
    pub client: Netns,
    /// The server host.
    pub server: Netns,
    /// The veth ends: the client's, then the server's.
    links: (String, String),
}

impl HostPair {
    /// Creates both namespaces and the link; `tag` (at most 4 characters) keeps
    /// interface and namespace names apart between tests, `net` is e.g. "10.77.0".
    pub fn new(tag: &str, net: &str) -> HostPair {
        let client = Netns::new(&format!("zp-{tag}-c"));
        let server = Netns::new(&format!("zp-{tag}-s"));
        let id = std::process::id() % 100_000;
        let (a, b) = (format!("{tag}a{id}"), format!("{tag}b{id}"));
        run(&format!(
            "ip link add {a} netns {} type veth peer name {b} netns {}",
            client.name, server.name
        ));
        client.exec(&format!(
            "ip addr add {net}.1/24 dev {a} && ip link set {a} up"
        ));
        server.exec(&format!(
            "ip addr add {net}.2/24 dev {b} && ip link set {b} up"
        ));
        HostPair {
            client,
            server,
            links: (a, b),
        }
    }

    /// Adds `ip` (IPv4, in the pair's /24) to the client host's link, for a second
    /// source address there.
    pub fn add_client_ipv4(&self, ip: &str) {
        self.client
            .exec(&format!("ip addr add {ip}/24 dev {}", self.links.0));
    }

    /// Adds IPv6 addresses too: the client at `<net6>::1/64`, the server at
    /// `<net6>::2/64` (`net6` is e.g. "fd00:82:6"), usable at once (no duplicate
    /// address detection).
    pub fn add_ipv6(&self, net6: &str) {
        let (a, b) = &self.links;
        self.client
            .exec(&format!("ip -6 addr add {net6}::1/64 dev {a} nodad"));
        self.server
            .exec(&format!("ip -6 addr add {net6}::2/64 dev {b} nodad"));
    }
}
