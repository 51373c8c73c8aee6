//! Where the client, the server and the proxies run.
//!
//! * [`Topology::Netns`] (root): two network namespaces, the client node and the server
//!   node, joined by a veth pair created directly inside them (nothing appears in the
//!   root namespace). The addresses are private to the pair. A proxy on the client node
//!   gets the client's TCP traffic to the server through an iptables REDIRECT in the
//!   client namespace, with its own marked traffic excluded.
//! * [`Topology::Loopback`]: everything on 127.0.0.1; proxies are entered by SOCKS5.
//!
//! Dropping the topology deletes the namespaces (which removes the veth pair and every
//! rule inside them); the namespaces are also registered with [`crate::cleanup`].

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::cleanup::{self, Registration, Resource};
use crate::{sys, Error, Result};

/// One node of the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `client` or `server`.
    pub role: &'static str,
    /// The node's network namespace, `None` for the current one.
    pub netns: Option<String>,
    /// The node's address (the veth address, or 127.0.0.1).
    pub ip: IpAddr,
}

impl Node {
    /// Runs `f` on a thread inside this node's namespace and returns its result.
    /// Threads that `f` spawns run in the namespace too.
    pub fn run<R: Send, F: FnOnce() -> Result<R> + Send>(&self, f: F) -> Result<R> {
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                if let Some(ns) = &self.netns {
                    sys::enter_netns(ns)
                        .map_err(|e| Error::io(format!("entering netns {ns}"), e))?;
                }
                f()
            });
            h.join()
                .map_err(|_| Error::Protocol(format!("work on the {} node panicked", self.role)))?
        })
    }

    /// Makes `cmd` start inside this node's namespace, with no blocked signals.
    pub fn prepare(&self, cmd: &mut Command) -> Result<()> {
        sys::command_with_clean_signal_mask(cmd);
        if let Some(ns) = &self.netns {
            sys::command_in_netns(cmd, ns)
                .map_err(|e| Error::io(format!("opening netns {ns}"), e))?;
        }
        Ok(())
    }
}

/// A pair of namespaces joined by a veth pair; dropping it deletes both.
#[derive(Debug)]
pub struct NetnsPair {
    /// The client node.
    pub client: Node,
    /// The server node.
    pub server: Node,
    /// The veth device names (client side, server side).
    pub veth: (String, String),
    _regs: Vec<Registration>,
}

/// The topology of a run.
#[derive(Debug)]
pub enum Topology {
    /// Two namespaces (root only).
    Netns(NetnsPair),
    /// Everything on loopback, proxies entered by SOCKS5.
    Loopback {
        /// The client node (127.0.0.1, current namespace).
        client: Node,
        /// The server node (127.0.0.1, current namespace).
        server: Node,
    },
}

impl Topology {
    /// The loopback topology.
    pub fn loopback() -> Topology {
        let node = |role| Node {
            role,
            netns: None,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        Topology::Loopback {
            client: node("client"),
            server: node("server"),
        }
    }

    /// The client node.
    pub fn client(&self) -> &Node {
        match self {
            Topology::Netns(p) => &p.client,
            Topology::Loopback { client, .. } => client,
        }
    }

    /// The server node.
    pub fn server(&self) -> &Node {
        match self {
            Topology::Netns(p) => &p.server,
            Topology::Loopback { server, .. } => server,
        }
    }

    /// `netns` or `loopback`.
    pub fn mode(&self) -> &'static str {
        match self {
            Topology::Netns(_) => "netns",
            Topology::Loopback { .. } => "loopback",
        }
    }
}

/// Runs `ip`/`iptables`-style commands, turning failure into an error with stderr.
pub(crate) fn run_cmd(program: &str, args: &[&str]) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Command {
            command: command.clone(),
            reason: format!("{e} (is {program} installed? apt-get install -y iproute2 iptables)"),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command,
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Client and server addresses inside the pair (private to the two namespaces).
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 248, 0, 1);
/// See [`CLIENT_IP`].
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 248, 0, 2);

