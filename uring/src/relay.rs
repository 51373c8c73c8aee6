//! Passthrough relaying between two connections: each received buffer is sent on as
//! it is (no copy), one send in flight per direction, end of stream half-closes the
//! other side.

use std::io;
use std::net::Shutdown;

use crate::buf::BufRef;
use crate::net::TcpStream;
use crate::runtime::{spawn, MAX_IOV};

/// Relays `from` to `to` until `from` ends, then shuts `to` down for writing. Returns
/// the bytes relayed. Buffers that arrived while a send was in flight go out together in
/// one vectored send (up to [`MAX_IOV`]), so a bulk flow costs one send per batch, not per
/// buffer.
pub async fn copy(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let mut rx = from.recv_stream()?;
    let mut total = 0u64;
    let mut batch: Vec<BufRef> = Vec::with_capacity(MAX_IOV);
    let mut ended = false;
    loop {
        match rx.recv().await {
            Ok(Some(buf)) => batch.push(buf),
            Ok(None) => ended = true,
            Err(e) => {
                let _ = to.shutdown(Shutdown::Write).await;
                return Err(e);
            }
        }
        while !ended && batch.len() < MAX_IOV {
            match rx.try_recv() {
                Some(Ok(Some(buf))) => batch.push(buf),
                Some(Ok(None)) => ended = true,
                Some(Err(_)) | None => break,
            }
        }
        let len: u64 = batch.iter().map(|b| b.len() as u64).sum();
        let res = match batch.len() {
            0 => Ok(()),
            1 => match batch.pop() {
                Some(buf) => to.send_all(buf).await.0,
                None => Ok(()),
            },
            _ => {
                let (res, mut back) = to.send_all_vectored(std::mem::take(&mut batch)).await;
                back.clear();
                batch = back;
                res
            }
        };
        res?;
        total += len;
        if ended {
            to.shutdown(Shutdown::Write).await?;
            return Ok(total);
        }
    }
}

/// Relays both ways until both directions have ended. Returns the bytes relayed from
/// `a` to `b` and from `b` to `a`. On an error the other direction is stopped and both
/// sockets are set to reset on close, so neither peer mistakes a broken relay for a
/// clean end.
pub async fn copy_bidirectional(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    let (a2, b2) = (a.clone(), b.clone());
    let forward = spawn(async move { copy(&a2, &b2).await })?;
    let backward = copy(b, a).await;
    let forward = match backward {
        Ok(_) => forward.await,
        Err(_) => {
            forward.abort();
            None
        }
    };
    match (forward, backward) {
        (Some(Ok(up)), Ok(down)) => Ok((up, down)),
        (forward, backward) => {
            let _ = a.set_reset_on_close();
            let _ = b.set_reset_on_close();
            Err(match (forward, backward) {
                (_, Err(e)) | (Some(Err(e)), _) => e,
                _ => io::Error::other("relay task stopped"),
            })
        }
    }
}
