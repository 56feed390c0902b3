//! The loom model of a connection's write queue (`vsp/src/transport/write_queue.rs`): callers
//! that write inline and the writer task take turns, so every frame leaves once, whole, in the
//! order each caller queued it, and the backlog (what the reader and streams wait on) never
//! wraps and returns to zero.

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::write_queue::{WriteQueue, WriterTurn};

/// The bytes that left, in order. A loom mutex: each write is a point where loom may switch
/// threads, so two writers that both think they hold the turn interleave and split frames.
type Wire = loom::sync::Arc<loom::sync::Mutex<Vec<u8>>>;

/// A socket that takes at most two bytes per write (so a frame takes two) and records them.
struct Recorder(Wire);

impl tokio::io::AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let taken = bytes.len().min(2);
        self.0.lock().unwrap().extend_from_slice(&bytes[..taken]);
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn frame(byte: u8) -> impl FnOnce(&mut Vec<u8>) -> Result<(), std::convert::Infallible> {
    move |out| {
        out.extend([byte; 3]);
        Ok(())
    }
}

/// One turn of the writer task, done synchronously (its socket never makes it wait, and takes
/// two bytes a write, as the recorder does).
fn writer_step(queue: &WriteQueue, wire: &Wire, total: usize) {
    let mut sending = Vec::new();
    if let WriterTurn::Write = queue.writer_turn(&mut sending) {
        for chunk in sending.chunks(2) {
            wire.lock().unwrap().extend_from_slice(chunk);
        }
        queue.end_turn(sending.len());
    }
    assert!(
        queue.backlog() <= total,
        "the backlog wrapped: {} bytes for {total} queued",
        queue.backlog()
    );
}

/// Every interleaving with up to three preemptions (loom's bound; the default, none, takes
/// minutes for a few thousand more that add no new order of the queue's few steps).
fn model(check: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(check);
}

#[test]
fn frames_from_inline_writers_and_the_writer_task_leave_once_whole_and_in_order() {
    model(|| {
        let queue = loom::sync::Arc::new(WriteQueue::new());
        let wire: Wire = loom::sync::Arc::new(loom::sync::Mutex::new(Vec::new()));
        queue.attach(Box::pin(Recorder(wire.clone())));
        let total = 9;
        // A caller alone on its connection writes inline, then queues another frame.
        let first = {
            let queue = queue.clone();
            loom::thread::spawn(move || {
                queue.push_and_write(frame(b'a')).unwrap().unwrap();
                queue.push(frame(b'b')).unwrap().unwrap();
            })
        };
        // Another caller writes inline at the same time.
        let second = {
            let queue = queue.clone();
            loom::thread::spawn(move || {
                queue.push_and_write(frame(b'c')).unwrap().unwrap();
            })
        };
        // The writer task takes turns meanwhile.
        writer_step(&queue, &wire, total);
        first.join().unwrap();
        second.join().unwrap();
        // Then it writes whatever is left, as it would once woken.
        for _ in 0..3 {
            writer_step(&queue, &wire, total);
        }
        let wire = wire.lock().unwrap().clone();
        assert_eq!(wire.len(), total, "bytes lost or doubled: {wire:?}");
        for byte in [b'a', b'b', b'c'] {
            let at = wire.iter().position(|&b| b == byte).unwrap();
            assert_eq!(&wire[at..at + 3], &[byte; 3], "a frame was split: {wire:?}");
        }
        let position = |byte| wire.iter().position(|&b| b == byte).unwrap();
        assert!(
            position(b'a') < position(b'b'),
            "one caller's frames reordered: {wire:?}"
        );
        assert_eq!(queue.backlog(), 0, "the backlog did not return to zero");
    });
}

#[test]
fn a_batch_held_by_the_reader_leaves_whole_at_its_flush_while_others_write() {
    model(|| {
        let queue = loom::sync::Arc::new(WriteQueue::new());
        let wire: Wire = loom::sync::Arc::new(loom::sync::Mutex::new(Vec::new()));
        queue.attach(Box::pin(Recorder(wire.clone())));
        let total = 9;
        // The server's reader holds the queue for a batch of two replies, then flushes.
        let reader = {
            let queue = queue.clone();
            loom::thread::spawn(move || {
                queue.hold();
                queue.push(frame(b'a')).unwrap().unwrap();
                queue.push(frame(b'b')).unwrap().unwrap();
                queue.flush();
            })
        };
        // A handler on its own task answers meanwhile.
        let handler = {
            let queue = queue.clone();
            loom::thread::spawn(move || {
                queue.push(frame(b'c')).unwrap().unwrap();
            })
        };
        writer_step(&queue, &wire, total);
        reader.join().unwrap();
        handler.join().unwrap();
        for _ in 0..3 {
            writer_step(&queue, &wire, total);
        }
        let wire = wire.lock().unwrap().clone();
        assert_eq!(wire.len(), total, "bytes lost or doubled: {wire:?}");
        let position = |byte| wire.iter().position(|&b| b == byte).unwrap();
        assert!(
            position(b'a') < position(b'b'),
            "the batch reordered: {wire:?}"
        );
        assert_eq!(queue.backlog(), 0);
    });
}
