//! h2 runs over the ring through tokio's I/O traits, with no tokio runtime: a client and a
//! server on one ring exchange a request and a response with bodies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use bytes::Bytes;
use zpath_uring::compat::IoStream;
use zpath_uring::{spawn, Config, Runtime, TcpListener, TcpStream};

#[test]
fn h2_request_and_response_over_the_tokio_adapter() {
    let rt = Runtime::new(Config::default()).unwrap();
    let body = rt
        .block_on(async {
            let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), false).unwrap();
            let addr = listener.local_addr();
            let server = spawn(async move {
                let conn = listener.incoming().next().await.unwrap();
                let io = IoStream::new(conn).unwrap();
                let mut h2 = h2::server::handshake(io).await.unwrap();
                let (request, mut respond) = h2.accept().await.unwrap().unwrap();
                // The handler runs beside the connection, which must keep being polled
                // (accept) for window updates to go out.
                let handler = spawn(async move {
                    let mut body = request.into_body();
                    let mut received = Vec::new();
                    while let Some(chunk) = body.data().await {
                        let chunk = chunk.unwrap();
                        body.flow_control().release_capacity(chunk.len()).unwrap();
                        received.extend_from_slice(&chunk);
                    }
                    let response = http::Response::builder().status(200).body(()).unwrap();
                    let mut send = respond.send_response(response, false).unwrap();
                    received.reverse();
                    send.send_data(Bytes::from(received), true).unwrap();
                })
                .unwrap();
                while let Some(next) = h2.accept().await {
                    if next.is_err() {
                        break;
                    }
                }
                handler.await;
            })
            .unwrap();

            let conn = TcpStream::connect(addr, &Default::default()).await.unwrap();
            let io = IoStream::new(conn).unwrap();
            let (client, connection) = h2::client::handshake(io).await.unwrap();
            let driver = spawn(async move {
                let _ = connection.await;
            })
            .unwrap();
            let mut client = client.ready().await.unwrap();
            let request = http::Request::builder()
                .method("POST")
                .uri("http://example.test/echo")
                .body(())
                .unwrap();
            let (response, mut send) = client.send_request(request, false).unwrap();
            let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
            send.send_data(Bytes::from(payload), true).unwrap();
            let response = response.await.unwrap();
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            let mut got = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                body.flow_control().release_capacity(chunk.len()).unwrap();
                got.extend_from_slice(&chunk);
            }
            drop(client);
            driver.abort();
            server.abort();
            got
        })
        .unwrap();
    let mut expected: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    expected.reverse();
    assert_eq!(body, expected);
    assert_eq!(rt.stats().buffers_out, 0);
}

#[test]
fn adapter_reads_and_writes_partial_chunks_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = Runtime::new(Config {
        buf_size: 1024,
        small_entries: 0,
        ..Config::default()
    })
    .unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), false).unwrap();
        let addr = listener.local_addr();
        let echo = spawn(async move {
            let conn = listener.incoming().next().await.unwrap();
            let mut io = IoStream::new(conn).unwrap();
            let mut buf = [0u8; 333];
            loop {
                let n = io.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                io.write_all(&buf[..n]).await.unwrap();
            }
            io.shutdown().await.unwrap();
        })
        .unwrap();
        let conn = TcpStream::connect(addr, &Default::default()).await.unwrap();
        let io = IoStream::new(conn).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let (mut rd, mut wr) = tokio::io::split(io);
        let writer = spawn({
            let data = data.clone();
            async move {
                wr.write_all(&data).await.unwrap();
                wr.shutdown().await.unwrap();
            }
        })
        .unwrap();
        let mut back = Vec::new();
        rd.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        echo.await.unwrap();
        assert_eq!(back, data);
    })
    .unwrap();
}
