//! The open client connections: closing the idle ones and draining them all
//! on shutdown, without a timer per request.
//!
//! hyper's own `header_read_timeout` arms a timer for every request head it
//! reads (a boxed sleep registered in and removed from the runtime's timer
//! wheel each time), which measured ≈10 % of cache-hit throughput. Instead,
//! each connection counts the requests it starts and those still being
//! answered, and one sweeper task looks at every connection a few times per
//! `server.idle_timeout_ms`:
//!
//! - a connection that started no request and had none in flight for the
//!   whole timeout is asked to shut down gracefully — an idle keep-alive
//!   connection closes at once, an HTTP/2 connection gets GOAWAY;
//! - if it is still open one sweep later with nothing in flight — a client
//!   that never finishes its request head (slowloris) — it is dropped.
//!
//! A response still being sent (a long SSE stream) or a request body still
//! arriving keeps its connection open. On shutdown every connection is
//! asked to shut down gracefully, and [`Connections::drained`] resolves when
//! the last one has closed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Notify;

/// How many sweeps make one idle timeout.
const SWEEPS_PER_TIMEOUT: u32 = 3;

const OPEN: u8 = 0;
const CLOSE_GRACEFULLY: u8 = 1;
const DROP: u8 = 2;

/// What one connection tells the sweeper, and the sweeper tells it.
#[derive(Debug, Default)]
struct ConnState {
    /// Requests started on the connection.
    started: AtomicU64,
    /// Requests whose response body has not been dropped yet.
    in_flight: AtomicU32,
    /// OPEN, CLOSE_GRACEFULLY or DROP.
    signal: AtomicU8,
    waker: AtomicWaker,
    // The sweeper's own bookkeeping.
    seen_started: AtomicU64,
    idle_sweeps: AtomicU32,
}

impl ConnState {
    fn signal(&self, signal: u8) {
        if self.signal.fetch_max(signal, Ordering::AcqRel) < signal {
            self.waker.wake();
        }
    }
}

/// Every open connection of one server.
#[derive(Debug, Default)]
pub struct Connections {
    live: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    draining: std::sync::atomic::AtomicBool,
    closed: Notify,
    refusals: Refusals,
}

/// Connections refused at `server.max_connections`, for a warning at most
/// once a second (a flood must not become a flood of log lines).
#[derive(Debug)]
struct Refusals {
    since: std::time::Instant,
    /// Refused since the last warning.
    unreported: AtomicU64,
    /// When the last warning was written, in ms after `since`; `u64::MAX`
    /// before the first.
    logged_at_ms: AtomicU64,
}

impl Default for Refusals {
    fn default() -> Self {
        Self {
            since: std::time::Instant::now(),
            unreported: AtomicU64::new(0),
            logged_at_ms: AtomicU64::new(u64::MAX),
        }
    }
}

impl Refusals {
    /// Counts one refusal; the number to warn about now, if a second has
    /// passed since the last warning (or there was none).
    fn note(&self, now: std::time::Instant) -> Option<u64> {
        self.unreported.fetch_add(1, Ordering::Relaxed);
        let now_ms = now.saturating_duration_since(self.since).as_millis() as u64;
        let last = self.logged_at_ms.load(Ordering::Relaxed);
        if last != u64::MAX && now_ms.saturating_sub(last) < 1000 {
            return None;
        }
        // One of the racing acceptors reports; the others count on.
        self.logged_at_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.unreported.swap(0, Ordering::Relaxed))
    }
}

impl Connections {
    /// A new, empty set.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a connection, whatever the number open.
    #[cfg(test)]
    pub fn open(self: &Arc<Self>) -> Connection {
        self.open_within(usize::MAX).expect("no limit")
    }

    /// Registers a connection being accepted unless `max` are open already
    /// (`None`: close it at once). A refusal is counted and warned about at
    /// most once a second, with the number refused since the last warning.
    pub fn try_open(self: &Arc<Self>, max: usize) -> Option<Connection> {
        let opened = self.open_within(max);
        if opened.is_none() {
            if let Some(refused) = self.refusals.note(std::time::Instant::now()) {
                tracing::warn!(
                    refused,
                    max_connections = max,
                    "server.max_connections reached: closing new connections at once"
                );
            }
        }
        opened
    }

