//! A passthrough TCP relay on the zpath-uring loop, for measuring the loop against the
//! engine: accepts on `--listen`, connects to `--upstream` (or, without it, to each
//! connection's original destination, as zpath's 15001 does behind an iptables REDIRECT)
//! and relays bytes both ways, each received buffer sent on as it is (no copy).
//!
//! ```text
//! relay --listen 0.0.0.0:15001 [--upstream ADDR] [--mark 1337] [--readiness 127.0.0.1:15021]
//! ```

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use zpath_uring::{relay, spawn, time, Config, ConnectOptions, Runtime, TcpListener, TcpStream};

struct Args {
    listen: SocketAddr,
    upstream: Option<SocketAddr>,
    mark: u32,
    readiness: Option<SocketAddr>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([0, 0, 0, 0], 15001)),
        upstream: None,
        mark: 0,
        readiness: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--listen" => args.listen = value.parse().map_err(|e| bad(&e))?,
            "--upstream" => args.upstream = Some(value.parse().map_err(|e| bad(&e))?),
            "--mark" => args.mark = value.parse().map_err(|e| bad(&e))?,
            "--readiness" => args.readiness = Some(value.parse().map_err(|e| bad(&e))?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("relay: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match std::net::TcpListener::bind(args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("relay: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = args.readiness {
        if let Err(e) = serve_readiness(addr) {
            eprintln!("relay: cannot serve readiness on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match Runtime::new(Config::default()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(accept_loop(listener, args.upstream, args.mark)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) | Err(e) => {
            eprintln!("relay: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    upstream: Option<SocketAddr>,
    mark: u32,
) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let local = listener.local_addr();
    let mut incoming = listener.incoming();
    let mut log = RateLimited::default();
    loop {
        match incoming.next().await {
            Ok(conn) => {
                spawn(relay(conn, upstream, local, mark))?;
            }
            Err(e) => {
                log.warn(format_args!("accept failed: {e}"));
                // EMFILE and the like: give closing connections a moment.
                time::sleep(Duration::from_millis(10)).await?;
            }
        }
    }
}

async fn relay(client: TcpStream, upstream: Option<SocketAddr>, local: SocketAddr, mark: u32) {
    let _ = client.set_nodelay(true);
    let target = match upstream {
        Some(addr) => addr,
        None => match client.original_dst() {
            Ok(addr) if addr.port() == local.port() && upstream.is_none() && is_own(addr) => {
                // Connected to the listener itself, not captured: refuse, or we would loop.
                return;
            }
            Ok(addr) => addr,
            Err(_) => return,
        },
    };
    let options = ConnectOptions {
        mark,
        timeout: Some(Duration::from_secs(10)),
    };
    let server = match TcpStream::connect(target, &options).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("relay: {e}");
            let _ = client.set_reset_on_close();
            return;
        }
    };
    // Errors end the connection (both sides reset); nothing to report per connection.
    let _ = relay::copy_bidirectional(&client, &server).await;
}

fn is_own(addr: SocketAddr) -> bool {
    addr.ip().is_loopback() || addr.ip().is_unspecified()
}

fn serve_readiness(addr: SocketAddr) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    std::thread::Builder::new()
        .name("readiness".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut conn = conn;
                let mut request = [0u8; 1024];
                let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = conn.read(&mut request);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        })?;
    Ok(())
}

#[derive(Default)]
struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn warn(&mut self, message: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now - t < Duration::from_secs(1)) {
            self.suppressed += 1;
            return;
        }
        eprintln!("relay: {message} ({} similar suppressed)", self.suppressed);
        self.last = Some(now);
        self.suppressed = 0;
    }
}