impl NetnsPair {
    /// Creates the namespaces and the veth pair, with names unique to this process and
    /// call. Needs root.
    pub fn create() -> Result<NetnsPair> {
        if !sys::is_root() {
            return Err(Error::Usage(
                "network namespaces need root; run as root or use --loopback".into(),
            ));
        }
        let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:x}", (std::process::id() << 8) | (n & 0xff));
        let (cns, sns) = (format!("zpperf-{id}-c"), format!("zpperf-{id}-s"));
        let (cv, sv) = (format!("zp{id}c"), format!("zp{id}s"));
        // Dropping `pair` (on any error below) deletes whatever exists so far.
        let mut pair = NetnsPair {
            client: Node {
                role: "client",
                netns: Some(cns.clone()),
                ip: IpAddr::V4(CLIENT_IP),
            },
            server: Node {
                role: "server",
                netns: Some(sns.clone()),
                ip: IpAddr::V4(SERVER_IP),
            },
            veth: (cv.clone(), sv.clone()),
            _regs: Vec::new(),
        };
        for ns in [&cns, &sns] {
            let ((), reg) = cleanup::create(|| {
                run_cmd("ip", &["netns", "add", ns])?;
                Ok(((), Resource::Netns(ns.clone())))
            })?;
            pair._regs.push(reg);
        }
        #[rustfmt::skip]
        let steps: [&[&str]; 7] = [
            &["link", "add", &cv, "netns", &cns, "type", "veth", "peer", "name", &sv, "netns", &sns],
            &["-n", &cns, "addr", "add", "10.248.0.1/24", "dev", &cv],
            &["-n", &sns, "addr", "add", "10.248.0.2/24", "dev", &sv],
            &["-n", &cns, "link", "set", &cv, "up"],
            &["-n", &sns, "link", "set", &sv, "up"],
            &["-n", &cns, "link", "set", "lo", "up"],
            &["-n", &sns, "link", "set", "lo", "up"],
        ];
        for args in steps {
            run_cmd("ip", args)?;
        }
        Ok(pair)
    }

    /// Sends the client node's TCP traffic to the server node to `port` on the client
    /// node, except packets carrying `mark` (the proxy's own upstream connections).
    pub fn redirect_outbound(&self, port: u16, mark: u32) -> Result<Redirect> {
        let ns = self.client.netns.clone().unwrap_or_default();
        let server = self.server.ip.to_string();
        let (port, mark) = (port.to_string(), mark.to_string());
        let r = Redirect { netns: ns.clone() };
        let ipt = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &ns, "iptables", "-w", "-t", "nat"];
            full.extend_from_slice(args);
            run_cmd("ip", &full)
        };
        ipt(&["-N", CHAIN])?;
        ipt(&["-A", "OUTPUT", "-p", "tcp", "-j", CHAIN])?;
        ipt(&["-A", CHAIN, "-m", "mark", "--mark", &mark, "-j", "RETURN"])?;
        ipt(&[
            "-A",
            CHAIN,
            "-p",
            "tcp",
            "-d",
            &server,
            "-j",
            "REDIRECT",
            "--to-ports",
            &port,
        ])?;
        Ok(r)
    }
}

/// The iptables chain the harness owns in the client namespace.
pub const CHAIN: &str = "ZPATH_PERF_OUT";

/// An installed REDIRECT; dropping it removes the rules.
#[derive(Debug)]
pub struct Redirect {
    netns: String,
}

impl Drop for Redirect {
    fn drop(&mut self) {
        let ns = self.netns.as_str();
        for args in [
            &["-D", "OUTPUT", "-p", "tcp", "-j", CHAIN][..],
            &["-F", CHAIN][..],
            &["-X", CHAIN][..],
        ] {
            let mut full = vec!["netns", "exec", ns, "iptables", "-w", "-t", "nat"];
            full.extend_from_slice(args);
            let _ = run_cmd("ip", &full);
        }
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for node in [&self.client, &self.server] {
            if let Some(ns) = &node.netns {
                cleanup::undo(&Resource::Netns(ns.clone()));
            }
        }
    }
}
