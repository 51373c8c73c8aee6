//! Two zpath nodes joined by HBONE (root only): each in its own network namespace,
//! sharing a mesh root given by flag. Node A (`node-a`, at `<net>.1`) serves the
//! `client` workload; node B (`node-b`, at `<net>.2`) serves the `server` workload and
//! listens for HBONE on port 15008. Clients enter through node A's SOCKS5 listener at
//! `<net>.1`, so their source address is the client workload's.

use std::net::{SocketAddr, TcpListener, TcpStream};

use crate::netns::HostPair;
use crate::{Node, NodeOptions};

/// The two workloads, both reached over HBONE; `extra` is appended (policies...).
pub fn config(net: &str, extra: &str) -> String {
    config_with(net, "server", extra)
}

/// As [`config`], with the server workload's service account given.
pub fn config_with(net: &str, server_sa: &str, extra: &str) -> String {
    config_at(&format!("{net}.1"), &format!("{net}.2"), server_sa, extra)
}

/// The two workloads at the addresses given (IPv4 or IPv6).
pub fn config_at(client_ip: &str, server_ip: &str, server_sa: &str, extra: &str) -> String {
    format!(
        "workloads:
- name: client
  namespace: default
  serviceAccount: client
  workloadIps: [\"{client_ip}\"]
  protocol: HBONE
  node: node-a
- name: server
  namespace: default
  serviceAccount: {server_sa}
  workloadIps: [\"{server_ip}\"]
  protocol: HBONE
  node: node-b
{extra}"
    )
}

/// Two hosts, two nodes, one mesh root.
pub struct Mesh {
    /// The namespaces (client host: node A; server host: node B).
    pub hosts: HostPair,
    /// Node A, serving the client workload.
    pub a: Node,
    /// Node B, serving the server workload.
    pub b: Node,
    /// The shared root's directory.
    pub ca: tempfile::TempDir,
    /// The network prefix, e.g. "10.79.0".
    pub net: String,
}

impl Mesh {
    /// Starts both nodes. `config_b` defaults to `config_a` when `None`.
    pub fn start(
        tag: &str,
        net: &str,
        config_a: &str,
        config_b: Option<&str>,
        args_a: &[&str],
        args_b: &[&str],
    ) -> Mesh {
        let hosts = HostPair::new(tag, net);
        let bind_a = format!("{net}.1");
        Self::start_on(hosts, net, &bind_a, config_a, config_b, args_a, args_b)
    }

    /// As [`Mesh::start`] over IPv6: the hosts also have `<net6>::1` and `<net6>::2`,
    /// node A's listeners are on `<net6>::1`, and both nodes use `config`.
    pub fn start_ipv6(tag: &str, net: &str, net6: &str, config: &str) -> Mesh {
        let hosts = HostPair::new(tag, net);
        hosts.add_ipv6(net6);
        let bind_a = format!("[{net6}::1]");
        Self::start_on(hosts, net, &bind_a, config, None, &[], &[])
    }

    fn start_on(
        hosts: HostPair,
        net: &str,
        bind_a: &str,
        config_a: &str,
        config_b: Option<&str>,
        args_a: &[&str],
        args_b: &[&str],
    ) -> Mesh {
        let ca = tempfile::tempdir().expect("ca dir");
        zpath_crypto::LocalCa::load_or_create(ca.path()).expect("mesh root");
        // `--shards N` among the args sets the node's shard count.
        let shards = |args: &[&str]| {
            args.windows(2)
                .find(|w| w[0] == "--shards")
                .map_or(2, |w| w[1].parse().expect("--shards N"))
        };
        let root = |args: &[&str]| {
            let mut v = vec![
                "--ca-cert".to_string(),
                ca.path()
                    .join(zpath_crypto::ROOT_CERT_FILE)
                    .display()
                    .to_string(),
                "--ca-key".to_string(),
                ca.path()
                    .join(zpath_crypto::ROOT_KEY_FILE)
                    .display()
                    .to_string(),
            ];
            let mut rest = args.iter();
            while let Some(a) = rest.next() {
                if *a == "--shards" {
                    rest.next();
                } else {
                    v.push(a.to_string());
                }
            }
            v
        };
        let a = Node::start(NodeOptions {
            netns: Some(hosts.client.name.clone()),
            bind_ip: bind_a.into(),
            config: config_a.into(),
            node_name: "node-a".into(),
            hbone_port: Some(15008),
            args: root(args_a),
            shards: shards(args_a),
            ..NodeOptions::default()
        });
        let b = Node::start(NodeOptions {
            netns: Some(hosts.server.name.clone()),
            bind_ip: "[::]".into(),
            config: config_b.unwrap_or(config_a).into(),
            node_name: "node-b".into(),
            hbone_port: Some(15008),
            args: root(args_b),
            shards: shards(args_b),
            ..NodeOptions::default()
        });
        Mesh {
            hosts,
            a,
            b,
            ca,
            net: net.into(),
        }
    }

    /// A listener on the server workload's address (inside node B's namespace).
    pub fn server_listener(&self) -> TcpListener {
        let addr = format!("{}.2:0", self.net);
        self.hosts
            .server
            .enter(move || TcpListener::bind(addr).expect("bind server workload"))
    }

    /// Connects from the client workload to `target` through node A (SOCKS5).
    /// `Err(code)` is the SOCKS5 reply code of a refusal.
    pub fn connect(&self, target: SocketAddr) -> Result<TcpStream, u8> {
        let proxy = self.a.socks5;
        self.hosts.client.enter(move || {
            crate::socks5::connect(proxy, target).expect("reach node A's SOCKS5 listener")
        })
    }
}

impl Mesh {
    /// Sends `requests` on one HBONE connection from the client host to node B's port
    /// 15008, presenting a certificate for `spiffe://cluster.local/ns/default/sa/<sa>`
    /// from the mesh root; returns each answer's status (or the error).
    pub fn hbone_requests(
        &self,
        sa: &str,
        requests: Vec<http::Request<()>>,
    ) -> Vec<Result<u16, String>> {
        let ca = zpath_crypto::LocalCa::load_or_create(self.ca.path()).expect("mesh root");
        let ours = zpath_crypto::Identity::new("cluster.local", "default", sa).expect("identity");
        let server =
            zpath_crypto::Identity::new("cluster.local", "default", "server").expect("identity");
        let cert = ca
            .issue(&ours, std::time::Duration::from_secs(3600))
            .expect("issue");
        let tls = zpath_crypto::CertifiedTls::new(std::sync::Arc::new(cert)).expect("tls");
        let config = tls.client_config(&[server]).expect("client config");
        let addr: SocketAddr = format!("{}.2:15008", self.net).parse().expect("address");
        self.hosts.client.enter(move || {
            let rt = zpath_uring::Runtime::new(zpath_uring::Config::default())
                .expect("start a zpath-uring runtime");
            rt.block_on(async move {
                let tcp =
                    zpath_uring::TcpStream::connect(addr, &zpath_uring::ConnectOptions::default())
                        .await
                        .expect("connect 15008");
                let tcp = zpath_uring::IoStream::new(tcp).expect("receive on 15008");
                let stream = zpath_crypto::TlsStream::connect(
                    tcp,
                    &config,
                    zpath_crypto::SessionBuffers::new(4 * zpath_crypto::MAX_RECORD_LEN),
                )
                .await
                .expect("TLS handshake");
                let (tunnel, driver) = zpath_tunnel::client::handshake(
                    stream,
                    &zpath_tunnel::H2Settings::default(),
                    100,
                    Default::default(),
                )
                .await
                .expect("HTTP/2 handshake");
                let driver = zpath_uring::spawn_local(driver);
                let pool = zpath_tunnel::Pool::<u8>::new(100);
                let mut out = Vec::new();
                for req in requests {
                    let t = tunnel.clone();
                    let (_, slot) = pool
                        .checkout(&0, move |_| async move { Ok(t) })
                        .await
                        .expect("slot");
                    out.push(match tunnel.open(req, slot).await {
                        Ok(_) => Ok(200),
                        Err(zpath_tunnel::OpenError::Status(s)) => Ok(s.as_u16()),
                        Err(e) => Err(e.to_string()),
                    });
                }
                drop(tunnel);
                drop(pool);
                driver.abort();
                out
            })
            .expect("run the HBONE client on the ring")
        })
    }
}
