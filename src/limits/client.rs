//! Per-client rate limits: GCRA (governor) with each client's
//! `rate_limit = { requests_per_second, burst }`.
//!
//! The layer sits right below authentication, so every authenticated
//! request of a limited client costs one cell — cache hits, coalesced
//! waiters and requests refused further down (403) included. Over the
//! limit the request is answered 429 with `Retry-After` (whole seconds, at
//! least 1, from governor's own wait time) and goes no further.
//!
//! Every response to a limited client carries the rate-limit headers of
//! draft-ietf-httpapi-ratelimit-headers-09 and the older `X-RateLimit-*`
//! trio most clients read:
//!
//! ```text
//! RateLimit-Policy: "client";q=5;w=1
//! RateLimit: "client";r=3;t=1
//! X-RateLimit-Limit: 5
//! X-RateLimit-Remaining: 3
//! X-RateLimit-Reset: 1
//! ```
//!
//! `q` and `X-RateLimit-Limit` are the burst; `w` is the time the burst
//! takes to refill (burst ÷ rate, rounded up); `r` and `Remaining` are the
//! cells left after this request; `t` and `Reset` are the seconds until the
//! full burst is available again.
//!
//! Limiter state exists only for configured clients with a `rate_limit`,
//! created at startup: no request, authenticated or not, creates any.

use std::collections::HashMap;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::metrics::{LimitMetrics, Reason};
use crate::body::{Body, BoxError};
use crate::config::{ClientConfig, FailMode, RateLimit};
use crate::context::AuthenticatedClient;
use crate::error::{self, GatewayError};
use crate::redis::{Bucket, Shared};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-09).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-09).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `X-RateLimit-Limit`.
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

type Gcra = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// One client's limiter and its fixed header values.
struct ClientLimiter {
    /// The configured limit, to tell on reload whether it changed.
    config: RateLimit,
    gcra: Gcra,
    clock: DefaultClock,
    burst: u32,
    /// Time one cell takes to come back.
    interval: Duration,
    policy: HeaderValue,
    limit: HeaderValue,
}

impl ClientLimiter {
    fn new(limit: RateLimit) -> Self {
        let quota = Quota::per_second(limit.requests_per_second).allow_burst(limit.burst);
        let clock = DefaultClock::default();
        let burst = limit.burst.get();
        let interval = quota.replenish_interval();
        let window = ceil_secs(interval * burst).max(1);
        Self {
            config: limit,
            gcra: RateLimiter::direct_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            clock,
            burst,
            interval,
            policy: HeaderValue::from_str(&format!("\"client\";q={burst};w={window}"))
                .unwrap_or_else(|_| HeaderValue::from_static("\"client\"")),
            limit: HeaderValue::from(burst),
        }
    }

    fn check(&self, client: &str) -> Decision {
        match self.gcra.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(self.burst);
                Decision::Allowed(self.headers(remaining, self.refill(remaining, Duration::ZERO)))
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let retry_after_secs = ceil_secs(wait).max(1);
                Decision::Limited {
                    headers: self.headers(0, self.refill(0, wait)),
                    error: GatewayError::RateLimited {
                        message: format!("rate limit exceeded for client {client}"),
                        retry_after_secs,
                    },
                }
            }
        }
    }

    /// Seconds until the whole burst is back: `wait` for the next cell,
    /// then one interval for each other missing cell.
    fn refill(&self, remaining: u32, wait: Duration) -> u64 {
        let missing = self.burst.saturating_sub(remaining);
        let rest = self.interval * missing.saturating_sub(u32::from(!wait.is_zero()));
        ceil_secs(wait + rest)
    }

    fn headers(&self, remaining: u32, reset: u64) -> QuotaHeaders {
        QuotaHeaders {
            policy: self.policy.clone(),
            limit: self.limit.clone(),
            remaining,
            reset,
        }
    }
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0))
}

/// The rate-limit headers of one response to a limited client.
#[derive(Clone, Debug)]
pub struct QuotaHeaders {
    policy: HeaderValue,
    limit: HeaderValue,
    remaining: u32,
    reset: u64,
}

impl QuotaHeaders {
    /// Sets the five headers on `headers`, replacing any from upstream: the
    /// client is told about the gateway's limit, not the organisation's.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY.clone(), self.policy.clone());
        if let Ok(value) =
            HeaderValue::from_str(&format!("\"client\";r={};t={}", self.remaining, self.reset))
        {
            headers.insert(RATELIMIT.clone(), value);
        }
        headers.insert(X_RATELIMIT_LIMIT.clone(), self.limit.clone());
        headers.insert(
            X_RATELIMIT_REMAINING.clone(),
            HeaderValue::from(self.remaining),
        );
        headers.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(self.reset));
    }
}

