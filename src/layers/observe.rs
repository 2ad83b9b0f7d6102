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

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use tower::{Layer, Service};

use crate::body::{Body, BoxError};
use crate::cache::status::X_CACHE;
use crate::context::{Observed, RequestContext};
use crate::layers::request_id::MakeRequestIds;
use crate::telemetry::metrics::{CacheOutcome, Finished, Metrics, RouteClass};

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
            .starts_with(crate::context::GATEWAY_PREFIX)
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
            crate::context::set_request_id_if_absent(response.headers_mut(), &state.request_id);
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
            client: context.client().unwrap_or_else(|| metrics.anonymous()),
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
