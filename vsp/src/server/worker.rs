//! Where handlers run: on the server's runtime (`Async`), or on a pool of their own
//! (`Multicore`) so CPU-heavy handlers cannot starve the connections or each other.
//!
//! Why a share per endpoint in `Multicore`: a pool of its own keeps the I/O responsive, but a
//! saturated CPU-heavy endpoint would still take every pool thread and queue the light endpoints
//! behind it. So one endpoint's handlers may be *executing* on at most `workers - 1` threads at
//! once; its other calls wait (without a thread) for a turn. The limit counts running polls, not
//! calls in flight, so an endpoint that mostly awaits I/O is not limited at all.

use std::collections::VecDeque;
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
///
/// Waiters get their turn first come, first served (a queue, not a stack: under load the oldest
/// call must not starve to its deadline), and a waiter dropped before its turn (a handler stopped
/// at its deadline) leaves the queue at once, so the slot it would have had goes to the next.
#[derive(Debug)]
pub(crate) struct PollLimiter {
    running: AtomicUsize,
    max: usize,
    /// Mirrors `!waiters.queue.is_empty()`, so the common case takes no lock.
    has_waiters: AtomicBool,
    waiters: Mutex<Waiters>,
}

#[derive(Debug, Default)]
struct Waiters {
    queue: VecDeque<(u64, Waker)>,
    next_ticket: u64,
}

impl PollLimiter {
    pub(crate) fn new(max: usize) -> Self {
        PollLimiter {
            running: AtomicUsize::new(0),
            max: max.max(1),
            has_waiters: AtomicBool::new(false),
            waiters: Mutex::new(Waiters::default()),
        }
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
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
            if let Some((_, waker)) = self.waiters().queue.front() {
                waker.wake_by_ref();
            }
        }
    }

    /// Enters at once if nobody waits and a slot is free; otherwise joins (or keeps) its place
    /// in the queue and enters only at the front. `ticket` is the caller's place, if it has one.
    fn enter_in_turn(&self, ticket: &mut Option<u64>, waker: &Waker) -> bool {
        if ticket.is_none() && !self.has_waiters.load(Ordering::Acquire) && self.try_enter() {
            return true;
        }
        let mut waiters = self.waiters();
        let mine = match *ticket {
            Some(mine) => {
                if let Some((_, queued)) = waiters.queue.iter_mut().find(|(t, _)| *t == mine) {
                    if !queued.will_wake(waker) {
                        queued.clone_from(waker);
                    }
                }
                mine
            }
            None => {
                let mine = waiters.next_ticket;
                waiters.next_ticket += 1;
                waiters.queue.push_back((mine, waker.clone()));
                self.has_waiters.store(true, Ordering::Release);
                *ticket = Some(mine);
                mine
            }
        };
        let at_front = waiters.queue.front().is_some_and(|(t, _)| *t == mine);
        if !at_front || !self.try_enter() {
            return false;
        }
        waiters.queue.pop_front();
        *ticket = None;
        self.has_waiters
            .store(!waiters.queue.is_empty(), Ordering::Release);
        // More than one slot may be free: the next in line need not wait for a leave.
        if self.running.load(Ordering::Acquire) < self.max {
            if let Some((_, next)) = waiters.queue.front() {
                next.wake_by_ref();
            }
        }
        true
    }

    /// A waiter gave up (its future was dropped): out of the queue, and if it was first, the
    /// next one is told.
    fn give_up(&self, ticket: u64) {
        let mut waiters = self.waiters();
        let Some(position) = waiters.queue.iter().position(|(t, _)| *t == ticket) else {
            return;
        };
        waiters.queue.remove(position);
        self.has_waiters
            .store(!waiters.queue.is_empty(), Ordering::Release);
        if position == 0 && self.running.load(Ordering::Acquire) < self.max {
            if let Some((_, next)) = waiters.queue.front() {
                next.wake_by_ref();
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A handler future that polls only when its endpoint's share allows.
    pub(crate) struct Limited<F> {
        #[pin]
        inner: F,
        limiter: Option<Arc<PollLimiter>>,
        // Its place in the limiter's queue while it waits.
        ticket: Option<u64>,
    }

    impl<F> PinnedDrop for Limited<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let (Some(limiter), Some(ticket)) = (this.limiter.as_ref(), *this.ticket) {
                limiter.give_up(ticket);
            }
        }
    }
}

impl<F> Limited<F> {
    pub(crate) fn new(inner: F, limiter: Option<Arc<PollLimiter>>) -> Self {
        Limited {
            inner,
            limiter,
            ticket: None,
        }
    }
}

impl<F: Future> Future for Limited<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(limiter) = this.limiter else {
            return this.inner.poll(cx);
        };
        if !limiter.enter_in_turn(this.ticket, cx.waker()) {
            return Poll::Pending;
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
