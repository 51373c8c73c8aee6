//! The async stream: real loopback sockets, in-memory pipes, rotation,
//! half-close, and a handshake future that stalls and is dropped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use futures_lite::future::block_on;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use zpath_crypto::{CertifiedTls, Identity, LocalCa, SessionBuffers, SessionError, TlsStream};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Two "processes" (threads that share nothing but PEM text) given the same
/// root by flag: mTLS over real loopback TCP, bulk both ways, clean close.
#[test]
fn mtls_over_loopback_between_nodes_sharing_a_pem_root() {
    // The shared root, as an operator would hand it to both nodes.
    let key_dir = tempfile::tempdir().unwrap();
    let persisted = LocalCa::load_or_create(key_dir.path()).unwrap();
    let cert_pem = persisted.root_pem();
    let key_pem =
        std::fs::read_to_string(key_dir.path().join(zpath_crypto::ROOT_KEY_FILE)).unwrap();
    drop(persisted);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let upload = pattern(3 * 1024 * 1024 + 17, 1);
    let download = pattern(2 * 1024 * 1024 + 5, 2);

    let (server_cert_pem, server_key_pem) = (cert_pem.clone(), key_pem.clone());
    let expected_upload = upload.clone();
    let reply = download.clone();
    let server = std::thread::spawn(move || {
        let ca = LocalCa::from_pem(&server_cert_pem, &server_key_pem).unwrap();
        let tls = certified(ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap());
        let (socket, _) = listener.accept().unwrap();
        block_on(async {
            let mut stream = TlsStream::accept(
                Blocking(socket),
                &tls.server_config(),
                SessionBuffers::new(256 * 1024),
            )
            .await
            .unwrap();
            assert_eq!(stream.peer().unwrap().identity(), &id(CLIENT_ID));
            assert_eq!(stream.session().alpn(), Some(&b"h2"[..]));
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.unwrap();
            assert!(got == expected_upload, "upload corrupted");
            // The client closed its side; we can still answer (half-close).
            stream.write_all(&reply).await.unwrap();
            stream.close().await.unwrap();
        });
    });

    let ca = LocalCa::from_pem(&cert_pem, &key_pem).unwrap();
    let tls = certified(ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap());
    let socket = TcpStream::connect(addr).unwrap();
    block_on(async {
        let config = tls.client_config(&[id(SERVER_ID)]).unwrap();
        let mut stream =
            TlsStream::connect(Blocking(socket), &config, SessionBuffers::new(256 * 1024))
                .await
                .unwrap();
        assert_eq!(stream.peer().unwrap().identity(), &id(SERVER_ID));
        stream.write_all(&upload).await.unwrap();
        stream.close().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert!(got == download, "download corrupted");
        assert!(stream.session().peer_closed());
    });
    server.join().unwrap();
}

/// Connects a client and a server stream over an in-memory pipe.
fn pair(
    client_tls: &CertifiedTls,
    server_tls: &CertifiedTls,
    expected: &[Identity],
) -> (TlsStream<DuplexEnd>, TlsStream<DuplexEnd>) {
    let (a, b) = duplex();
    let client_config = client_tls.client_config(expected).unwrap();
    let server_config = server_tls.server_config();
    block_on(async {
        let (c, s) = futures_lite::future::zip(
            TlsStream::connect(a, &client_config, buffers()),
            TlsStream::accept(b, &server_config, buffers()),
        )
        .await;
        (c.unwrap(), s.unwrap())
    })
}

async fn echo_once(
    client: &mut TlsStream<DuplexEnd>,
    server: &mut TlsStream<DuplexEnd>,
    data: &[u8],
) {
    client.write_all(data).await.unwrap();
    client.flush().await.unwrap();
    let mut got = vec![0u8; data.len()];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(got, data);
    server.write_all(&got).await.unwrap();
    server.flush().await.unwrap();
    let mut back = vec![0u8; data.len()];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(back, data);
}

