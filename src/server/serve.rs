//! Accepting connections and serving the stack on them: HTTP/1.1 and HTTP/2
//! (prior knowledge) on one port, with graceful shutdown.
//!
//! On shutdown the listener closes, `/_gateway/ready` turns 503, and
//! connections get `server.shutdown_grace` to finish what they are serving.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::body::BoxError;
use crate::config::Config;
use crate::context::RequestContext;
use crate::server::balance::{Handoff, Load, WorkerLoads};
use crate::server::connections::{Connection, Connections};
use crate::server::head_errors::HeadErrorBodies;
use crate::server::send_timeout::SendTimeout;
use crate::stack::{self, AppState};

/// Readiness events one thread of the work-stealing runtime takes from the
/// OS per poll (tokio's default: 1024). Under load a thread that polls
/// takes every ready connection at once, more than its own queue holds
/// (256), and the rest spill to the shared queue; in small batches the
/// other thread polls the next ones itself. Measured on 2 shared cores at
/// 256 connections (benches/RESULTS.md): p99 5.9 ms against 8.1 ms with
/// the default, at the same throughput.
const WORK_STEALING_IO_EVENTS_PER_TICK: usize = 16;

/// Time allowed for a client's TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the gateway on `listener` until `shutdown` resolves, then drains:
/// `/_gateway/ready` turns 503, the listener closes, and in-flight requests
/// (streams included) get `server.shutdown_grace_ms` to finish.
///
/// Connections are served by `server.workers` threads, each running its own
/// single-threaded runtime and accepting from the same listening socket —
/// the nginx/Envoy worker model: the accepting worker deals each connection
/// to the worker serving the fewest ([`crate::server::balance`]), where it stays,
/// so its requests never hop between cores. Tasks a request
/// spawns (an upstream call shared by waiters) run on its thread too; the
/// calling runtime keeps the signal handling and background work.
///
/// With `server.work_stealing` (Pingora's option of the same name) the
/// threads are instead one tokio work-stealing runtime with one accept
/// loop: any thread serves any connection's next request, so a thread the
/// kernel preempts does not hold its connections' requests until it runs
/// again (a shorter latency tail when the cores are shared), at the cost
/// of connections' tasks moving between cores (fewer requests per second
/// at many connections; benches/RESULTS.md).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let tls = match &state.config.server.tls {
        Some(files) => Some(TlsAcceptor::from(
            crate::config::tls::server_config(&files.cert_file, &files.key_file)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        )),
        None => None,
    };
    let listener = listener.into_std()?;
    let connections = Connections::new();
    let sweeper = tokio::spawn(
        connections
            .clone()
            .sweep_every(state.config.server.idle_timeout),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    let mut listening = Vec::new();
    let threads = state.config.server.workers;
    let work_stealing = state.config.server.work_stealing;
    // Accept loops: one per thread, or the one of the work-stealing runtime.
    let count = if work_stealing { 1 } else { threads.get() };
    let mut stealing = None;
    let loads = WorkerLoads::new(count);
    let watched = loads.clone();
    state.metrics.watch_workers(move || watched.snapshot());
    let (peers, mut handoffs): (Vec<_>, Vec<_>) =
        (0..count).map(|_| mpsc::unbounded_channel()).unzip();
    let peers: Arc<[mpsc::UnboundedSender<Handoff>]> = peers.into();
    for (index, handoffs) in handoffs.drain(..).enumerate() {
        // Each worker keeps its own pool of upstream connections, so a
        // forwarded call is written and read on the thread that serves its
        // client instead of waking another thread twice per call.
        let worker_state = AppState {
            upstream: state.upstream.with_own_pool(),
            ..state.clone()
        };
        let worker = Worker {
            index,
            loads: loads.clone(),
            peers: peers.clone(),
            handoffs,
            app: stack::app(&worker_state),
            tls: tls.clone(),
            connections: connections.clone(),
            stopped: stopped.clone(),
            stopped_listening: {
                let (sender, receiver) = oneshot::channel();
                listening.push(receiver);
                sender
            },
            grace: state.config.server.shutdown_grace,
            send_timeout: state.config.server.send_timeout,
            max_connections: state.config.server.max_connections,
            metrics: state.metrics.clone(),
        };
        let (done, finished) = oneshot::channel::<()>();
        let worker_loads = loads.clone();
        let worker_listener = listener.try_clone()?;
        workers.push(finished);
        if work_stealing {
            stealing = Some(move || {
                worker.serve_work_stealing(threads, worker_listener, &worker_loads, done)
            });
            continue;
        }
        std::thread::Builder::new()
            .name(format!("gateway-worker-{index}"))
            .spawn(move || {
                // Its own stripe of every per-request counter.
                crate::striped::set_thread_stripe(index);
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(worker.run(worker_listener)),
                    Err(error) => tracing::error!(%error, "cannot start a worker runtime"),
                }
                // However it ended, no more connections are dealt to it.
                worker_loads.retire(index);
                let _ = done.send(());
            })?;
    }
    drop(listener);
    if let Some(serve) = stealing {
        std::thread::Builder::new()
            .name("gateway-runtime".into())
            .spawn(serve)?;
    }

    shutdown.await;
    state.readiness.set_draining();
    let _ = stop.send(true);
    // Once every worker has closed its copy of the listening socket, new
    // connections are refused.
    for closed in listening {
        let _ = closed.await;
    }
    let grace = state.config.server.shutdown_grace;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    connections.drain();
    tokio::select! {
        () = connections.drained() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace period expired"),
    }
    // Each worker stops once its listener is closed and its connections
    // are gone or the grace period is over.
    for worker in workers {
        let _ = worker.await;
    }
    sweeper.abort();
    Ok(())
}

