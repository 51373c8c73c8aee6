//! The generators against a local sink/echo server, directly and through the reference
//! SOCKS5 relay: byte, request, connection and histogram counts are exact.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::time::Duration;

use zpath_perf::generators::{
    open_idle, run_bulk, run_crr, run_rr, BulkParams, CrrParams, Dialer, IdleParams, RrParams,
};
use zpath_perf::relay::{Relay, RelayConfig};
use zpath_perf::server::Server;

fn server() -> std::net::SocketAddr {
    Server::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .spawn()
        .unwrap()
}

/// The same server reached directly and through a SOCKS5 relay.
fn dialers() -> Vec<(&'static str, Dialer)> {
    let app = server();
    let relay = Relay::bind(&RelayConfig {
        socks5: Some("127.0.0.1:0".parse().unwrap()),
        outbound: None,
        readiness: None,
        mark: 0,
    })
    .unwrap();
    let socks = relay.socks5_addr().unwrap();
    relay.spawn();
    vec![
        ("direct", Dialer::direct(app)),
        ("socks5", Dialer::socks5(app, socks)),
    ]
}

const LONG: Duration = Duration::from_secs(600);

#[test]
fn bulk_byte_counts_are_exact_and_confirmed_by_the_sink() {
    for (how, d) in dialers() {
        let per_flow = 3 * 1024 * 1024 + 12_345;
        let r = run_bulk(
            &d,
            &BulkParams {
                flows: 3,
                duration: LONG,
                max_bytes_per_flow: Some(per_flow),
                write_size: 64 * 1024,
            },
        )
        .unwrap();
        assert_eq!(r.errors, 0, "{how}: {:?}", r.first_error);
        assert_eq!(r.connections, 3, "{how}");
        assert_eq!(r.bytes_sent, 3 * per_flow, "{how}");
        assert_eq!(r.bytes_received, 3 * per_flow, "{how}");
        assert!(r.latency.is_none());
    }
}

#[test]
fn rr_counts_and_histogram_are_exact() {
    for (how, d) in dialers() {
        let r = run_rr(
            &d,
            &RrParams {
                connections: 4,
                request_size: 100,
                response_size: 3000,
                duration: LONG,
                rate: None,
                max_requests_per_conn: Some(250),
            },
        )
        .unwrap();
        assert_eq!(r.errors, 0, "{how}: {:?}", r.first_error);
        assert_eq!(r.requests, 1000, "{how}");
        assert_eq!(r.connections, 4, "{how}");
        assert_eq!(r.bytes_sent, 1000 * 100, "{how}");
        assert_eq!(r.bytes_received, 1000 * 3000, "{how}");
        let h = r.latency.unwrap();
        assert_eq!(h.len(), 1000, "{how}");
        assert!(h.min() > 0 && h.min() <= h.max());
    }
}

#[test]
fn rr_at_a_fixed_rate_records_every_request() {
    let (_, d) = dialers().remove(0);
    let r = run_rr(
        &d,
        &RrParams {
            connections: 2,
            request_size: 10,
            response_size: 10,
            duration: LONG,
            rate: Some(2000.0),
            max_requests_per_conn: Some(50),
        },
    )
    .unwrap();
    assert_eq!(r.errors, 0, "{:?}", r.first_error);
    assert_eq!(r.requests, 100);
    assert_eq!(r.latency.unwrap().len(), 100);
}

#[test]
fn rr_stops_at_the_deadline_with_consistent_counts() {
    let (_, d) = dialers().remove(0);
    let r = run_rr(
        &d,
        &RrParams {
            connections: 2,
            request_size: 1,
            response_size: 1,
            duration: Duration::from_millis(200),
            rate: None,
            max_requests_per_conn: None,
        },
    )
    .unwrap();
    assert_eq!(r.errors, 0, "{:?}", r.first_error);
    assert!(r.requests > 0);
    assert_eq!(r.latency.unwrap().len(), r.requests);
    assert_eq!(r.bytes_received, r.requests);
}

#[test]
fn crr_counts_and_histogram_are_exact() {
    for (how, d) in dialers() {
        let r = run_crr(
            &d,
            &CrrParams {
                concurrency: 3,
                request_size: 20,
                response_size: 500,
                duration: LONG,
                max_conns_per_client: Some(40),
            },
        )
        .unwrap();
        assert_eq!(r.errors, 0, "{how}: {:?}", r.first_error);
        assert_eq!(r.connections, 120, "{how}");
        assert_eq!(r.requests, 120, "{how}");
        assert_eq!(r.bytes_sent, 120 * 20, "{how}");
        assert_eq!(r.bytes_received, 120 * 500, "{how}");
        assert_eq!(r.latency.unwrap().len(), 120, "{how}");
    }
}

#[test]
fn idle_holds_every_connection_end_to_end() {
    for (how, d) in dialers() {
        let held = open_idle(
            &d,
            &IdleParams {
                connections: 150,
                openers: 4,
            },
        )
        .unwrap();
        assert_eq!(held.len(), 150, "{how}");
        assert_eq!(held.result.connections, 150, "{how}");
        assert_eq!(
            held.result.errors, 0,
            "{how}: {:?}",
            held.result.first_error
        );
    }
}

#[test]
fn unreachable_server_is_counted_as_errors_not_a_panic() {
    // Bind and drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = run_crr(
        &Dialer::direct(port),
        &CrrParams {
            max_conns_per_client: Some(3),
            duration: LONG,
            ..CrrParams::default()
        },
    )
    .unwrap();
    assert_eq!((r.connections, r.errors), (0, 3));
    assert!(r.first_error.unwrap().contains("connecting to"));
}