/// The outcome of one check.
enum Decision {
    Allowed(QuotaHeaders),
    Limited {
        headers: QuotaHeaders,
        error: GatewayError,
    },
}

/// The limiters of the clients that have a `rate_limit`. Rebuilt on a
/// config reload ([`ClientLimits::reloaded`]), keeping the state of every
/// client whose limit did not change.
pub struct ClientLimits {
    limiters: HashMap<String, Arc<ClientLimiter>>,
    metrics: Arc<LimitMetrics>,
}

impl std::fmt::Debug for ClientLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimits")
            .field("limited_clients", &self.limiters.len())
            .finish_non_exhaustive()
    }
}

impl ClientLimits {
    /// One limiter per client with a `rate_limit`; the others have none.
    pub fn new<'a>(
        clients: impl IntoIterator<Item = &'a ClientConfig>,
        metrics: Arc<LimitMetrics>,
    ) -> Self {
        let limiters = clients
            .into_iter()
            .filter_map(|c| Some((c.name.clone(), Arc::new(ClientLimiter::new(c.rate_limit?)))))
            .collect();
        Self { limiters, metrics }
    }

    /// The limiters for a reloaded client list: a client whose name and
    /// `rate_limit` are unchanged keeps its limiter (and so its spent
    /// burst); new or changed limits start fresh; removed clients go.
    pub fn reloaded<'a>(&self, clients: impl IntoIterator<Item = &'a ClientConfig>) -> Self {
        let limiters = clients
            .into_iter()
            .filter_map(|c| {
                let limit = c.rate_limit?;
                let limiter = match self.limiters.get(&c.name) {
                    Some(old) if old.config == limit => old.clone(),
                    _ => Arc::new(ClientLimiter::new(limit)),
                };
                Some((c.name.clone(), limiter))
            })
            .collect();
        Self {
            limiters,
            metrics: self.metrics.clone(),
        }
    }

    /// How many limiters exist: one per limited client, never more.
    pub fn len(&self) -> usize {
        self.limiters.len()
    }

    /// True when no client is limited.
    pub fn is_empty(&self) -> bool {
        self.limiters.is_empty()
    }

    fn check(&self, client: &str) -> Option<Decision> {
        let decision = self.limiters.get(client)?.check(client);
        if matches!(decision, Decision::Limited { .. }) {
            self.metrics.count(Some(client), Reason::ClientLimit);
        }
        Some(decision)
    }

    /// Like `check`, with the limit shared by every replica through Redis;
    /// while Redis is unavailable, `fail_mode` decides.
    async fn check_shared(
        &self,
        shared: &Shared,
        fail_mode: FailMode,
        client: &str,
    ) -> Option<Decision> {
        let limiter = self.limiters.get(client)?;
        let step = shared
            .gcra(Bucket::Client(client), limiter.interval, limiter.burst)
            .await;
        let decision = match step {
            Some(step) if step.allowed => Decision::Allowed(
                limiter.headers(step.remaining.min(limiter.burst), ceil_secs(step.reset)),
            ),
            Some(step) => Decision::Limited {
                headers: limiter.headers(0, ceil_secs(step.reset)),
                error: GatewayError::RateLimited {
                    message: format!("rate limit exceeded for client {client}"),
                    retry_after_secs: ceil_secs(step.wait).max(1),
                },
            },
            None => {
                shared.fell_back();
                match fail_mode {
                    FailMode::Local => limiter.check(client),
                    FailMode::Open => Decision::Allowed(limiter.headers(limiter.burst, 0)),
                }
            }
        };
        if matches!(decision, Decision::Limited { .. }) {
            self.metrics.count(Some(client), Reason::ClientLimit);
        }
        Some(decision)
    }
}

/// The client limits in force, swapped on reload.
pub type SharedClientLimits = Arc<ArcSwap<ClientLimits>>;

/// Layer for [`ClientLimit`].
#[derive(Clone, Debug)]
pub struct ClientLimitLayer {
    limits: SharedClientLimits,
    shared: Option<(Arc<Shared>, FailMode)>,
}

impl ClientLimitLayer {
    /// Enforces the limits in force, in this replica.
    pub fn new(limits: SharedClientLimits) -> Self {
        Self {
            limits,
            shared: None,
        }
    }

    /// Enforces them across replicas through Redis when `shared` is set.
    pub fn shared(mut self, shared: Option<Arc<Shared>>, fail_mode: FailMode) -> Self {
        self.shared = shared.map(|shared| (shared, fail_mode));
        self
    }
}