/// A connection's copy of the stack, as hyper's service.
///
/// hyper-util's `TowerToHyperService` clones the whole stack for every
/// request (hyper calls services through `&self`, tower through `&mut
/// self`): a dozen shared `Arc`s incremented and decremented per request,
/// reference counts that every worker thread writes. Here each connection
/// owns one copy and calls it in place; a stack that is not ready at once
/// (none of its layers applies backpressure today) gets a clone that waits
/// for readiness, as before.
///
/// Every request also gets its [`RequestContext`], holding the peer's
/// address for the guards keyed by IP.
struct ConnectionService<S> {
    inner: std::cell::RefCell<S>,
    peer: SocketAddr,
}

impl<S> ConnectionService<S> {
    fn new(inner: S, peer: SocketAddr) -> Self {
        Self {
            inner: std::cell::RefCell::new(inner),
            peer,
        }
    }
}

type ConnectionFuture<S, R> = futures_util::future::Either<
    <S as tower::Service<R>>::Future,
    futures_util::future::Either<
        tower::util::Oneshot<S, R>,
        std::future::Ready<Result<<S as tower::Service<R>>::Response, BoxError>>,
    >,
>;

impl<S, B> hyper::service::Service<Request<B>> for ConnectionService<S>
where
    S: tower::Service<Request<B>, Error = BoxError> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ConnectionFuture<S, Request<B>>;

    fn call(&self, mut request: Request<B>) -> Self::Future {
        use futures_util::future::Either;
        request
            .extensions_mut()
            .insert(RequestContext::with_peer(self.peer));
        // hyper never calls re-entrantly and the futures borrow nothing, so
        // the borrow is always free; were it not, this answers an error
        // (which hyper turns into a closed HTTP/1 connection or a reset
        // HTTP/2 stream) instead of panicking.
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            return Either::Right(Either::Right(std::future::ready(Err(
                "connection service busy".into(),
            ))));
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match inner.poll_ready(&mut cx) {
            std::task::Poll::Ready(Ok(())) => Either::Left(inner.call(request)),
            _ => Either::Right(Either::Left(tower::ServiceExt::oneshot(
                inner.clone(),
                request,
            ))),
        }
    }
}

