//! One structured log line and one set of metric updates per request.
//!
//! [`ObserveLayer`] sits near the top of the stack. It attaches a
//! [`RequestContext`] to the request, which the layers below fill in as they
//! learn things — authentication the client, the cache layer the route
//! class, the upstream its status and latency — and when the response body
//! has been sent (or the client went away) it writes the access-log line and
//! updates the metrics. Logging when the body ends, not when the head is
//! ready, gives streams (SSE) their real duration.
//!
//! It also gives every request its `X-Request-Id` (the client's when sane,
//! a fresh one otherwise; forwarded upstream, logged, and returned on the
//! response, errors included). One layer does what tower-http's
//! `SetRequestId` and `PropagateRequestId` did as two, without their
//! request extension: the cache-hit path pays for every layer and every
//! extension (see benches/RESULTS.md).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Extensions, HeaderValue, Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use tower::{Layer, Service};

use crate::body::{Body, BoxError};
use crate::cache::status::X_CACHE;
use crate::layers::auth::AuthenticatedClient;
use crate::layers::namespace::EffectiveNamespace;
use crate::layers::request_id::MakeRequestIds;
use crate::telemetry::metrics::{CacheOutcome, ClientLabel, Finished, Metrics, RouteClass};

/// What the layers learn about a request, in its one request extension:
/// the server creates it with the peer's address (the observe layer when
/// there is none: in-process callers); authentication adds the caller,
/// namespace resolution the namespace, and the layers below what the
/// access log reports ([`Observed`]). One extension instead of one per
/// fact: each insert into a request's extension map is a boxed allocation,
/// and a fourth one rehashes the map, on every request.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    peer: Option<SocketAddr>,
    request_id: Option<HeaderValue>,
    caller: Option<AuthenticatedClient>,
    namespace: Option<EffectiveNamespace>,
    observed: Arc<Observed>,
}

impl RequestContext {
    /// The context of a request from `peer`.
    pub fn with_peer(peer: SocketAddr) -> Self {
        Self {
            peer: Some(peer),
            ..Self::default()
        }
    }

    /// The context of a request, if it has one.
    pub fn of(extensions: &Extensions) -> Option<&Self> {
        extensions.get::<Self>()
    }

    /// The context of a request, attached first if it has none.
    pub fn attach<B>(request: &mut Request<B>) -> &mut Self {
        request.extensions_mut().get_or_insert_default::<Self>()
    }

    /// The address the request came from; `None` in process.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The request's `X-Request-Id`, once assigned; when the client did
    /// not send a sane one, it is not in the request's headers.
    pub fn request_id(&self) -> Option<&HeaderValue> {
        self.request_id.as_ref()
    }

    /// Records the request's `X-Request-Id`.
    pub fn set_request_id(&mut self, id: HeaderValue) {
        self.request_id = Some(id);
    }

    /// Records who is calling.
    pub fn set_caller(&mut self, caller: AuthenticatedClient) {
        self.caller = Some(caller);
    }

    /// Who is calling, once authenticated.
    pub fn caller(&self) -> Option<&AuthenticatedClient> {
        self.caller.as_ref()
    }

    /// Records the namespace the request acts in.
    pub fn set_namespace(&mut self, namespace: EffectiveNamespace) {
        self.namespace = Some(namespace);
    }

    /// The namespace the request acts in, once resolved.
    pub fn namespace(&self) -> Option<&EffectiveNamespace> {
        self.namespace.as_ref()
    }

    /// What the access log and metrics will report, shared with the
    /// observe layer (which outlives the request).
    pub fn observed(&self) -> &Arc<Observed> {
        &self.observed
    }
}

/// What the observe layer reports about a request, filled in by the
/// layers below it while the request travels.
#[derive(Debug, Default)]
pub struct Observed {
    client: OnceLock<ClientLabel>,
    route: AtomicU8,
    upstream_status: AtomicU16,
    upstream_micros: AtomicU64,
}

impl Observed {
    /// Records the authenticated client.
    pub fn set_client(&self, label: &ClientLabel) {
        let _ = self.client.set(label.clone());
    }

    /// Records the route class.
    pub fn set_route(&self, route: RouteClass) {
        self.route.store(route as u8 + 1, Ordering::Relaxed);
    }

    /// Records the upstream call this request made (status 0: no response).
    pub fn set_upstream(&self, status: u16, latency: Duration) {
        self.upstream_micros.store(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.upstream_status.store(status, Ordering::Relaxed);
    }

    fn route(&self) -> RouteClass {
        match self.route.load(Ordering::Relaxed) {
            1 => RouteClass::Detail,
            2 => RouteClass::List,
            4 => RouteClass::Gateway,
            _ => RouteClass::Passthrough,
        }
    }

    fn upstream(&self) -> Option<(u16, Duration)> {
        let micros = self.upstream_micros.load(Ordering::Relaxed);
        let status = self.upstream_status.load(Ordering::Relaxed);
        (micros > 0 || status > 0).then(|| (status, Duration::from_micros(micros)))
    }
}

/// Layer for [`Observe`].
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    ids: MakeRequestIds,
}