impl<S> Layer<S> for ClientLimitLayer {
    type Service = ClientLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientLimit {
            inner,
            limits: self.limits.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// Applies the authenticated client's rate limit and adds the rate-limit
/// headers to its responses.
#[derive(Clone, Debug)]
pub struct ClientLimit<S> {
    inner: S,
    limits: SharedClientLimits,
    shared: Option<(Arc<Shared>, FailMode)>,
}

impl<S, B> Service<Request<B>> for ClientLimit<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some((shared, fail_mode)) = &self.shared {
            let limits = self.limits.load_full();
            let client = AuthenticatedClient::of(&request)
                .filter(|client| limits.limiters.contains_key(&client.0.name))
                .map(|client| client.0.clone());
            if let Some(client) = client {
                // The limit lives in Redis: decide there, then call inside.
                let ready = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, ready);
                let (shared, fail_mode) = (shared.clone(), *fail_mode);
                return ResponseFuture::boxed(shared_call(
                    limits, shared, fail_mode, client, inner, request,
                ));
            }
        }
        let decision = AuthenticatedClient::of(&request)
            .and_then(|client| self.limits.load().check(&client.0.name));
        match decision {
            None => ResponseFuture::inner(self.inner.call(request), None),
            Some(Decision::Allowed(headers)) => {
                ResponseFuture::inner(self.inner.call(request), Some(headers))
            }
            Some(Decision::Limited { headers, error }) => {
                let mut response = error.into_response();
                headers.apply(response.headers_mut());
                ResponseFuture::early(response)
            }
        }
    }
}

/// A request of a limited client when the limit is shared through Redis.
fn shared_call<S, B>(
    limits: Arc<ClientLimits>,
    shared: Arc<Shared>,
    fail_mode: FailMode,
    client: Arc<ClientConfig>,
    mut inner: S,
    request: Request<B>,
) -> BoxFuture<'static, Result<Response<Body>, BoxError>>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    Box::pin(async move {
        match limits.check_shared(&shared, fail_mode, &client.name).await {
            Some(Decision::Limited { headers, error }) => {
                let mut response = error.into_response();
                headers.apply(response.headers_mut());
                Ok(response)
            }
            Some(Decision::Allowed(headers)) => {
                ResponseFuture::inner(inner.call(request), Some(headers)).await
            }
            None => inner.call(request).await,
        }
    })
}

