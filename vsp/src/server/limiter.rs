//! The `Multicore` limiter: how many of one endpoint's handlers are being polled at once.
//!
//! Why its own file: it is the one piece of lock-free coordination in the server, and it is
//! model-checked with loom (`tests/loom`), which compiles this file against loom's atomics and
//! mutex through `crate::sync`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::sync::{fence, AtomicBool, AtomicUsize, Mutex, MutexGuard, Ordering, PoisonError};

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
pub(crate) struct Waiters {
    pub(crate) queue: VecDeque<(u64, Waker)>,
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

    pub(crate) fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn try_enter(&self) -> bool {
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

    pub(crate) fn leave(&self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
        // Pairs with the fence in `enter_in_turn`: of a leaver (`running` down, then
        // `has_waiters` read) and a waiter (`has_waiters` up, then `running` read), at least one
        // sees the other's write, so a freed slot never meets a waiter that missed it. Without
        // both fences each may read the old value (store buffering), and the waiter sleeps on
        // a free slot; the loom model in `tests/loom` finds that interleaving.
        fence(Ordering::SeqCst);
        if self.has_waiters.load(Ordering::Acquire) {
            if let Some((_, waker)) = self.waiters().queue.front() {
                waker.wake_by_ref();
            }
        }
    }

    /// Enters at once if nobody waits and a slot is free; otherwise joins (or keeps) its place
    /// in the queue and enters only at the front. `ticket` is the caller's place, if it has one.
    pub(crate) fn enter_in_turn(&self, ticket: &mut Option<u64>, waker: &Waker) -> bool {
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
                // See `leave`.
                fence(Ordering::SeqCst);
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
    pub(crate) fn give_up(&self, ticket: u64) {
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
