//! The future of one single-completion op. It owns the memory the kernel reads or writes
//! (`data`) until the completion arrives; dropped earlier, it hands that memory to its
//! slot and cancels the op, and the slot frees it only when the final completion has been
//! reaped. This is what keeps a cancelled send's buffer alive while the kernel may still
//! read it.

use std::any::Any;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::runtime::{with_core, Entries, OpKind, Store};

/// A submitted op with its owned resources `T`.
pub(crate) struct Op<T: 'static> {
    id: Option<u32>,
    data: Option<T>,
}

impl<T: 'static> Op<T> {
    /// Queues the op: `build` gets the owned resources and the slot's stable store. On
    /// failure nothing reached the kernel and the resources come back.
    pub(crate) fn submit(
        data: T,
        build: impl FnOnce(&T, &mut Store) -> Entries,
    ) -> Result<Op<T>, (io::Error, T)> {
        let submitted = with_core(|core| core.submit(OpKind::Plain, |store| build(&data, store)));
        match submitted {
            Ok(Ok(id)) => Ok(Op {
                id: Some(id),
                data: Some(data),
            }),
            Ok(Err(e)) | Err(e) => Err((e, data)),
        }
    }
}

// The resources are never pinned: they move out whole when the op completes.
impl<T: 'static> Unpin for Op<T> {}

impl<T: 'static> Future for Op<T> {
    /// The kernel's result (a byte count, or a negated errno) and the resources back.
    type Output = (i32, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(i32, T)> {
        let Some(id) = self.id else {
            // Polled after completion: there is nothing more to give.
            return Poll::Pending;
        };
        let res = match with_core(|core| core.poll_cqe(id, cx)) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Some(c))) => c.res,
            Ok(Poll::Ready(None)) | Err(_) => -libc::ECANCELED,
        };
        self.id = None;
        let _ = with_core(|core| core.release(id, None));
        match self.data.take() {
            Some(data) => Poll::Ready((res, data)),
            None => Poll::Pending,
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let keep = self.data.take().map(|d| Box::new(d) as Box<dyn Any>);
        let mut keep = Some(keep);
        let _ = with_core(|core| core.release(id, keep.take().flatten()));
        if let Some(Some(orphan)) = keep {
            // No runtime any more: it drained its ring when it shut down, but if that
            // timed out the kernel may still touch this memory, so it is leaked.
            std::mem::forget(orphan);
        }
    }
}

/// Turns a kernel result into a byte count or an error.
pub(crate) fn check(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}