pin_project! {
    /// The future of [`ClientLimit`]: the 429 at once, or the inner call
    /// with the headers added to whatever it answers.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Early { response: Option<Response<Body>> },
        Inner { #[pin] future: F, headers: Option<QuotaHeaders> },
        Boxed { future: BoxFuture<'static, Result<Response<Body>, BoxError>> },
    }
}

impl<F> ResponseFuture<F> {
    fn early(response: Response<Body>) -> Self {
        Self {
            kind: Kind::Early {
                response: Some(response),
            },
        }
    }

    fn inner(future: F, headers: Option<QuotaHeaders>) -> Self {
        Self {
            kind: Kind::Inner { future, headers },
        }
    }

    fn boxed(future: BoxFuture<'static, Result<Response<Body>, BoxError>>) -> Self {
        Self {
            kind: Kind::Boxed { future },
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Early { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Ready(Err(GatewayError::Internal("polled after completion").into())),
            },
            KindProj::Boxed { future } => future.as_mut().poll(cx),
            KindProj::Inner { future, headers } => {
                let result = std::task::ready!(future.poll(cx));
                let Some(headers) = headers.take() else {
                    return Poll::Ready(result);
                };
                // Errors from below become their response here rather than
                // at the top, so that they carry the headers too.
                let mut response = match error::into_response(result) {
                    Ok(response) => response,
                    Err(error) => return Poll::Ready(Err(error)),
                };
                headers.apply(response.headers_mut());
                Poll::Ready(Ok(response))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use std::num::NonZeroU32;
    use tower::{service_fn, ServiceExt};

    fn client(name: &str, limit: Option<(u32, u32)>) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            key_sha256: [0; 32],
            namespace: "ns".into(),
            allowed_namespaces: vec!["ns".into()],
            rate_limit: limit.map(|(rps, burst)| RateLimit {
                requests_per_second: NonZeroU32::new(rps).unwrap(),
                burst: NonZeroU32::new(burst).unwrap(),
            }),
            max_in_flight: None,
        }
    }

    fn limits(clients: &[ClientConfig]) -> (SharedClientLimits, Arc<LimitMetrics>) {
        let metrics = Arc::new(LimitMetrics::new(clients.iter().map(|c| c.name.as_str())));
        (
            Arc::new(ArcSwap::from_pointee(ClientLimits::new(
                clients,
                metrics.clone(),
            ))),
            metrics,
        )
    }

    #[test]
    fn reload_keeps_state_of_unchanged_limits_only() {
        let a = client("team-a", Some((1, 2)));
        let b = client("team-b", Some((1, 2)));
        let (limits, _) = limits(&[a.clone(), b.clone()]);
        let old = limits.load();
        // Spend team-a's burst.
        for _ in 0..2 {
            assert!(matches!(old.check("team-a"), Some(Decision::Allowed(_))));
        }
        assert!(matches!(
            old.check("team-a"),
            Some(Decision::Limited { .. })
        ));
        let changed_b = client("team-b", Some((5, 5)));
        let new_c = client("team-c", Some((1, 1)));
        let fresh = old.reloaded([&a, &changed_b, &new_c]);
        // Unchanged: still spent. Changed and new: fresh. Removed: none.
        assert!(matches!(
            fresh.check("team-a"),
            Some(Decision::Limited { .. })
        ));
        assert!(matches!(fresh.check("team-b"), Some(Decision::Allowed(_))));
        assert!(matches!(fresh.check("team-c"), Some(Decision::Allowed(_))));
        assert_eq!(fresh.len(), 3);
        let without = fresh.reloaded([&a]);
        assert!(without.check("team-b").is_none());
    }

    fn request(client: Option<&ClientConfig>) -> Request<()> {
        let mut request = Request::get("/v1/x").body(()).unwrap();
        if let Some(client) = client {
            AuthenticatedClient(Arc::new(client.clone())).attach_to(&mut request);
        }
        request
    }

    async fn call(limits: &SharedClientLimits, request: Request<()>) -> Response<Body> {
        let inner =
            service_fn(|_: Request<()>| async { Ok::<_, BoxError>(Response::new(body::empty())) });
        ClientLimitLayer::new(limits.clone())
            .layer(inner)
            .oneshot(request)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn burst_then_429_with_retry_after_and_headers() {
        let limited = client("team-a", Some((1, 2)));
        let (limits, metrics) = limits(std::slice::from_ref(&limited));
        let first = call(&limits, request(Some(&limited))).await;
        assert_eq!(first.status(), 200);
        let h = first.headers();
        assert_eq!(h["ratelimit-policy"], "\"client\";q=2;w=2");
        assert_eq!(h["ratelimit"], "\"client\";r=1;t=1");
        assert_eq!(h["x-ratelimit-limit"], "2");
        assert_eq!(h["x-ratelimit-remaining"], "1");
        assert_eq!(h["x-ratelimit-reset"], "1");
        let second = call(&limits, request(Some(&limited))).await;
        assert_eq!(second.status(), 200);
        assert_eq!(second.headers()["x-ratelimit-remaining"], "0");
        let third = call(&limits, request(Some(&limited))).await;
        assert_eq!(third.status(), 429);
        let h = third.headers();
        assert_eq!(h["retry-after"], "1");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert_eq!(h["ratelimit"], "\"client\";r=0;t=2");
        assert_eq!(metrics.limited(Some("team-a"), Reason::ClientLimit), 1);
    }

    #[tokio::test]
    async fn unlimited_and_unauthenticated_requests_pass_without_headers() {
        let free = client("free", None);
        let (limits, _) = limits(&[free.clone(), client("x", Some((1, 1)))]);
        assert_eq!(limits.load().len(), 1);
        for _ in 0..5 {
            for request in [request(Some(&free)), request(None)] {
                let response = call(&limits, request).await;
                assert_eq!(response.status(), 200);
                assert!(response.headers().get("x-ratelimit-limit").is_none());
            }
        }
        // No request created limiter state.
        assert_eq!(limits.load().len(), 1);
    }

    #[tokio::test]
    async fn errors_below_get_the_headers_too() {
        let limited = client("team-a", Some((10, 10)));
        let (limits, _) = limits(std::slice::from_ref(&limited));
        let inner = service_fn(|_: Request<()>| async {
            Err::<Response<Body>, BoxError>(GatewayError::GatewayTimeout.into())
        });
        let response = ClientLimitLayer::new(limits)
            .layer(inner)
            .oneshot(request(Some(&limited)))
            .await
            .unwrap();
        assert_eq!(response.status(), 504);
        assert_eq!(response.headers()["x-ratelimit-remaining"], "9");
    }

    #[tokio::test]
    async fn a_413_keeps_its_headers_through_the_top_of_the_stack() {
        let limited = client("team-a", Some((10, 10)));
        let (limits, _) = limits(std::slice::from_ref(&limited));
        let inner = service_fn(|_: Request<()>| async {
            Err::<Response<Body>, BoxError>(GatewayError::PayloadTooLarge.into())
        });
        let response = ClientLimitLayer::new(limits)
            .layer(inner)
            .oneshot(request(Some(&limited)))
            .await;
        let response = error::into_response(response).unwrap();
        assert_eq!(response.status(), 413);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["x-ratelimit-limit"], "10");
    }

    #[test]
    fn rounds_up_to_whole_seconds() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