    fn open_within(self: &Arc<Self>, max: usize) -> Option<Connection> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::default());
        // Under the lock `drain` takes after setting `draining`: either it
        // finds this connection in the set or this reads `draining` set.
        let mut live = self.lock();
        if live.len() >= max {
            return None;
        }
        let signal = if self.draining.load(Ordering::Acquire) {
            CLOSE_GRACEFULLY
        } else {
            OPEN
        };
        state.signal.store(signal, Ordering::Release);
        live.insert(id, state.clone());
        drop(live);
        Some(Connection {
            id,
            state,
            set: self.clone(),
        })
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks every connection, and every one accepted from now on, to shut
    /// down gracefully.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        for state in self.lock().values() {
            state.signal(CLOSE_GRACEFULLY);
        }
    }

    /// Resolves once no connection is open.
    pub async fn drained(&self) {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.is_empty() {
                return;
            }
            closed.await;
        }
    }

    /// Closes idle connections, forever: run it as a task.
    pub async fn sweep_every(self: Arc<Self>, idle_timeout: Duration) {
        let mut ticks = tokio::time::interval(idle_timeout / SWEEPS_PER_TIMEOUT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            self.sweep();
        }
    }

    /// One look at every connection.
    fn sweep(&self) {
        for state in self.lock().values() {
            let started = state.started.load(Ordering::Acquire);
            let busy = state.in_flight.load(Ordering::Acquire) > 0;
            if busy || state.seen_started.swap(started, Ordering::Relaxed) != started {
                state.idle_sweeps.store(0, Ordering::Relaxed);
                continue;
            }
            let idle = state.idle_sweeps.fetch_add(1, Ordering::Relaxed) + 1;
            if idle > SWEEPS_PER_TIMEOUT {
                state.signal(DROP);
            } else if idle == SWEEPS_PER_TIMEOUT {
                state.signal(CLOSE_GRACEFULLY);
            }
        }
    }
}

/// One open connection's registration; dropping it unregisters.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    state: Arc<ConnState>,
    set: Arc<Connections>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let empty = {
            let mut live = self.set.lock();
            live.remove(&self.id);
            live.is_empty()
        };
        if empty {
            self.set.closed.notify_waiters();
        }
    }
}

impl Connection {
    /// Wraps the connection's service so that its requests are counted.
    pub fn track<S>(&self, inner: S) -> TrackRequests<S> {
        TrackRequests {
            inner,
            state: self.state.clone(),
        }
    }

    #[cfg(test)]
    fn request_started(&self) -> InFlight {
        request_started(&self.state)
    }

