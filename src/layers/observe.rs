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
use crate::telemetry::access::AccessRecord;
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
        let bodiless = matches!(status, 204 | 304)
            || pending.0.as_ref().is_some_and(|s| s.method == Method::HEAD);
        let remaining = expected_length(&response, bodiless);
        Poll::Ready(Ok(response.map(|body| ObservedBody {
            inner: body,
            remaining,
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
        let (upstream_status, upstream) = finished.upstream.unwrap_or_default();
        crate::telemetry::access::log(&AccessRecord {
            request_id: request_id.to_str().unwrap_or("-"),
            client: finished.client.name(),
            method: method.as_str(),
            route: finished.route.as_str(),
            status: finished.status,
            cache: finished.outcome.as_str(),
            upstream_status,
            upstream,
            latency: finished.latency,
            completed,
        });
    }
}

/// The body bytes the client is to receive: none for a bodiless response
/// (HEAD, 204, 304), else the body's exact size when it knows it (a cache
/// hit: no header is read), else the response's `Content-Length`; `None`
/// when only the end of the stream tells (chunked, SSE).
fn expected_length(response: &Response<Body>, bodiless: bool) -> Option<u64> {
    if bodiless {
        return Some(0);
    }
    response.body().size_hint().exact().or_else(|| {
        response
            .headers()
            .get(http::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    })
}

/// The response body, recording the request when it ends or is dropped.
#[derive(Debug)]
pub struct ObservedBody {
    inner: Body,
    /// Body bytes not yet passed to the server, when the length is known.
    remaining: Option<u64>,
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
        match &polled {
            Poll::Ready(None) => {
                if let Some(done) = self.done.take() {
                    done.record(true);
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(remaining), Some(data)) = (self.remaining, frame.data_ref()) {
                    self.remaining = Some(remaining.saturating_sub(data.len() as u64));
                }
            }
            _ => {}
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
            // end when the size is known (by Content-Length, whatever the
            // inner body says of its own end): a completed response too.
            let completed = self.inner.is_end_stream() || self.remaining == Some(0);
            done.record(completed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http_body_util::{BodyExt, StreamBody};
    use tower::ServiceExt;

    use super::*;

    /// The text the access log writes, captured.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// A streamed body (it cannot tell its own end, as a pass-through body
    /// behind a timeout cannot) under a `Content-Length` of 10.
    fn streamed() -> Response<Body> {
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"01234"))),
            Ok(Frame::data(Bytes::from_static(b"56789"))),
        ];
        let mut response = Response::new(crate::body::boxed(StreamBody::new(
            futures_util::stream::iter(chunks),
        )));
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        response
    }

    /// The access line of one request whose body is read `frames` frames
    /// far and then dropped, as hyper drops a body once it has written
    /// `Content-Length` bytes.
    async fn access_line(method: Method, frames: usize) -> String {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let service = ObserveLayer::new(Arc::new(Metrics::new()))
            .layer(tower::service_fn(|_: Request<()>| async { Ok(streamed()) }));
        let request = Request::builder().method(method).body(()).unwrap();
        let mut body = service.oneshot(request).await.unwrap().into_body();
        for _ in 0..frames {
            body.frame().await.unwrap().unwrap();
        }
        drop(body);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .find(|line| line.contains("access"))
            .unwrap_or_else(|| panic!("no access line in {text}"))
            .to_string()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_body_sent_to_its_content_length_is_completed_and_a_cut_one_is_not() {
        assert!(access_line(Method::GET, 2).await.contains("completed=true"));
        assert!(access_line(Method::GET, 1)
            .await
            .contains("completed=false"));
        assert!(access_line(Method::GET, 0)
            .await
            .contains("completed=false"));
        // A HEAD response has no body to send: delivered with its head.
        assert!(access_line(Method::HEAD, 0)
            .await
            .contains("completed=true"));
    }
}
