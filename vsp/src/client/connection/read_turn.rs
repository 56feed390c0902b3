//! Who reads a client connection's socket: its reader task, or the one caller waiting on it.
//!
//! A call alone on its connection would otherwise cost two task wake-ups on its way back, often
//! across threads: the socket wakes the reader task, which reads the answer and wakes the
//! caller. Instead that caller reads its own answer: the socket's readiness wakes it directly,
//! and the reader task sleeps on. Every read of the socket registers one waker, the
//! connection's [`ReadWake`], which passes each wake-up on to the caller that reads (the
//! *route*), or to the reader task when no caller does.
//!
//! Rules that keep every frame read by somebody, and nobody held up by a caller:
//! - the socket is read only under `side`'s lock, which is never held across a wait, and a read
//!   goes on until the socket has nothing more (`Pending`: its next readiness wakes the route or
//!   the reader task), or ends with whoever read waking the next reader (a full batch);
//! - a caller takes the route only when it was alone at its send, and gives it back when its
//!   answer came (reading on until the socket has nothing more), when it is dropped or times out
//!   (waking the reader task: readiness may have gone to it), and as soon as another call is in
//!   flight: that call's send wakes the reader task, which takes the route and wakes the caller,
//!   who then waits on its slot as any other call does. So a caller that stops being polled
//!   holds up no other call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::task::{Context, Poll, Wake, Waker};

use super::{ConnectionState, Routes};
use crate::protocol::frame::{FrameReader, ReadError};
use crate::transport::BoxRead;

/// Most frames one turn reads before it lets other tasks run.
const MAX_BATCH: usize = 128;

/// What the reader of a turn holds.
pub(super) struct ReadSide {
    frames: FrameReader<BoxRead>,
    /// The reader's own copy of the open streams' slots, so an item takes no lock.
    routes: Routes,
}

/// A connection's read side and who reads it (see the module docs).
pub(super) struct ReadTurn {
    /// `None` once the connection ended (the read half is dropped then).
    side: Mutex<Option<ReadSide>>,
    wake: Arc<ReadWake>,
    /// `wake` as a waker: the only waker the socket is ever polled with.
    waker: Waker,
    /// Mirrors `wake.route.is_some()`, readable without the lock.
    routed: AtomicBool,
    /// Answers read by their own callers (for the tests).
    #[cfg(test)]
    read_by_callers: std::sync::atomic::AtomicU64,
}

/// Passes the socket's wake-ups to the caller that reads, or else to the reader task.
#[derive(Default)]
struct ReadWake {
    /// The caller reading its own answer: its call id and waker.
    route: Mutex<Option<(u64, Waker)>>,
    reader: Mutex<Option<Waker>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some((_, caller)) = &*lock(&self.route) {
            caller.wake_by_ref();
            return;
        }
        if let Some(reader) = &*lock(&self.reader) {
            reader.wake_by_ref();
        }
    }
}

/// Where a caller reading its own answer stands after a poll.
pub(super) enum Reading {
    /// It has the route: the socket wakes it.
    Routed,
    /// It has the route, but another task is reading: its slot must wake it too.
    AlsoWaitSlot,
    /// It no longer reads (its answer came, another call started, or the connection failed):
    /// it waits on its slot.
    HandedBack,
}

/// How a turn of reading ended.
pub(super) enum Turn {
    /// The socket has nothing more: its next readiness wakes the route or the reader task.
    Idle,
    /// `MAX_BATCH` frames read: whoever read must see that reading goes on.
    Full,
    /// The answer the reader waited for was delivered.
    Answered,
    /// The connection failed, with why.
    Failed(String),
}

