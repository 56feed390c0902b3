//! The loom models of the `Multicore` limiter (`vsp/src/server/limiter.rs`): a slot freed while a
//! caller joins the queue is never lost, and a waiter that gives up passes its turn on.
//!
//! Each model ends in a state where a caller that waits must have been woken: a lost wake-up is a
//! handler that never runs (until its deadline, if it has one).

use std::sync::Arc;
use std::task::{Wake, Waker};

use crate::limiter::PollLimiter;
use loom::sync::atomic::{AtomicUsize, Ordering};

/// A waker that counts its wake-ups (in loom's atomics, so the model sees them).
struct Counting(AtomicUsize);

impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting() -> (Arc<Counting>, Waker) {
    let counting = Arc::new(Counting(AtomicUsize::new(0)));
    (counting.clone(), Waker::from(counting))
}

#[test]
fn a_slot_freed_while_a_caller_queues_is_never_lost() {
    loom::model(|| {
        let limiter = loom::sync::Arc::new(PollLimiter::new(1));
        assert!(limiter.try_enter(), "the first caller takes the one slot");
        let leaver = {
            let limiter = limiter.clone();
            loom::thread::spawn(move || limiter.leave())
        };
        let (woken, waker) = counting();
        let mut ticket = None;
        let entered = limiter.enter_in_turn(&mut ticket, &waker);
        leaver.join().unwrap();
        assert!(
            entered || woken.0.load(Ordering::SeqCst) > 0,
            "the slot was freed while the caller queued, and nobody woke it (lost wake-up)"
        );
    });
}

#[test]
fn a_waiter_that_gives_up_passes_its_turn_to_the_next() {
    loom::model(|| {
        let limiter = loom::sync::Arc::new(PollLimiter::new(1));
        assert!(limiter.try_enter());
        let (_first_woken, first_waker) = counting();
        let (second_woken, second_waker) = counting();
        let mut first = None;
        let mut second = None;
        assert!(!limiter.enter_in_turn(&mut first, &first_waker));
        assert!(!limiter.enter_in_turn(&mut second, &second_waker));
        let leaver = {
            let limiter = limiter.clone();
            loom::thread::spawn(move || limiter.leave())
        };
        // The first waiter is dropped (its handler stopped at its deadline) meanwhile.
        limiter.give_up(first.unwrap());
        leaver.join().unwrap();
        // The slot is free and the second is first in line: it must have been told.
        assert!(
            second_woken.0.load(Ordering::SeqCst) > 0,
            "the turn given up was lost: the next waiter was never woken"
        );
        assert!(limiter.enter_in_turn(&mut second, &second_waker));
    });
}
