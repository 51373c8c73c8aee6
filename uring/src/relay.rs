//! Passthrough relaying between two connections: each received buffer is sent on as
//! it is (no copy), one send in flight per direction, end of stream half-closes the
//! other side.

use std::io;
use std::net::Shutdown;

use crate::buf::BufRef;
use crate::net::{RecvStream, TcpStream};
use crate::runtime::{spawn, MAX_IOV};

/// Where one direction of a relay failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Receiving from the source failed (usually: that peer reset the connection).
    #[error("receive failed: {0}")]
    Recv(#[source] io::Error),
    /// Sending to the destination failed, or its half-close did.
    #[error("send failed: {0}")]
    Send(#[source] io::Error),
}

impl CopyError {
    /// The socket error underneath.
    pub fn into_io(self) -> io::Error {
        match self {
            CopyError::Recv(e) | CopyError::Send(e) => e,
        }
    }

    /// The socket error underneath, by reference.
    pub fn io(&self) -> &io::Error {
        match self {
            CopyError::Recv(e) | CopyError::Send(e) => e,
        }
    }
}

/// Relays `from` to `to` until `from` ends, then shuts `to` down for writing. Returns
/// the bytes relayed. Buffers that arrived while a send was in flight go out together in
/// one vectored send (up to [`MAX_IOV`]), so a bulk flow costs one send per batch, not per
/// buffer.
pub async fn copy(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let mut rx = from.recv_stream()?;
    copy_counted(&mut rx, Vec::new(), to, |_| {})
        .await
        .map_err(CopyError::into_io)
}

/// As [`copy`], from a receiver already in use: `unread` (bytes received before, not
/// yet sent on) goes first. Tells `sent` how many bytes each send delivered, and which
/// side failed. A half-close toward a peer that is already fully gone (`ENOTCONN`) is
/// not an error.
pub async fn copy_counted(
    rx: &mut RecvStream,
    unread: Vec<u8>,
    to: &TcpStream,
    mut sent: impl FnMut(usize),
) -> Result<u64, CopyError> {
    let mut total = 0u64;
    if !unread.is_empty() {
        let len = unread.len();
        to.send_all(unread).await.0.map_err(CopyError::Send)?;
        total += len as u64;
        sent(len);
    }
    let mut batch: Vec<BufRef> = Vec::with_capacity(MAX_IOV);
    let mut ended = false;
    loop {
        match rx.recv().await {
            Ok(Some(buf)) => batch.push(buf),
            Ok(None) => ended = true,
            // No half-close here: the caller decides how the other side learns of it
            // (a relay resets both).
            Err(e) => return Err(CopyError::Recv(e)),
        }
        while !ended && batch.len() < MAX_IOV {
            match rx.try_recv() {
                Some(Ok(Some(buf))) => batch.push(buf),
                Some(Ok(None)) => ended = true,
                Some(Err(_)) | None => break,
            }
        }
        let len: usize = batch.iter().map(|b| b.len()).sum();
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
        res.map_err(CopyError::Send)?;
        total += len as u64;
        if len > 0 {
            sent(len);
        }
        if ended {
            return match to.shutdown(Shutdown::Write).await {
                Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => Err(CopyError::Send(e)),
                _ => Ok(total),
            };
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