/// One serving thread's share of the server: an accept loop and the
/// connections it serves (with `server.work_stealing`, the only one, on a
/// runtime of all the threads).
struct Worker<A> {
    /// Its place in `loads` and `peers`.
    index: usize,
    /// Connections per worker, for spreading them evenly.
    loads: Arc<WorkerLoads>,
    /// Every worker's handoff channel, this one's included.
    peers: Arc<[mpsc::UnboundedSender<Handoff>]>,
    /// Connections other workers accepted for this one.
    handoffs: mpsc::UnboundedReceiver<Handoff>,
    app: A,
    tls: Option<TlsAcceptor>,
    connections: Arc<Connections>,
    stopped: tokio::sync::watch::Receiver<bool>,
    /// Told when this worker has closed its listening socket.
    stopped_listening: oneshot::Sender<()>,
    grace: Duration,
    /// `server.send_timeout`.
    send_timeout: Duration,
    /// `server.max_connections`, over all workers.
    max_connections: usize,
    metrics: Arc<crate::telemetry::metrics::Metrics>,
}

impl<A, B> Worker<A>
where
    A: tower::Service<Request<Incoming>, Response = http::Response<B>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    A::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes, Error = BoxError> + Send + 'static,
{
    /// Accepts until stopped, then waits for this thread's connections for
    /// at most the grace period.
    async fn run(mut self, listener: std::net::TcpListener) {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "worker cannot use the listener");
                return;
            }
        };
        let builder = auto::Builder::new(TokioExecutor::new());
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            // The branches only say what happened: `self` is still borrowed
            // by the select's futures until it returns.
            let arrival = tokio::select! {
                accepted = listener.accept() => Arrival::Accepted(accepted),
                Some(handoff) = self.handoffs.recv() => Arrival::HandedOff(handoff),
                _ = self.stopped.wait_for(|stopped| *stopped) => break,
            };
            let assigned = match arrival {
                Arrival::HandedOff(handoff) => take_over(handoff),
                Arrival::Accepted(Ok((stream, peer))) => self.assign(stream, peer),
                Arrival::Accepted(Err(error)) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some((stream, peer, load)) = assigned else {
                continue;
            };
            // Reap finished connection tasks so the set stays small.
            while tasks.try_join_next().is_some() {}
            self.spawn_connection(&mut tasks, &builder, stream, peer, load);
        }
        drop(listener);
        // No more connections are dealt to this worker; those already
        // handed to it (a send may be under way as it closes: `recv` waits
        // for it, `try_recv` would not) are served, and closed by the drain
        // like every other. Later handoffs fail and stay with the worker
        // that accepted them.
        self.loads.retire(self.index);
        self.handoffs.close();
        while let Some(handoff) = self.handoffs.recv().await {
            if let Some((stream, peer, load)) = take_over(handoff) {
                self.spawn_connection(&mut tasks, &builder, stream, peer, load);
            }
        }
        let _ = self.stopped_listening.send(());
        let grace = tokio::time::sleep(self.grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                joined = tasks.join_next() => if joined.is_none() { break },
                () = &mut grace => break,
            }
        }
    }

    /// Runs this (only) worker's accept loop on a work-stealing runtime of
    /// `threads` threads, blocking the calling thread until it ends.
    fn serve_work_stealing(
        self,
        threads: std::num::NonZeroUsize,
        listener: std::net::TcpListener,
        loads: &WorkerLoads,
        done: oneshot::Sender<()>,
    ) {
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.get())
            .thread_name("gateway-worker")
            .on_thread_start(move || {
                // Each thread its own stripe of every per-request counter.
                let index = started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                crate::striped::set_thread_stripe(index % threads.get());
            })
            .enable_all()
            .max_io_events_per_tick(WORK_STEALING_IO_EVENTS_PER_TICK)
            .build();
        match runtime {
            Ok(runtime) => runtime.block_on(self.run_spawned(listener)),
            Err(error) => tracing::error!(%error, "cannot start the serving runtime"),
        }
        loads.retire(0);
        let _ = done.send(());
    }

    /// [`run`](Self::run) as a task of the runtime rather than its
    /// `block_on` future, which no worker thread would poll.
    async fn run_spawned(self, listener: std::net::TcpListener) {
        if let Err(error) = tokio::spawn(self.run(listener)).await {
            tracing::error!(%error, "the accept loop failed");
        }
    }

    /// Serves a connection on this worker, counted by `load` until it ends.
    fn spawn_connection(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        builder: &auto::Builder<TokioExecutor>,
        stream: TcpStream,
        peer: SocketAddr,
        load: Load,
    ) {
        // Past server.max_connections the socket is closed at once (its
        // descriptor freed before a byte is read), as nginx does past
        // worker_connections.
        let Some(connection) = self.connections.try_open(self.max_connections) else {
            self.metrics.connection_refused();
            return;
        };
        let _ = stream.set_nodelay(true);
        // Below TLS: what stalls is the socket.
        let stream = SendTimeout::new(stream, self.send_timeout);
        let service = ConnectionService::new(connection.track(self.app.clone()), peer);
        let builder = builder.clone();
        let tls = self.tls.clone();
        tasks.spawn(async move {
            let _load = load;
            let Some(acceptor) = tls else {
                return serve_connection(&builder, stream, service, connection, peer).await;
            };
            // Boxed: a task's size is that of its largest state, and the TLS
            // one (rustls' session and hyper over it) would double every
            // plain connection's.
            Box::pin(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        serve_connection(&builder, stream, service, connection, peer).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            })
            .await;
        });
    }
}