impl ReadTurn {
    pub(super) fn new(read: BoxRead, max_frame_size: usize) -> Self {
        let wake = Arc::new(ReadWake::default());
        ReadTurn {
            side: Mutex::new(Some(ReadSide {
                frames: FrameReader::new(read, max_frame_size),
                routes: Routes::default(),
            })),
            waker: Waker::from(wake.clone()),
            wake,
            routed: AtomicBool::new(false),
            #[cfg(test)]
            read_by_callers: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The read side, unless another task is reading it right now.
    fn try_side(&self) -> Option<MutexGuard<'_, Option<ReadSide>>> {
        match self.side.try_lock() {
            Ok(side) => Some(side),
            Err(TryLockError::Poisoned(side)) => Some(side.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn set_reader(&self, waker: &Waker) {
        let mut reader = lock(&self.wake.reader);
        if !reader.as_ref().is_some_and(|known| known.will_wake(waker)) {
            *reader = Some(waker.clone());
        }
    }

    pub(super) fn wake_reader(&self) {
        if let Some(reader) = &*lock(&self.wake.reader) {
            reader.wake_by_ref();
        }
    }

    /// Wakes the reading caller and the reader task (the connection closed).
    pub(super) fn wake_all(&self) {
        if let Some((_, caller)) = &*lock(&self.wake.route) {
            caller.wake_by_ref();
        }
        self.wake_reader();
    }

    /// A caller is reading its own answer.
    pub(super) fn is_routed(&self) -> bool {
        self.routed.load(Ordering::Acquire)
    }

    /// Makes call `id` (with `waker`) the route; false if another call is.
    fn route(&self, id: u64, waker: &Waker) -> bool {
        let mut route = lock(&self.wake.route);
        match &mut *route {
            None => {
                *route = Some((id, waker.clone()));
                self.routed.store(true, Ordering::Release);
                true
            }
            Some((routed, known)) if *routed == id => {
                if !known.will_wake(waker) {
                    *known = waker.clone();
                }
                true
            }
            Some(_) => false,
        }
    }

    /// Ends call `id`'s route; false if it was not the route.
    pub(super) fn unroute(&self, id: u64) -> bool {
        let mut route = lock(&self.wake.route);
        if !matches!(&*route, Some((routed, _)) if *routed == id) {
            return false;
        }
        *route = None;
        self.routed.store(false, Ordering::Release);
        true
    }

    /// Takes the route from whichever caller has it.
    fn take_route(&self) -> Option<Waker> {
        let mut route = lock(&self.wake.route);
        self.routed.store(false, Ordering::Release);
        route.take().map(|(_, waker)| waker)
    }
}

impl ConnectionState {
    /// Reads and delivers frames until the socket has nothing more, `MAX_BATCH` frames, or the
    /// answer of call `until`.
    fn read_frames(&self, side: &mut ReadSide, until: Option<u64>) -> Turn {
        let mut cx = Context::from_waker(&self.read.waker);
        for _ in 0..MAX_BATCH {
            let frame = match side.frames.poll_frame(&mut cx) {
                Poll::Pending => return Turn::Idle,
                Poll::Ready(Ok(Some(frame))) => frame,
                Poll::Ready(Ok(None)) => {
                    return Turn::Failed("the server closed the connection".to_owned())
                }
                Poll::Ready(Err(ReadError::Io(err))) => {
                    return Turn::Failed(format!("read failed: {err}"))
                }
                Poll::Ready(Err(ReadError::Protocol(err))) => {
                    return Turn::Failed(format!("bad frame from the server: {err}"))
                }
                // Only guarded reads (the server's) give up on their own.
                Poll::Ready(Err(ReadError::Stalled { .. } | ReadError::Idle(_))) => {
                    return Turn::Failed("the read gave up".to_owned())
                }
            };
            self.frames_received.fetch_add(1, Ordering::Relaxed);
            let answered = self.deliver(frame, &mut side.routes);
            if answered.is_some() && answered == until {
                return Turn::Answered;
            }
        }
        Turn::Full
    }

    /// The reader task: reads whenever no caller does. `Ready` with why the connection ended.
    pub(super) fn poll_reader(&self, cx: &mut Context<'_>) -> Poll<String> {
        self.read.set_reader(cx.waker());
        // A caller reading right now reads until the socket has nothing more.
        let Some(mut side) = self.read.try_side() else {
            return Poll::Pending;
        };
        // Woken while a caller has the route: another call started (or the connection closed),
        // so the reader task reads for everyone again and the caller waits on its slot.
        if let Some(caller) = self.read.take_route() {
            caller.wake();
        }
        let turn = match side.as_mut() {
            Some(_) if self.closed.load(Ordering::Acquire) => Turn::Failed(String::new()),
            Some(reading) => self.read_frames(reading, None),
            None => Turn::Failed(String::new()),
        };
        match turn {
            Turn::Idle => Poll::Pending,
            Turn::Full | Turn::Answered => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Turn::Failed(reason) => {
                // Closed before the read half goes, so the reason given is the first one.
                self.close(reason);
                *side = None;
                drop(side);
                Poll::Ready(self.pending().closed.clone().unwrap_or_default())
            }
        }
    }

    /// A caller alone on the connection (call `id`) reads until its answer is delivered.
    pub(super) fn read_own(&self, id: u64, cx: &Context<'_>) -> Reading {
        if self.in_flight.load(Ordering::Relaxed) > 1 || !self.read.route(id, cx.waker()) {
            self.hand_back(id);
            return Reading::HandedBack;
        }
        let Some(mut side) = self.read.try_side() else {
            // The reader task is reading: what it leaves to the socket wakes this caller, and
            // an answer it delivers wakes it through its slot.
            return Reading::AlsoWaitSlot;
        };
        let turn = match side.as_mut() {
            Some(reading) => self.read_frames(reading, Some(id)),
            None => Turn::Failed("the connection is closed".to_owned()),
        };
        match turn {
            Turn::Idle => {}
            // Not Pending: nothing will wake the route, so it wakes itself.
            Turn::Full => cx.waker().wake_by_ref(),
            Turn::Answered => {
                #[cfg(test)]
                self.read.read_by_callers.fetch_add(1, Ordering::Relaxed);
                self.read.unroute(id);
                // Read on until the socket has nothing more: its readiness may have come to
                // this caller, and the reader task must not miss it.
                match side.as_mut().map(|reading| self.read_frames(reading, None)) {
                    Some(Turn::Idle) | None => {}
                    Some(Turn::Full | Turn::Answered) => self.read.wake_reader(),
                    Some(Turn::Failed(reason)) => {
                        self.close(reason);
                        *side = None;
                    }
                }
                return Reading::HandedBack;
            }
            Turn::Failed(reason) => {
                self.close(reason);
                *side = None;
                drop(side);
                self.hand_back(id);
                return Reading::HandedBack;
            }
        };
        drop(side);
        if self.in_flight.load(Ordering::Relaxed) > 1 {
            self.hand_back(id);
            return Reading::HandedBack;
        }
        // If the reader task takes the route from here on, it wakes this caller.
        Reading::Routed
    }

    /// Call `id` stops reading: if it had the route, the reader task takes over (the socket's
    /// last readiness may have gone to the caller).
    pub(super) fn hand_back(&self, id: u64) {
        if self.read.unroute(id) {
            self.read.wake_reader();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncWriteExt, DuplexStream};
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::super::{CallFailure, Connection, PendingCall};
    use crate::protocol::frame::FrameReader;
    use crate::transport::Io;

    const MAX_FRAME: usize = 1 << 20;

    /// A server on the other end of `io` that answers each request with its own id as the
    /// body, once `release` lets it (one permit per answer; `None`: at once); `Err` closes.
    async fn serve(io: DuplexStream, mut release: Option<mpsc::UnboundedReceiver<bool>>) {
        let (read, mut write) = tokio::io::split(io);
        let mut frames = FrameReader::new(read, MAX_FRAME);
        while let Ok(Some(frame)) = frames.next_frame().await {
            let request: serde_json::Value = serde_json::from_slice(&frame).unwrap();
            let id = &request["header"]["request_id"];
            if let Some(release) = &mut release {
                if release.recv().await != Some(true) {
                    return;
                }
            }
            let response = format!(
                r#"{{"header":{{"request_id":{id},"service":"s","endpoint":"e","is_response":true}},"body":{id}}}"#
            );
            let mut out = (response.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(response.as_bytes());
            if write.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    fn connect(release: Option<mpsc::UnboundedReceiver<bool>>) -> Arc<Connection> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, release));
        let (read, write) = tokio::io::split(client);
        Arc::new(Connection::start(
            Io::new(read, write),
            Arc::from("test"),
            MAX_FRAME,
            None,
        ))
    }

    fn send(connection: &Arc<Connection>, timeout: Duration) -> PendingCall {
        let now = Instant::now();
        connection
            .send("s", "e", &(), None, None, (now, now + timeout), None)
            .unwrap_or_else(|_| panic!("the call was not sent"))
    }

    fn answer(outcome: Result<super::super::RawResponse, CallFailure>) -> u64 {
        let response = outcome.unwrap_or_else(|err| panic!("the call failed: {err:?}"));
        serde_json::from_slice(response.body()).unwrap()
    }

    #[tokio::test]
    async fn a_caller_alone_on_its_connection_reads_its_own_answer() {
        let connection = connect(None);
        for _ in 0..50 {
            let mut call = send(&connection, Duration::from_secs(5));
            assert_eq!(answer(call.wait().await), call.id());
        }
        let read = connection
            .state
            .read
            .read_by_callers
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            read >= 40,
            "only {read} of 50 lone calls read their own answer"
        );
    }

    /// Calls alone and together, on two threads, in every interleaving the scheduler makes: a
    /// wake-up lost between the caller that reads and the reader task would leave a call to
    /// its deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lone_and_concurrent_calls_mixed_on_two_threads_all_complete() {
        let connection = connect(None);
        let callers: Vec<_> = (0..6u64)
            .map(|caller| {
                let connection = connection.clone();
                tokio::spawn(async move {
                    for round in 0..400u64 {
                        let mut call = send(&connection, Duration::from_secs(10));
                        match call.wait().await {
                            Ok(response) => {
                                let id: u64 = serde_json::from_slice(response.body()).unwrap();
                                assert_eq!(id, call.id());
                            }
                            Err(err) => panic!("caller {caller}, round {round}: {err:?}"),
                        }
                        if (round + caller) % 7 == 0 {
                            tokio::time::sleep(Duration::from_micros(200)).await;
                        }
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_caller_reading_its_own_answer_and_no_longer_polled_holds_up_no_other_call() {
        let connection = connect(None);
        // A first call, so the reader task has started and sleeps on its connection.
        let mut warm = send(&connection, Duration::from_secs(5));
        assert_eq!(answer(warm.wait().await), warm.id());
        drop(warm);
        let mut first = send(&connection, Duration::from_secs(5));
        let mut first_wait = Box::pin(async move {
            let outcome = first.wait().await;
            (first.id(), outcome)
        });
        // Polled once (it takes the route), then left alone while its answer arrives.
        let waker = futures::task::noop_waker();
        let polled = first_wait
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker));
        assert!(polled.is_pending());
        let mut second = send(&connection, Duration::from_secs(5));
        let outcome = tokio::time::timeout(Duration::from_secs(5), second.wait())
            .await
            .expect("the second call waited on the first caller, which is no longer polled");
        assert_eq!(answer(outcome), second.id());
        let (id, outcome) = tokio::time::timeout(Duration::from_secs(5), first_wait)
            .await
            .expect("the first call's answer, read by the reader task");
        assert_eq!(answer(outcome), id);
    }

    #[tokio::test]
    async fn a_caller_that_times_out_while_reading_hands_the_reading_back() {
        let (release, released) = mpsc::unbounded_channel();
        let connection = connect(Some(released));
        let mut late = send(&connection, Duration::from_millis(50));
        assert!(matches!(
            late.wait().await,
            Err(CallFailure::TimedOut { .. })
        ));
        drop(late);
        // Both answers now: the late one is dropped, the next call's must reach it.
        release.send(true).unwrap();
        release.send(true).unwrap();
        let mut next = send(&connection, Duration::from_secs(5));
        let outcome = tokio::time::timeout(Duration::from_secs(5), next.wait())
            .await
            .expect("the call after a timed-out reader: nobody read its answer");
        assert_eq!(answer(outcome), next.id());
    }

    #[tokio::test]
    async fn a_caller_reading_its_own_answer_learns_at_once_that_the_server_left() {
        let (release, released) = mpsc::unbounded_channel();
        let connection = connect(Some(released));
        let mut call = send(&connection, Duration::from_secs(60));
        let waiting = tokio::spawn(async move { call.wait().await });
        tokio::task::yield_now().await;
        release.send(false).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the call's failure after the server closed the connection")
            .unwrap();
        assert!(
            matches!(&outcome, Err(CallFailure::Closed(reason)) if reason.contains("closed")),
            "{outcome:?}"
        );
        assert!(connection.is_closed());
    }
}
