//! Plain TCP servers used as upstream applications.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// An echo server: each connection gets back everything it sent; after the client's
/// FIN the server finishes echoing and sends its own FIN (half-close aware).
pub struct EchoServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    /// Starts an echo server on `bind` (use port 0 for any).
    pub fn start(bind: &str) -> EchoServer {
        let listener = TcpListener::bind(bind).expect("bind echo server");
        Self::serve(listener)
    }

    /// Serves on an already bound listener (e.g. one created inside a network namespace).
    pub fn serve(listener: TcpListener) -> EchoServer {
        let addr = listener.local_addr().expect("echo address");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                thread::spawn(move || echo(conn));
            }
        });
        EchoServer { addr, stop }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn echo(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => {
                let _ = conn.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// A server that runs `handler` on each accepted connection in its own thread.
pub fn serve_with<F>(listener: TcpListener, handler: F) -> SocketAddr
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let addr = listener.local_addr().expect("server address");
    let handler = Arc::new(handler);
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let h = handler.clone();
            thread::spawn(move || h(conn));
        }
    });
    addr
}

/// A server that accepts connections and holds them open, reading nothing: an idle
/// upstream for many connections at once (one thread, whatever their number).
pub struct HoldServer {
    /// Where it listens.
    pub addr: SocketAddr,
    held: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl HoldServer {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub fn start() -> HoldServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind hold server");
        let addr = listener.local_addr().expect("hold server address");
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let h = held.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                h.lock().expect("held connections").push(conn);
            }
        });
        HoldServer { addr, held }
    }

    /// Connections accepted so far (open or closed by their client).
    pub fn accepted(&self) -> usize {
        self.held.lock().expect("held connections").len()
    }

    /// The held connections' peer addresses.
    pub fn peers(&self) -> Vec<SocketAddr> {
        let held = self.held.lock().expect("held connections");
        held.iter().filter_map(|c| c.peer_addr().ok()).collect()
    }
}