    /// Serves `connection` until it ends, shutting it down gracefully with
    /// `graceful` when asked to, and dropping it when told to.
    ///
    /// A future of its own rather than an `async fn`: an `async fn` keeps
    /// its argument and the pinned local it is moved into as two slots of
    /// its state, so every connection's task would hold hyper's connection
    /// (≈1.6 KB) twice.
    pub fn serve<C, G>(self, connection: C, graceful: G) -> Serve<C, G>
    where
        C: Future,
        G: FnMut(Pin<&mut C>),
    {
        Serve {
            connection,
            graceful,
            shutting_down: false,
            state: self,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Connection::serve`]: `None` when the connection was
    /// dropped on the sweeper's or the drain's word.
    #[must_use = "futures do nothing unless polled"]
    pub struct Serve<C, G> {
        #[pin]
        connection: C,
        graceful: G,
        shutting_down: bool,
        state: Connection,
    }
}

impl<C, G> Future for Serve<C, G>
where
    C: Future,
    G: FnMut(Pin<&mut C>),
{
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let state = &this.state.state;
        // Registered before the signal is read, so a signal sent in between
        // wakes this task again instead of being lost.
        state.waker.register(cx.waker());
        match state.signal.load(Ordering::Acquire) {
            DROP => return Poll::Ready(None),
            CLOSE_GRACEFULLY if !*this.shutting_down => {
                *this.shutting_down = true;
                (this.graceful)(this.connection.as_mut());
            }
            _ => {}
        }
        this.connection.poll(cx).map(Some)
    }
}

/// Counts a request starting; the guard counts it finished when dropped.
fn request_started(state: &Arc<ConnState>) -> InFlight {
    state.started.fetch_add(1, Ordering::Release);
    state.in_flight.fetch_add(1, Ordering::AcqRel);
    InFlight(state.clone())
}

/// A connection's service, counting the requests it answers (see
/// [`Connection::track`]): a request is in flight from its call until its
/// response body is dropped, or its future is if it never responds.
#[derive(Clone, Debug)]
pub struct TrackRequests<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S, R, B> tower::Service<R> for TrackRequests<S>
where
    S: tower::Service<R, Response = http::Response<B>>,
{
    type Response = http::Response<InFlightBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        TrackedFuture {
            in_flight: Some(request_started(&self.state)),
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`TrackRequests`].
    #[derive(Debug)]
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<InFlightBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|inner| InFlightBody { inner, in_flight })))
    }
}

/// A request being answered on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's [`InFlight`] until dropped.
    #[derive(Debug)]
    pub struct InFlightBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for InFlightBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_are_closed_gracefully_then_dropped() {
        let set = Connections::new();
        let idle = set.open();
        let busy = set.open();
        let active = set.open();
        let _streaming = busy.request_started();
        for sweep in 1..=SWEEPS_PER_TIMEOUT + 1 {
            drop(active.request_started());
            set.sweep();
            let expected = match sweep {
                s if s < SWEEPS_PER_TIMEOUT => OPEN,
                s if s == SWEEPS_PER_TIMEOUT => CLOSE_GRACEFULLY,
                _ => DROP,
            };
            assert_eq!(
                idle.state.signal.load(Ordering::Relaxed),
                expected,
                "sweep {sweep}"
            );
            assert_eq!(busy.state.signal.load(Ordering::Relaxed), OPEN);
            assert_eq!(active.state.signal.load(Ordering::Relaxed), OPEN);
        }
    }

    #[test]
    fn past_the_limit_a_connection_is_refused_until_one_closes() {
        let set = Connections::new();
        let a = set.try_open(2).unwrap();
        let _b = set.try_open(2).unwrap();
        assert!(set.try_open(2).is_none());
        assert_eq!(set.len(), 2);
        drop(a);
        assert!(set.try_open(2).is_some());
    }

    #[test]
    fn refusals_are_reported_at_most_once_a_second_with_their_count() {
        let refusals = Refusals::default();
        let t0 = refusals.since;
        assert_eq!(refusals.note(t0), Some(1));
        for ms in [1, 500, 999] {
            assert_eq!(refusals.note(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(refusals.note(t0 + Duration::from_millis(1000)), Some(4));
        assert_eq!(refusals.note(t0 + Duration::from_millis(1500)), None);
        assert_eq!(refusals.note(t0 + Duration::from_millis(2100)), Some(2));
    }

    #[tokio::test]
    async fn drain_signals_every_connection_and_resolves_when_all_closed() {
        let set = Connections::new();
        let a = set.open();
        let b = set.open();
        set.drain();
        assert_eq!(a.state.signal.load(Ordering::Relaxed), CLOSE_GRACEFULLY);
        let late = set.open();
        assert_eq!(late.state.signal.load(Ordering::Relaxed), CLOSE_GRACEFULLY);
        let drained = tokio::spawn({
            let set = set.clone();
            async move { set.drained().await }
        });
        drop((a, late));
        assert_eq!(set.len(), 1);
        drop(b);
        drained.await.unwrap();
        assert!(set.is_empty());
    }

    #[test]
    fn serving_holds_the_connection_future_once() {
        // An `async fn` would keep a second slot for its moved argument.
        let connection = async {
            let state = [1u8; 4096];
            std::future::pending::<()>().await;
            state.iter().map(|&b| u32::from(b)).sum::<u32>()
        };
        let size = std::mem::size_of_val(&connection);
        assert!(size > 4096);
        let set = Connections::new();
        let served = set.open().serve(connection, |_| {});
        assert!(std::mem::size_of_val(&served) < size + 64);
    }

    #[tokio::test]
    async fn serving_shuts_down_gracefully_once_then_drops() {
        let set = Connections::new();
        let connection = set.open();
        let state = connection.state.clone();
        let mut graceful_calls = 0;
        {
            let mut served = std::pin::pin!(
                connection.serve(std::future::pending::<()>(), |_| graceful_calls += 1)
            );
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(served.as_mut().poll(&mut cx).is_pending());
            state.signal(CLOSE_GRACEFULLY);
            assert!(served.as_mut().poll(&mut cx).is_pending());
            assert!(served.as_mut().poll(&mut cx).is_pending());
            state.signal(DROP);
            assert_eq!(served.as_mut().poll(&mut cx), Poll::Ready(None));
        }
        assert_eq!(graceful_calls, 1);
        assert!(set.is_empty());
    }
}