impl ObserveLayer {
    /// Records into `metrics`; request ids from a fresh generator.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            ids: MakeRequestIds::new(),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: Arc::new(LocalMetrics(self.metrics.clone())),
            ids: self.ids.clone(),
        }
    }
}

/// Logs and measures every request, and gives it its request id.
#[derive(Debug)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<LocalMetrics>,
    ids: MakeRequestIds,
}

/// The metrics behind a reference count of each copy of the service's own.
///
/// Every request holds the metrics until its body ends. Counted on the
/// shared `Arc<Metrics>`, that is two writes per request to one cache line
/// that every core writes. The server clones the stack once per connection
/// and a connection stays on its worker thread, so a count per copy is
/// only ever touched by one core.
#[derive(Debug)]
struct LocalMetrics(Arc<Metrics>);

impl std::ops::Deref for LocalMetrics {
    type Target = Metrics;

    fn deref(&self) -> &Metrics {
        &self.0
    }
}

impl<S: Clone> Clone for Observe<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            metrics: Arc::new(LocalMetrics(self.metrics.0.clone())),
            ids: self.ids.clone(),
        }
    }
}

/// What is known when the request starts.
#[derive(Debug)]
struct PendingState {
    context: Arc<Observed>,
    metrics: Arc<LocalMetrics>,
    method: Method,
    request_id: HeaderValue,
    start: Instant,
}

/// A request not yet recorded. Dropped unrecorded — the client went away
/// before the response head was ready — it is recorded as 499 (nginx's
/// "client closed request"), so the in-flight gauge never drifts and the
/// access log keeps the line.
#[derive(Debug)]
struct Pending(Option<PendingState>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            record(state, 499, CacheOutcome::None, false);
        }
    }
}

impl<S, B> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<ObservedBody>;
    type Error = BoxError;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let request_id = self.ids.assign(request.headers_mut());
        let context = RequestContext::attach(&mut request);
        context.set_request_id(request_id.clone());
        let observed = context.observed().clone();
        if request
            .uri()
            .path()
            .starts_with(crate::admin::endpoints::PREFIX)
        {
            observed.set_route(RouteClass::Gateway);
        }
        self.metrics.started();
        let pending = PendingState {
            context: observed,
            metrics: self.metrics.clone(),
            method: request.method().clone(),
            request_id,
            start: Instant::now(),
        };
        ObserveFuture {
            inner: self.inner.call(request),
            pending: Pending(Some(pending)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Observe`].
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        pending: Pending,
    }
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<ObservedBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        let pending = Pending(this.pending.0.take());
        if let Some(state) = &pending.0 {
            // The upstream's own id, when it sent one, is left as is.
            crate::layers::request_id::set_if_absent(response.headers_mut(), &state.request_id);
        }
        let status = response.status().as_u16();
        let outcome = CacheOutcome::from_header(response.headers().get(&X_CACHE));
        Poll::Ready(Ok(response.map(|body| ObservedBody {
            inner: body,
            done: Some(Done {
                pending,
                status,
                outcome,
            }),
        })))
    }
}

#[derive(Debug)]
struct Done {
    pending: Pending,
    status: u16,
    outcome: CacheOutcome,
}

impl Done {
    fn record(mut self, completed: bool) {
        if let Some(state) = self.pending.0.take() {
            record(state, self.status, self.outcome, completed);
        }
    }
}

/// Writes the access line and updates the metrics for one request.
fn record(state: PendingState, status: u16, outcome: CacheOutcome, completed: bool) {
    let PendingState {
        context,
        metrics,
        method,
        request_id,
        start,
    } = state;
    {
        let finished = Finished {
            client: context.client.get().unwrap_or_else(|| metrics.anonymous()),
            route: context.route(),
            status,
            outcome,
            upstream: context.upstream(),
            latency: start.elapsed(),
        };
        metrics.finished(&finished);
        let (upstream_status, upstream_ms) = finished
            .upstream
            .map_or((0, 0.0), |(s, l)| (s, l.as_secs_f64() * 1000.0));
        tracing::info!(
            target: "access",
            request_id = request_id.to_str().unwrap_or("-"),
            client = finished.client.name(),
            method = method.as_str(),
            route = finished.route.as_str(),
            status = finished.status,
            cache = finished.outcome.as_str(),
            upstream_status,
            upstream_ms,
            latency_ms = finished.latency.as_secs_f64() * 1000.0,
            completed,
            "request"
        );
    }
}

/// The response body, recording the request when it ends or is dropped.
#[derive(Debug)]
pub struct ObservedBody {
    inner: Body,
    done: Option<Done>,
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some(done) = self.done.take() {
                done.record(true);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            // hyper drops a body it has fully sent without polling past its
            // end when the size is known: that is a completed response too.
            let completed = self.inner.is_end_stream();
            done.record(completed);
        }
    }
}