#[test]
fn rotation_keeps_open_connections_and_new_ones_use_the_new_certificate() {
    let ca = LocalCa::generate().unwrap();
    let client_tls = certified(ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap());
    let old = certified(ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap());
    let old_leaf = old.certificate().chain()[0].clone();

    let (mut c1, mut s1) = pair(&client_tls, &old, &[id(SERVER_ID)]);
    block_on(echo_once(&mut c1, &mut s1, b"before rotation"));

    // Rotate: a new certificate, the old configuration is dropped by its owner.
    let new = certified(ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap());
    let new_leaf = new.certificate().chain()[0].clone();
    assert_ne!(old_leaf, new_leaf);
    drop(old);

    let (mut c2, mut s2) = pair(&client_tls, &new, &[id(SERVER_ID)]);
    assert_eq!(c2.session().peer_chain().unwrap()[0], new_leaf);
    assert_eq!(c1.session().peer_chain().unwrap()[0], old_leaf);

    // The connection made with the old certificate keeps working.
    block_on(echo_once(&mut c1, &mut s1, &pattern(200_000, 7)));
    block_on(echo_once(&mut c2, &mut s2, b"after rotation"));
}

#[test]
fn half_close_each_direction_then_clean_eof() {
    let ca = LocalCa::generate().unwrap();
    let c_tls = certified(ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap());
    let s_tls = certified(ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap());
    let (mut c, mut s) = pair(&c_tls, &s_tls, &[id(SERVER_ID)]);
    block_on(async {
        c.write_all(b"request").await.unwrap();
        c.close().await.unwrap();
        // Writing after close is refused.
        assert!(c.write_all(b"more").await.is_err());
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        s.write_all(b"response").await.unwrap();
        s.close().await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"response");
    });
}

#[test]
fn eof_without_close_notify_is_an_error() {
    let ca = LocalCa::generate().unwrap();
    let c_tls = certified(ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap());
    let s_tls = certified(ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap());
    let (c, mut s) = pair(&c_tls, &s_tls, &[id(SERVER_ID)]);
    drop(c); // transport closes, no close_notify
    block_on(async {
        let mut got = Vec::new();
        let err = s.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        let inner = err
            .get_ref()
            .unwrap()
            .downcast_ref::<SessionError>()
            .unwrap();
        assert_eq!(inner, &SessionError::UncleanClose);
    });
}

#[test]
fn buffered_read_lends_plaintext_without_copy() {
    use futures_lite::AsyncBufReadExt;
    let ca = LocalCa::generate().unwrap();
    let c_tls = certified(ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap());
    let s_tls = certified(ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap());
    let (mut c, mut s) = pair(&c_tls, &s_tls, &[id(SERVER_ID)]);
    block_on(async {
        c.write_all(b"line one\nline two\n").await.unwrap();
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        assert_eq!(line, "line one\n");
        line.clear();
        s.read_line(&mut line).await.unwrap();
        assert_eq!(line, "line two\n");
    });
}

/// A transport that accepts writes and never delivers a byte.
struct Silent;

impl futures_io::AsyncRead for Silent {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Pending
    }
}

