//! Timers as timeout SQEs: one is armed only while a task waits on it, never per loop
//! iteration.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use io_uring::{opcode, types};

use crate::op::Op;
use crate::runtime::Entries;

/// Waits for `duration` (an `IORING_OP_TIMEOUT`).
pub async fn sleep(duration: Duration) -> io::Result<()> {
    let op = Op::submit((), |_, store| {
        store.ts = types::Timespec::from(duration);
        Entries::One(opcode::Timeout::new(&store.ts).build())
    })
    .map_err(|(e, ())| e)?;
    match op.await.0 {
        res if res == -libc::ETIME || res >= 0 => Ok(()),
        res => Err(io::Error::from_raw_os_error(-res)),
    }
}

/// `future` did not finish within its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// Runs `future` with a deadline; the timer is cancelled when the future wins.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = pin!(future);
    let mut timer = pin!(sleep(duration));
    poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(_) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}
