//! HBONE against a peer that shares no code with zpath (tokio-rustls and h2 on tokio,
//! configured as ztunnel configures itself; see `zpath_tests::peer`), both ways, over
//! real sockets in network namespaces (root only):
//!
//! * the peer as a client, as ztunnel's outbound would dial, is served by zpath's 15008;
//! * zpath's outbound is served by the peer as the destination node's 15008.

use std::net::SocketAddr;
use std::time::Duration;

use zpath_tests::echo::EchoServer;
use zpath_tests::mesh::{self, Mesh};
use zpath_tests::netns::HostPair;
use zpath_tests::peer::{self, spiffe};
use zpath_tests::{pattern, skip_unless_root, Node, NodeOptions};

#[test]
fn an_independent_hbone_client_is_served_by_zpath() {
    if skip_unless_root() {
        return;
    }
    let net = "10.82.1";
    let config = mesh::config(net, "");
    let m = Mesh::start("ioc", net, &config, None, &[], &[]);
    let echo = EchoServer::serve(m.server_listener());
    let cert = peer::issue(m.ca.path(), "client");
    // As a workload of a mesh whose CA is an intermediate under the root would present.
    let chained = peer::issue_via_intermediate(m.ca.path(), "client");
    let hbone: SocketAddr = format!("{net}.2:15008").parse().expect("address");
    let target = echo.addr.to_string();
    let source: SocketAddr = format!("{net}.1:40000").parse().expect("address");
    let data = pattern(6 << 20, 7);
    let sent = data.clone();

    let (tls, answers) = peer::run_in(&m.hosts.client, move || {
        async move {
            let mut client = peer::connect(hbone, &cert, &spiffe("server"))
                .await
                .expect("the peer's mTLS + HTTP/2 handshake with zpath");
            let mut answers = Vec::new();
            // Three flows on one connection, then refusals on the same connection. The
            // second sends all before it reads: zpath must hold the echo back at the
            // peer's 4 MiB window and go on taking data.
            for (payload, overlap) in [(&sent[..], true), (&sent[..], false), (&sent[..1], true)] {
                answers.push(
                    client
                        .exchange_with(peer::hbone_request(&target, source), payload, overlap)
                        .await,
                );
            }
            // A name instead of an address; node A's workload, not served by node B.
            for authority in ["example.com:80", &format!("{net}.1:80")] {
                answers.push(
                    client
                        .exchange(peer::hbone_request(authority, source), b"x")
                        .await,
                );
            }
            // Another connection, presenting leaf and intermediate.
            let mut second = peer::connect(hbone, &chained, &spiffe("server"))
                .await
                .expect("a chain through an intermediate CA is accepted");
            answers.push(
                second
                    .exchange(peer::hbone_request(&target, source), &sent[..1000])
                    .await,
            );
            (client.tls.clone(), answers)
        }
    });

    assert_eq!(tls.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(tls.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(tls.peer_sans, vec![spiffe("server")]);
    let statuses: Vec<u16> = answers
        .iter()
        .map(|a| a.as_ref().expect("exchange").0)
        .collect();
    assert_eq!(
        statuses,
        vec![200, 200, 200, 400, 400, 200],
        "{}",
        m.b.metrics_text()
    );
    for flow in &answers[..2] {
        let echoed = &flow.as_ref().expect("flow").1;
        assert!(
            echoed == &data,
            "6 MiB echoed back intact ({} bytes)",
            echoed.len()
        );
    }
    assert_eq!(answers[2].as_ref().expect("1-byte flow").1, data[..1]);
    assert_eq!(answers[5].as_ref().expect("chained flow").1, data[..1000]);

    assert_eq!(
        m.b.metric("zpath_hbone_connect_responses_total{side=\"server\",status=\"200\"}"),
        4
    );
    m.b.assert_no_open_connections();
    zpath_tests::wait_for(
        "the server connection gauge",
        Duration::from_secs(10),
        || m.b.metric("zpath_hbone_server_connections") == 0,
    );
}

#[test]
fn zpath_outbound_is_served_by_an_independent_hbone_server() {
    if skip_unless_root() {
        return;
    }
    let net = "10.82.2";
    let hosts = HostPair::new("ios", net);
    let ca = tempfile::tempdir().expect("ca dir");
    zpath_crypto::LocalCa::load_or_create(ca.path()).expect("mesh root");
    let root_file = |name| ca.path().join(name).display().to_string();
    let a = Node::start(NodeOptions {
        netns: Some(hosts.client.name.clone()),
        bind_ip: format!("{net}.1"),
        config: mesh::config(net, ""),
        node_name: "node-a".into(),
        hbone_port: Some(15008),
        args: vec![
            "--ca-cert".into(),
            root_file(zpath_crypto::ROOT_CERT_FILE),
            "--ca-key".into(),
            root_file(zpath_crypto::ROOT_KEY_FILE),
        ],
        ..NodeOptions::default()
    });
    let addr = format!("{net}.2:15008");
    let listener = hosts
        .server
        .enter(move || std::net::TcpListener::bind(addr).expect("bind the peer's 15008"));
    // Port 9 is refused as an unreachable upstream, port 10 as denied by policy. The
    // server's certificate comes from an intermediate CA under the mesh root.
    let server = peer::Server::serve_with(
        listener,
        peer::issue_via_intermediate(ca.path(), "server"),
        &[(9, 503), (10, 401)],
    );
    let proxy = a.socks5;
    for port in [9, 10] {
        let target: SocketAddr = format!("{net}.2:{port}").parse().expect("address");
        let refused = hosts.client.enter(move || {
            zpath_tests::socks5::connect(proxy, target).expect("reach node A's SOCKS5 listener")
        });
        assert!(refused.is_err(), "a refused CONNECT must not open the flow");
    }
    for status in [503, 401] {
        let name =
            format!("zpath_hbone_connect_responses_total{{side=\"client\",status=\"{status}\"}}");
        assert_eq!(a.metric(&name), 1, "{}", a.metrics_text());
    }

    // The client workload reaches the server workload's port 8080 through node A.
    let target: SocketAddr = format!("{net}.2:8080").parse().expect("address");
    let data = pattern(2 << 20, 3);
    let sent = data.clone();
    let (local, echoed) = hosts.client.enter(move || {
        let s = zpath_tests::socks5::connect(proxy, target)
            .expect("reach node A's SOCKS5 listener")
            .expect("node A accepts the flow");
        (
            s.local_addr().expect("local"),
            zpath_tests::roundtrip(s, &sent),
        )
    });
    assert!(
        echoed == data,
        "2 MiB echoed back intact ({} bytes)",
        echoed.len()
    );

    let got = server.wait_for(3, Duration::from_secs(10));
    let r = got
        .iter()
        .find(|r| r.authority == target.to_string())
        .expect("the relayed flow");
    assert_eq!(r.method, http::Method::CONNECT);
    assert_eq!(r.authority, target.to_string());
    assert_eq!(r.bytes, data.len());
    assert_eq!(r.tls.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(r.tls.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(r.tls.peer_sans, vec![spiffe("client")]);
    // The peer offers P-256 and P-384 only: zpath's client settles on one of them.
    assert_eq!(r.tls.kx_group, Some(rustls::NamedGroup::secp256r1));
    let header = |name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{name} header missing: {:?}", r.headers))
            .to_string()
    };
    assert_eq!(header("forwarded"), format!("for=\"{local}\""));
    // Read as ztunnel reads it: comma-separated key=value pairs.
    let baggage = header("baggage");
    let pairs: Vec<(&str, &str)> = baggage
        .split(',')
        .map(|kv| kv.split_once('=').unwrap_or_else(|| panic!("{baggage}")))
        .collect();
    assert!(
        pairs.iter().all(|(k, v)| !k.is_empty() && !v.is_empty()),
        "{baggage}"
    );
    assert!(
        pairs.contains(&("k8s.namespace.name", "default")),
        "{baggage}"
    );
    assert!(
        pairs.contains(&("k8s.cluster.name", "Kubernetes")),
        "{baggage}"
    );
    let traceparent = header("traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        vec![2, 32, 16, 2],
        "{traceparent}"
    );
    a.assert_no_open_connections();
}
