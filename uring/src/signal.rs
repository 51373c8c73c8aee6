//! Wake-ups sent from other threads to one task of a runtime: the control path (a new
//! snapshot published, a drain ordered), never the data path. Raising takes a lock and
//! reaches the task through its runtime's eventfd (see `remote`).

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// A level a thread raises and one task waits for; raising it twice before the wait
/// returns wakes it once.
#[derive(Debug, Clone, Default)]
pub struct Signal(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    raised: AtomicBool,
    waiter: Mutex<Option<Waker>>,
}

impl Signal {
    /// A signal not raised.
    pub fn new() -> Signal {
        Signal::default()
    }

    /// Raises the signal and wakes the waiting task, from any thread.
    pub fn raise(&self) {
        self.0.raised.store(true, Ordering::Release);
        let waiter = self
            .0
            .waiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = waiter {
            w.wake();
        }
    }

    /// Returns once the signal was raised since the last wait returned, and lowers it.
    pub async fn wait(&self) {
        poll_fn(|cx| self.poll_wait(cx)).await
    }

    /// Polls [`Signal::wait`].
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.raised.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        *self.0.waiter.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        // Raised between the check and the registration: not lost.
        if self.0.raised.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Runs `f` on a thread of its own (blocking work such as a name lookup) and waits for
/// its result without blocking the runtime. Fails only if no thread can be started.
pub async fn unblock<T, F>(f: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let done = Signal::new();
    let slot: Arc<Mutex<Option<T>>> = Arc::default();
    let (thread_done, thread_slot) = (done.clone(), slot.clone());
    std::thread::Builder::new()
        .name("zpath-blocking".into())
        .spawn(move || {
            let value = f();
            *thread_slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
            thread_done.raise();
        })?;
    loop {
        done.wait().await;
        if let Some(v) = slot.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Ok(v);
        }
    }
}
