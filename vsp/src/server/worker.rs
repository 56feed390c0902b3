//! Where handlers run: on the server's runtime (`Async`), or on a pool of their own
//! (`Multicore`) so CPU-heavy handlers cannot starve the connections or each other.
//!
//! Why a share per endpoint in `Multicore`: a pool of its own keeps the I/O responsive, but a
//! saturated CPU-heavy endpoint would still take every pool thread and queue the light endpoints
//! behind it. So one endpoint's handlers may be *executing* on at most `workers - 1` threads at
//! once; its other calls wait (without a thread) for a turn. The limit counts running polls, not
//! calls in flight, so an endpoint that mostly awaits I/O is not limited at all.

use std::future::Future;

pub(crate) use super::limiter::{Limited, PollLimiter};

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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

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

    /// Counts its wake-ups.
    struct Counting(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Counting>, Waker) {
        let counting = Arc::new(Counting(AtomicUsize::new(0)));
        (counting.clone(), Waker::from(counting))
    }

    #[test]
    fn waiters_enter_oldest_first_and_one_dropped_leaves_the_queue() {
        let limiter = Arc::new(PollLimiter::new(1));
        assert!(limiter.try_enter()); // the slot is taken
        let mut calls: Vec<_> = (0..3)
            .map(|i| Box::pin(Limited::new(std::future::ready(i), Some(limiter.clone()))))
            .collect();
        let wakers: Vec<_> = (0..3).map(|_| waker()).collect();
        for (call, (_, waker)) in calls.iter_mut().zip(&wakers) {
            let mut cx = Context::from_waker(waker);
            assert!(call.as_mut().poll(&mut cx).is_pending());
        }
        limiter.leave();
        // Only the oldest is woken, and the newest, polled first, does not jump the queue.
        assert_eq!(wakers[0].0 .0.load(Ordering::SeqCst), 1);
        assert_eq!(wakers[2].0 .0.load(Ordering::SeqCst), 0);
        let mut cx = Context::from_waker(&wakers[2].1);
        assert!(calls[2].as_mut().poll(&mut cx).is_pending());
        // The oldest gives up (stopped at its deadline): the slot goes to the next in line.
        drop(calls.remove(0));
        assert_eq!(
            wakers[1].0 .0.load(Ordering::SeqCst),
            1,
            "the freed turn was wasted"
        );
        let mut cx = Context::from_waker(&wakers[1].1);
        assert_eq!(calls[0].as_mut().poll(&mut cx), Poll::Ready(1));
        let mut cx = Context::from_waker(&wakers[2].1);
        assert_eq!(calls[1].as_mut().poll(&mut cx), Poll::Ready(2));
        assert!(limiter.waiters().queue.is_empty());
    }
}