impl futures_io::AsyncWrite for Silent {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A peer that answers, closes and resets the connection while we are still
/// writing (a server refusing a flood, say): our write fails, and what the peer
/// sent before it left is still read, then its clean close.
#[test]
fn what_the_peer_sent_before_resetting_is_read_after_our_write_failed() {
    let ca = LocalCa::generate().unwrap();
    let c_tls = certified(ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap());
    let s_tls = certified(ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        let probe = socket.try_clone().unwrap();
        block_on(async {
            let mut stream = TlsStream::accept(
                Blocking(socket),
                &s_tls.server_config(),
                SessionBuffers::new(64 * 1024),
            )
            .await
            .unwrap();
            stream.write_all(b"goodbye").await.unwrap();
            stream.close().await.unwrap();
            // Closed with the client's bytes unread: the kernel answers with RST.
            assert!(probe.peek(&mut [0u8; 1]).unwrap() > 0);
            drop(stream);
            drop(probe);
        });
    });
    let socket = TcpStream::connect(addr).unwrap();
    block_on(async {
        let config = c_tls.client_config(&[id(SERVER_ID)]).unwrap();
        let mut stream =
            TlsStream::connect(Blocking(socket), &config, SessionBuffers::new(64 * 1024))
                .await
                .unwrap();
        let flood = vec![7u8; 64 << 20];
        let err = stream.write_all(&flood).await.unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{err}"
        );
        // The failure is kept for later writes.
        assert_eq!(
            stream.write_all(b"more").await.unwrap_err().kind(),
            err.kind()
        );
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"goodbye");
        assert!(stream.session().peer_closed());
        // Closing reports it too, without sealing a close_notify that cannot leave.
        assert_eq!(stream.close().await.unwrap_err().kind(), err.kind());
    });
    server.join().unwrap();
}

/// The caller's timer bounds a stalled handshake: the future just stays
/// pending and can be dropped at any time.
#[test]
fn stalled_handshake_stays_pending_and_drops_cleanly() {
    let ca = LocalCa::generate().unwrap();
    let c_tls = certified(ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap());
    let s_tls = certified(ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap());
    let waker = futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
        Poll::Ready(cx.waker().clone())
    }));
    let mut cx = Context::from_waker(&waker);

    let client_config = c_tls.client_config(&[id(SERVER_ID)]).unwrap();
    {
        let mut connect = pin!(TlsStream::connect(Silent, &client_config, buffers()));
        for _ in 0..3 {
            assert!(connect.as_mut().poll(&mut cx).is_pending());
        }
    } // dropped while pending

    let server_config = s_tls.server_config();
    let mut accept = Box::pin(TlsStream::accept(Silent, &server_config, buffers()));
    assert!(accept.as_mut().poll(&mut cx).is_pending());
    drop(accept);
}

#[test]
fn garbage_before_client_hello_fails_the_accept() {
    let ca = LocalCa::generate().unwrap();
    let s_tls = certified(ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap());
    let (a, b) = duplex();
    block_on(async {
        let mut a = a;
        a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let err = TlsStream::accept(b, &s_tls.server_config(), buffers())
            .await
            .unwrap_err();
        assert_eq!(err.label(), "protocol_error", "{err}");
        // The server answered with an alert before giving up.
        let mut alert = Vec::new();
        a.close().await.unwrap();
        a.read_to_end(&mut alert).await.unwrap();
        assert_eq!(alert.first(), Some(&0x15), "expected a TLS alert record");
    });
}

#[test]
fn eof_during_handshake_fails_the_accept() {
    let ca = LocalCa::generate().unwrap();
    let s_tls = certified(ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap());
    let (a, b) = duplex();
    drop(a);
    let err = block_on(TlsStream::accept(b, &s_tls.server_config(), buffers())).unwrap_err();
    assert_eq!(err, SessionError::HandshakeEof);

    // Half a record, then EOF.
    let (a, b) = duplex();
    a.inject(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01, 0x00]);
    drop(a);
    let err = block_on(TlsStream::accept(b, &s_tls.server_config(), buffers())).unwrap_err();
    assert_eq!(err, SessionError::Truncated);
}

#[test]
fn rejected_peer_surfaces_the_reason_through_the_stream() {
    let ca = LocalCa::generate().unwrap();
    let c_tls = certified(ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap());
    let s_tls = certified(ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap());
    let (a, b) = duplex();
    let client_config = c_tls
        .client_config(&[id("spiffe://cluster.local/ns/default/sa/someone-else")])
        .unwrap();
    let server_config = s_tls.server_config();
    let (c, s) = block_on(futures_lite::future::zip(
        TlsStream::connect(a, &client_config, buffers()),
        TlsStream::accept(b, &server_config, buffers()),
    ));
    assert_eq!(c.unwrap_err().label(), "identity_not_expected");
    assert!(s.is_err());
}