impl<A> Worker<A> {
    /// Where an accepted connection is served: here (its stream, peer and
    /// count on this worker), or handed to the worker serving the fewest
    /// connections (`None`). A handoff that fails (that worker stopping)
    /// is served here. `None` also when the socket could not be moved
    /// between runtimes (tokio closes it then; logged).
    fn assign(&self, stream: TcpStream, peer: SocketAddr) -> Option<Assigned> {
        let target = self.loads.least_loaded(self.index);
        let Some(channel) = self.peers.get(target).filter(|_| target != self.index) else {
            return Some((stream, peer, self.loads.enter(self.index)));
        };
        let std_stream = match stream.into_std() {
            Ok(std_stream) => std_stream,
            Err(error) => {
                tracing::warn!(%error, "cannot hand off a connection");
                return None;
            }
        };
        let handoff = Handoff {
            stream: std_stream,
            peer,
            load: self.loads.enter(target),
        };
        let returned = channel.send(handoff).err()?.0;
        take_over(Handoff {
            load: self.loads.enter(self.index),
            ..returned
        })
    }
}

/// What woke a worker's accept loop.
enum Arrival {
    /// Its own `accept` on the shared listening socket.
    Accepted(std::io::Result<(TcpStream, SocketAddr)>),
    /// A connection another worker accepted for it.
    HandedOff(Handoff),
}

/// A connection to serve on this worker: its stream, peer and count.
type Assigned = (TcpStream, SocketAddr, Load);

/// Registers a socket accepted on another worker (or taken back from one)
/// with this worker's runtime; `None`, logged, if that fails.
fn take_over(handoff: Handoff) -> Option<Assigned> {
    match TcpStream::from_std(handoff.stream) {
        Ok(stream) => Some((stream, handoff.peer, handoff.load)),
        Err(error) => {
            tracing::warn!(%error, "cannot take over a handed-off connection");
            None
        }
    }
}

/// Serves one accepted connection (plain or after its TLS handshake) until
/// it ends, shutting it down gracefully when the sweeper or a drain asks.
async fn serve_connection<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    stream: I,
    service: ConnectionService<S>,
    connection: Connection,
    peer: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = http::Response<B>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes, Error = BoxError> + Send + 'static,
{
    let served = connection.serve(
        // Above TLS, where hyper's answers to malformed heads are bytes.
        builder.serve_connection_with_upgrades(TokioIo::new(HeadErrorBodies::new(stream)), service),
        |c| c.graceful_shutdown(),
    );
    if let Some(Err(error)) = served.await {
        tracing::debug!(%peer, error = %error, "connection closed with error");
    }
}

