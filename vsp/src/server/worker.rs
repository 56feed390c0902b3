//! Where handlers run: on the server's runtime (`Async`), or on a pool of their own
//! (`Multicore`) so CPU-heavy handlers cannot starve the connections or each other.
//!
//! Why a share per endpoint in `Multicore`: a pool of its own keeps the I/O responsive, but a
//! saturated CPU-heavy endpoint would still take every pool thread and queue the light endpoints
//! behind it. So one endpoint's handlers may be *executing* on at most `workers - 1` threads at
//! once; its other calls wait (without a thread) for a turn. The limit counts running polls, not
//! calls in flight, so an endpoint that mostly awaits I/O is not limited at all.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// How a [`VspManager`](crate::VspManager) runs its handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WorkerType {
    /// Handlers run as tasks on the runtime that called `start_server` (the default): the
    /// cheapest, for handlers that await rather than compute.
    #[default]
    Async,
    /// Handlers (async ones too) run on a dedicated pool of `workers` threads, so CPU-heavy
    /// handlers cannot starve the connections; and no endpoint executes on more than
    /// `workers - 1` of those threads at once, so they cannot starve the other endpoints either.
    Multicore {
        /// Threads in the pool (at least 1; 2 or more to protect light endpoints).
        workers: usize,
    },
}

/// The handler pool of a `Multicore` manager. Dropping it stops its threads without blocking, so
/// a manager may be dropped inside async code.
pub(crate) struct WorkerPool {
    runtime: Option<tokio::runtime::Runtime>,
}

impl WorkerPool {
    pub(crate) fn new(workers: usize) -> std::io::Result<Self> {
        let workers = workers.max(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("vsp-worker")
            .enable_all()
            .build()?;
        Ok(WorkerPool {
            runtime: Some(runtime),
        })
    }

    pub(crate) fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        if let Some(runtime) = &self.runtime {
            runtime.spawn(task);
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Caps how many of one endpoint's handlers are being polled at the same moment.
#[derive(Debug)]
pub(crate) struct PollLimiter {
    running: AtomicUsize,
    max: usize,
    has_waiters: AtomicBool,
    waiters: Mutex<Vec<Waker>>,
}

impl PollLimiter {
    pub(crate) fn new(max: usize) -> Self {
        PollLimiter {
            running: AtomicUsize::new(0),
            max: max.max(1),
            has_waiters: AtomicBool::new(false),
            waiters: Mutex::new(Vec::new()),
        }
    }

    fn try_enter(&self) -> bool {
        let mut current = self.running.load(Ordering::Acquire);
        while current < self.max {
            match self.running.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
        false
    }

    fn leave(&self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
        if self.has_waiters.load(Ordering::Acquire) {
            let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(waker) = waiters.pop() {
                waker.wake();
            }
            self.has_waiters
                .store(!waiters.is_empty(), Ordering::Release);
        }
    }

    fn wait(&self, waker: &Waker) {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
        self.has_waiters.store(true, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    /// A handler future that polls only when its endpoint's share allows.
    pub(crate) struct Limited<F> {
        #[pin]
        inner: F,
        limiter: Option<Arc<PollLimiter>>,
    }
}

impl<F> Limited<F> {
    pub(crate) fn new(inner: F, limiter: Option<Arc<PollLimiter>>) -> Self {
        Limited { inner, limiter }
    }
}

impl<F: Future> Future for Limited<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(limiter) = this.limiter else {
            return this.inner.poll(cx);
        };
        if !limiter.try_enter() {
            limiter.wait(cx.waker());
            // A slot may have freed between the check and the registration.
            if !limiter.try_enter() {
                return Poll::Pending;
            }
        }
        // Released even if the handler panics (the panic is caught further out).
        struct Leave<'a>(&'a PollLimiter);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.leave();
            }
        }
        let _leave = Leave(limiter);
        this.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_admits_up_to_its_share() {
        let limiter = PollLimiter::new(2);
        assert!(limiter.try_enter());
        assert!(limiter.try_enter());
        assert!(!limiter.try_enter());
        limiter.leave();
        assert!(limiter.try_enter());
    }
}