/// A gateway running in the background, for `demo` and the tests.
#[derive(Debug)]
pub struct RunningGateway {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its state: config, cache and counters.
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningGateway {
    /// `http://addr` (`https://` when serving TLS).
    pub fn url(&self) -> String {
        let scheme = if self.state.config.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting, drains and waits for the server to finish.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.map_err(std::io::Error::other)?
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Binds `config.server.listen` (port 0 picks a free one) and serves in the
/// background.
pub async fn spawn(config: Config) -> Result<RunningGateway, BoxError> {
    spawn_state(AppState::new(config)?).await
}

/// Like [`spawn`], from a config file that `POST /_gateway/reload` re-reads.
pub async fn spawn_from_file(path: &std::path::Path) -> Result<RunningGateway, BoxError> {
    let config = Config::load(path)?;
    spawn_state(AppState::with_path(config, Some(path.to_path_buf()))?).await
}

async fn spawn_state(state: AppState) -> Result<RunningGateway, BoxError> {
    let listener = TcpListener::bind(state.config.server.listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    Ok(RunningGateway {
        addr,
        state,
        stop: Some(stop),
        task,
    })
}

/// Reloads the clients on every SIGHUP, for the life of the process.
pub fn reload_on_sighup(reloader: std::sync::Arc<crate::admin::reload::Reloader>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload with POST /_gateway/reload");
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading config");
            reloader.reload_logged();
        }
    });
    #[cfg(not(unix))]
    let _ = reloader;
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    /// Answers with the peer it finds in the request context; counts its
    /// clones; is not ready on its first `poll_ready` when `slow`.
    struct Probe {
        clones: Arc<AtomicUsize>,
        polled: bool,
        slow: bool,
    }

    impl Probe {
        fn new(slow: bool) -> (Self, Arc<AtomicUsize>) {
            let clones = Arc::new(AtomicUsize::new(0));
            let probe = Self {
                clones: clones.clone(),
                polled: false,
                slow,
            };
            (probe, clones)
        }
    }

    impl Clone for Probe {
        fn clone(&self) -> Self {
            self.clones.fetch_add(1, Ordering::Relaxed);
            Self {
                clones: self.clones.clone(),
                polled: self.polled,
                slow: self.slow,
            }
        }
    }

    impl tower::Service<Request<()>> for Probe {
        type Response = String;
        type Error = BoxError;
        type Future = std::future::Ready<Result<String, BoxError>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            if self.slow && !self.polled {
                self.polled = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<()>) -> Self::Future {
            let peer = request
                .extensions()
                .get::<RequestContext>()
                .and_then(RequestContext::peer);
            std::future::ready(Ok(format!("{peer:?}")))
        }
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 4321))
    }

    #[tokio::test]
    async fn a_ready_stack_is_called_in_place_with_the_peer_in_context() {
        use hyper::service::Service as _;
        let (probe, clones) = Probe::new(false);
        let service = ConnectionService::new(probe, peer());
        for _ in 0..3 {
            let answer = service.call(Request::new(())).await.unwrap();
            assert_eq!(answer, format!("{:?}", Some(peer())));
        }
        assert_eq!(clones.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_stack_not_ready_at_once_is_awaited_on_a_clone() {
        use hyper::service::Service as _;
        let (probe, clones) = Probe::new(true);
        let service = ConnectionService::new(probe, peer());
        // The first poll_ready is Pending: the call goes to a clone that
        // waits for readiness, and still answers.
        let answer = service.call(Request::new(())).await.unwrap();
        assert_eq!(answer, format!("{:?}", Some(peer())));
        assert_eq!(clones.load(Ordering::Relaxed), 1);
    }
}
