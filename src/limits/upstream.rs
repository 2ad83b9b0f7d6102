//! The upstream quota guard: the gateway never spends more of the
//! organisation's Mixpeek quota than it is told to.
//!
//! It sits below the cache layer, just above the upstream timeout, so only
//! calls that actually go upstream pass through it — cache hits and
//! coalesced waiters cost nothing. A call must get, within
//! `upstream.queue_timeout_ms` of arriving:
//!
//! 1. one of `upstream.max_in_flight` slots (a FIFO semaphore), held until
//!    the response body has been read or dropped, then
//! 2. with `upstream.max_requests_per_second`, a cell of a gateway-wide GCRA
//!    (governor; burst = one second's worth). Calls that must wait for a
//!    cell queue in arrival order.
//!
//! A call that cannot get both in time is answered 429 with `Retry-After`
//! and never forwarded. When upstream itself answers 429, its `Retry-After`
//! (seconds or an HTTP date; 1 s when absent, at most an hour) pauses every
//! upstream call: until then, calls that would go upstream are answered 429
//! at once with the time left, while cache hits are still served. A pause
//! is logged once when it begins and once when it ends, and counted.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::client::ceil_secs;
use super::metrics::{LimitMetrics, Reason};
use crate::body::{self, Body, BoxError};
use crate::config::{ClientConfig, UpstreamConfig};
use crate::context::{AuthenticatedClient, SharedCall};
use crate::error::GatewayError;
use crate::redis::{Bucket, Shared};

/// Pause after an upstream 429 that names no (readable) `Retry-After`.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

/// Longest pause an upstream `Retry-After` can impose.
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// The gateway-wide GCRA and the line of calls waiting for it.
struct RateGate {
    gcra: DefaultDirectRateLimiter,
    clock: DefaultClock,
    /// Waiters hold this while they sleep for a cell: tokio's mutex is FIFO,
    /// so cells go out in arrival order.
    line: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
    interval: Duration,
    burst: u32,
    /// With `[redis]`: the gateway-wide rate is one for all replicas.
    shared: std::sync::OnceLock<Arc<Shared>>,
}

impl RateGate {
    fn new(rps: std::num::NonZeroU32) -> Self {
        let quota = Quota::per_second(rps);
        let clock = DefaultClock::default();
        Self {
            gcra: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            line: tokio::sync::Mutex::new(()),
            waiting: AtomicUsize::new(0),
            interval: quota.replenish_interval(),
            burst: rps.get(),
            shared: std::sync::OnceLock::new(),
        }
    }

    /// The cell, taken from the rate all replicas share in Redis; `None`
    /// when Redis is unavailable (the local gate decides).
    async fn acquire_shared(
        &self,
        shared: &Shared,
        deadline: Instant,
    ) -> Option<Result<bool, Duration>> {
        let mut waited = false;
        loop {
            let step = shared
                .gcra(Bucket::Upstream, self.interval, self.burst)
                .await?;
            if step.allowed {
                return Some(Ok(waited));
            }
            if Instant::now() + step.wait > deadline {
                return Some(Err(step.wait));
            }
            let _waiting = Waiting::enter(&self.waiting);
            waited = true;
            tokio::time::sleep(step.wait).await;
        }
    }

    /// Takes a cell by `deadline` (true if it had to wait for it), else
    /// says how long to come back after.
    async fn acquire(&self, deadline: Instant) -> Result<bool, Duration> {
        if let Some(shared) = self.shared.get() {
            if let Some(decided) = self.acquire_shared(shared, deadline).await {
                return decided;
            }
            shared.fell_back();
        }
        if self.waiting.load(Ordering::Acquire) == 0 && self.gcra.check().is_ok() {
            return Ok(false);
        }
        let _waiting = Waiting::enter(&self.waiting);
        let Ok(_turn) = tokio::time::timeout_at(deadline, self.line.lock()).await else {
            // Roughly the time the calls ahead of this one need.
            let ahead = self.waiting.load(Ordering::Acquire).max(1);
            return Err(self.interval * u32::try_from(ahead).unwrap_or(u32::MAX));
        };
        loop {
            match self.gcra.check() {
                Ok(()) => return Ok(true),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    if Instant::now() + wait > deadline {
                        return Err(wait);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// Counts a waiter for as long as it exists (its future may be dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The pause after an upstream 429: an instant as nanoseconds since
/// `base`, 0 when not paused. An atomic, so checking costs no lock.
#[derive(Debug)]
struct Pause {
    base: Instant,
    until: AtomicU64,
}

impl Pause {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Time left, if paused. The first caller to see a pause over logs it.
    fn remaining(&self, now: Instant) -> Option<Duration> {
        let until = self.until.load(Ordering::Acquire);
        if until == 0 {
            return None;
        }
        let now = self.nanos(now);
        if now < until {
            return Some(Duration::from_nanos(until - now));
        }
        if self
            .until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            tracing::info!("upstream pause over: upstream calls resume");
        }
        None
    }

    /// Pauses until `now + duration` (or later, if already paused longer);
    /// true when this begins a new pause.
    fn extend(&self, now: Instant, duration: Duration) -> bool {
        let now = self.nanos(now);
        let until = now.saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        let previous = self.until.fetch_max(until, Ordering::AcqRel);
        previous == 0 || previous <= now
    }
}

/// The guard's shared state.
pub struct UpstreamGuard {
    rate: Option<RateGate>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    /// A client's share of `max_in_flight` unless it sets its own.
    default_share: usize,
    /// Each client's share, by name, with the size it was made for (a
    /// reload that changes it makes a new one).
    shares: std::sync::Mutex<std::collections::HashMap<String, (usize, Arc<Semaphore>)>>,
    queue_timeout: Duration,
    pause: Pause,
    metrics: Arc<LimitMetrics>,
}

impl std::fmt::Debug for UpstreamGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamGuard")
            .field("rate_limited", &self.rate.is_some())
            .field("max_in_flight", &self.max_in_flight)
            .field("queue_timeout", &self.queue_timeout)
            .field("pause", &self.pause)
            .finish_non_exhaustive()
    }
}

impl UpstreamGuard {
    /// The guard for `config`'s `max_requests_per_second`, `max_in_flight`
    /// and `queue_timeout_ms`.
    pub fn new(config: &UpstreamConfig, metrics: Arc<LimitMetrics>) -> Self {
        Self {
            rate: config.max_requests_per_second.map(RateGate::new),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            max_in_flight: config.max_in_flight,
            default_share: config.max_in_flight.div_ceil(2),
            shares: std::sync::Mutex::default(),
            queue_timeout: config.queue_timeout,
            pause: Pause {
                base: Instant::now(),
                until: AtomicU64::new(0),
            },
            metrics,
        }
    }

    /// How long upstream calls stay paused after an upstream 429, if they
    /// are.
    pub fn paused_for(&self) -> Option<Duration> {
        self.pause.remaining(Instant::now())
    }

    /// Upstream calls running right now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    /// Calls waiting for a GCRA cell right now.
    pub fn waiting(&self) -> usize {
        self.rate
            .as_ref()
            .map_or(0, |rate| rate.waiting.load(Ordering::Relaxed))
    }

    fn refuse(&self, client: Option<&str>, reason: Reason, retry_after: Duration) -> GatewayError {
        self.metrics.count(client, reason);
        let why = match reason {
            Reason::Upstream429 => "upstream rate limit reached, upstream calls are paused",
            _ => "upstream call budget exhausted",
        };
        let message = match client {
            Some(name) => format!("{why} (client {name})"),
            None => why.to_string(),
        };
        GatewayError::RateLimited {
            message,
            retry_after_secs: ceil_secs(retry_after).max(1),
        }
    }

    fn refuse_if_paused(&self, client: Option<&str>) -> Result<(), GatewayError> {
        match self.pause.remaining(Instant::now()) {
            Some(left) => Err(self.refuse(client, Reason::Upstream429, left)),
            None => Ok(()),
        }
    }

    /// Shares `upstream.max_requests_per_second` with every replica through
    /// Redis (set once at startup).
    pub fn share_rate(&self, shared: Arc<Shared>) {
        if let Some(rate) = &self.rate {
            let _ = rate.shared.set(shared);
        }
    }

    /// The semaphore of `client`'s share of the in-flight slots.
    fn share_of(&self, client: &ClientConfig) -> Arc<Semaphore> {
        let size = client
            .max_in_flight
            .map_or(self.default_share, std::num::NonZeroUsize::get)
            .min(self.max_in_flight);
        let mut shares = self
            .shares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match shares.get(client.name.as_str()) {
            Some((made_for, share)) if *made_for == size => share.clone(),
            _ => {
                let share = Arc::new(Semaphore::new(size));
                shares.insert(client.name.clone(), (size, share.clone()));
                share
            }
        }
    }

    /// Waits (up to `queue_timeout`) until `client` may make a call
    /// upstream: first a slot of its own share (its `max_in_flight`, or
    /// half of `upstream.max_in_flight`), so that no client can hold every
    /// slot, then one of the gateway's ([`admit`](Self::admit)). A call
    /// that is not the client's alone (`shared`: a flight) takes no share;
    /// refusals still name the client.
    pub async fn admit_client(
        &self,
        client: Option<&ClientConfig>,
        shared: bool,
    ) -> Result<Slot, GatewayError> {
        let start = Instant::now();
        let name = client.map(|c| c.name.as_str());
        self.refuse_if_paused(name)?;
        let mut waited = false;
        let own = match client.filter(|_| !shared) {
            None => None,
            Some(client) => {
                let share = self.share_of(client);
                Some(match share.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => {
                        waited = true;
                        let deadline = start + self.queue_timeout;
                        match tokio::time::timeout_at(deadline, share.acquire_owned()).await {
                            Ok(Ok(permit)) => permit,
                            _ => {
                                return Err(self.refuse(name, Reason::UpstreamGuard, DEFAULT_PAUSE))
                            }
                        }
                    }
                })
            }
        };
        let gateway = self.admit_since(name, start, waited).await?;
        Ok(Slot {
            _gateway: gateway,
            _own: own,
        })
    }

    /// Waits (up to `queue_timeout`) until a call may go upstream; the
    /// permit is its in-flight slot.
    pub async fn admit(&self, client: Option<&str>) -> Result<OwnedSemaphorePermit, GatewayError> {
        self.admit_since(client, Instant::now(), false).await
    }

    /// [`admit`](Self::admit), for a call that arrived at `start`.
    async fn admit_since(
        &self,
        client: Option<&str>,
        start: Instant,
        mut waited: bool,
    ) -> Result<OwnedSemaphorePermit, GatewayError> {
        self.refuse_if_paused(client)?;
        let deadline = start + self.queue_timeout;
        let permit = match self.in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                waited = true;
                match tokio::time::timeout_at(deadline, self.in_flight.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(permit)) => permit,
                    // Slots free up as calls finish: no better estimate.
                    _ => return Err(self.refuse(client, Reason::UpstreamGuard, DEFAULT_PAUSE)),
                }
            }
        };
        if let Some(rate) = &self.rate {
            match rate.acquire(deadline).await {
                Ok(queued) => waited |= queued,
                Err(retry_after) => {
                    return Err(self.refuse(client, Reason::UpstreamGuard, retry_after))
                }
            }
        }
        // Upstream may have answered 429 to another call meanwhile.
        self.refuse_if_paused(client)?;
        self.metrics.admitted_after(if waited {
            start.elapsed()
        } else {
            Duration::ZERO
        });
        Ok(permit)
    }

    /// Upstream answered 429: pause every upstream call for its
    /// `Retry-After`.
    pub fn upstream_throttled(&self, headers: &HeaderMap, client: Option<&str>) {
        self.metrics.count(client, Reason::Upstream429);
        self.metrics.upstream_429s.fetch_add(1, Ordering::Relaxed);
        let pause = retry_after(headers, SystemTime::now())
            .unwrap_or(DEFAULT_PAUSE)
            .clamp(DEFAULT_PAUSE, MAX_PAUSE);
        if self.pause.extend(Instant::now(), pause) {
            self.metrics.pauses.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                pause_secs = ceil_secs(pause),
                "upstream answered 429: pausing all upstream calls"
            );
        }
    }
}

/// Reads `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Layer for [`UpstreamGuardService`].
#[derive(Clone, Debug)]
pub struct UpstreamGuardLayer {
    guard: Arc<UpstreamGuard>,
}

impl UpstreamGuardLayer {
    /// Guards with `guard`.
    pub fn new(guard: Arc<UpstreamGuard>) -> Self {
        Self { guard }
    }
}

impl<S> Layer<S> for UpstreamGuardLayer {
    type Service = UpstreamGuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UpstreamGuardService {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// Admits calls to the service below through the [`UpstreamGuard`].
#[derive(Clone, Debug)]
pub struct UpstreamGuardService<S> {
    inner: S,
    guard: Arc<UpstreamGuard>,
}

impl<S> Service<Request<Body>> for UpstreamGuardService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The instance polled ready makes the call; the clone stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            let client = AuthenticatedClient::of(&request).map(|c| c.0.clone());
            let name = client.as_deref().map(|c| c.name.as_str());
            // A flight serves whoever joined it: no one client's share.
            let shared = request.extensions().get::<SharedCall>().is_some();
            let permit = guard.admit_client(client.as_deref(), shared).await?;
            let response = send(inner, request).await?;
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                guard.upstream_throttled(response.headers(), name);
            }
            Ok(response.map(|body| {
                body::boxed(Held {
                    body,
                    _permit: permit,
                })
            }))
        })
    }
}

/// Calls `inner`. A plain function returning a boxed future on purpose:
/// awaiting `S::Future` inside the async block trips a rustc limitation
/// with higher-ranked lifetimes in `dyn Error` (as in the cache layer).
fn send<S>(
    mut inner: S,
    request: Request<Body>,
) -> BoxFuture<'static, Result<Response<Body>, BoxError>>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    Box::pin(inner.call(request))
}

/// An upstream call's slots: one of the gateway's `max_in_flight` and one
/// of its client's share, both given back when it is dropped.
#[derive(Debug)]
pub struct Slot {
    _gateway: OwnedSemaphorePermit,
    _own: Option<OwnedSemaphorePermit>,
}

/// A response body that keeps its call's in-flight slot until it ends or
/// is dropped.
struct Held {
    body: Body,
    _permit: Slot,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKey;
    use http::HeaderValue;
    use std::num::NonZeroU32;
    use std::sync::atomic::AtomicUsize;
    use tower::{service_fn, ServiceExt};

    fn config(rps: Option<u32>, in_flight: usize, queue_ms: u64) -> UpstreamConfig {
        UpstreamConfig {
            base_url: "http://127.0.0.1:9".parse().unwrap(),
            api_key_env: "K".into(),
            api_key: ApiKey::new("sk").unwrap(),
            timeout: Duration::from_secs(1),
            max_requests_per_second: rps.and_then(NonZeroU32::new),
            queue_timeout: Duration::from_millis(queue_ms),
            max_in_flight: in_flight,
            ca_file: None,
        }
    }

    fn guard(rps: Option<u32>, in_flight: usize, queue_ms: u64) -> Arc<UpstreamGuard> {
        Arc::new(UpstreamGuard::new(
            &config(rps, in_flight, queue_ms),
            Arc::new(LimitMetrics::default()),
        ))
    }

    fn headers(retry_after: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(retry_after).unwrap(),
        );
        headers
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            retry_after(&headers("2"), now),
            Some(Duration::from_secs(2))
        );
        // RFC 9110's example date is 784111777 + 0 s.
        assert_eq!(
            retry_after(
                &headers("Sun, 06 Nov 1994 08:49:37 GMT"),
                now - Duration::from_secs(5)
            ),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_after(
                &headers("Sun, 06 Nov 1994 08:49:37 GMT"),
                now + Duration::from_secs(5)
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[tokio::test]
    async fn in_flight_limit_waits_then_refuses() {
        let guard = guard(None, 1, 50);
        let held = guard.admit(Some("a")).await.unwrap();
        assert_eq!(guard.in_flight(), 1);
        let refused = guard.admit(Some("a")).await.unwrap_err();
        assert!(matches!(
            refused,
            GatewayError::RateLimited {
                retry_after_secs: 1,
                ..
            }
        ));
        assert_eq!(guard.metrics.limited(None, Reason::UpstreamGuard), 1);
        // A slot freed while waiting is taken.
        let waiter = {
            let guard = guard.clone();
            tokio::spawn(async move { guard.admit(None).await.map(drop) })
        };
        tokio::task::yield_now().await;
        drop(held);
        waiter.await.unwrap().unwrap();
        assert_eq!(guard.in_flight(), 0);
    }

    fn client(name: &str, max_in_flight: Option<usize>) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            key_sha256: [0; 32],
            namespace: "ns".into(),
            allowed_namespaces: vec!["ns".into()],
            rate_limit: None,
            max_in_flight: max_in_flight.and_then(std::num::NonZeroUsize::new),
        }
    }

    #[tokio::test]
    async fn no_client_takes_more_than_its_share_of_the_slots() {
        let guard = guard(None, 4, 20);
        let (a, b) = (client("a", None), client("b", None));
        // Half of the four slots by default.
        let held: Vec<Slot> = vec![
            guard.admit_client(Some(&a), false).await.unwrap(),
            guard.admit_client(Some(&a), false).await.unwrap(),
        ];
        assert!(guard.admit_client(Some(&a), false).await.is_err());
        assert_eq!(guard.metrics.limited(None, Reason::UpstreamGuard), 1);
        // Another client still gets the rest.
        let others = [
            guard.admit_client(Some(&b), false).await.unwrap(),
            guard.admit_client(Some(&b), false).await.unwrap(),
        ];
        assert_eq!(guard.in_flight(), 4);
        drop((held, others));
        // A client's own max_in_flight replaces the default share (a
        // reload that changes it takes effect on the next call).
        let wide = client("a", Some(3));
        let held: Vec<Slot> = vec![
            guard.admit_client(Some(&wide), false).await.unwrap(),
            guard.admit_client(Some(&wide), false).await.unwrap(),
            guard.admit_client(Some(&wide), false).await.unwrap(),
        ];
        assert!(guard.admit_client(Some(&wide), false).await.is_err());
        drop(held);
        assert_eq!(guard.in_flight(), 0);
        // A slot of its share freed while it waits is taken.
        let narrow = client("a", Some(1));
        let first = guard.admit_client(Some(&narrow), false).await.unwrap();
        let waiter = {
            let guard = guard.clone();
            let narrow = narrow.clone();
            tokio::spawn(async move { guard.admit_client(Some(&narrow), false).await.map(drop) })
        };
        tokio::task::yield_now().await;
        drop(first);
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn rate_gate_lets_a_burst_through_then_queues() {
        let guard = guard(Some(10), 100, 1000);
        for _ in 0..10 {
            drop(guard.admit(None).await.unwrap());
        }
        let started = std::time::Instant::now();
        drop(guard.admit(None).await.unwrap());
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(LimitMetrics::get(&guard.metrics.queued), 1);
    }

    #[tokio::test]
    async fn rate_gate_refuses_what_cannot_be_served_in_time() {
        let guard = guard(Some(1), 100, 100);
        drop(guard.admit(None).await.unwrap());
        let refused = guard.admit(Some("a")).await.unwrap_err();
        assert!(matches!(
            refused,
            GatewayError::RateLimited {
                retry_after_secs: 1,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_429_pauses_until_retry_after_and_logs_once() {
        let guard = guard(None, 10, 0);
        guard.upstream_throttled(&headers("2"), Some("a"));
        guard.upstream_throttled(&headers("1"), Some("a"));
        assert_eq!(LimitMetrics::get(&guard.metrics.pauses), 1);
        assert_eq!(LimitMetrics::get(&guard.metrics.upstream_429s), 2);
        let Err(GatewayError::RateLimited {
            retry_after_secs,
            message,
        }) = guard.admit(Some("a")).await
        else {
            panic!("paused")
        };
        assert_eq!(retry_after_secs, 2);
        assert!(message.contains("client a"), "{message}");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(guard.admit(None).await.is_err());
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(guard.admit(None).await.is_ok());
        assert_eq!(guard.paused_for(), None);
        // Absent or absurd values: 1 s at least, an hour at most.
        guard.upstream_throttled(&HeaderMap::new(), None);
        assert_eq!(guard.paused_for(), Some(DEFAULT_PAUSE));
        guard.upstream_throttled(&headers("99999999"), None);
        assert_eq!(guard.paused_for(), Some(MAX_PAUSE));
        assert_eq!(LimitMetrics::get(&guard.metrics.pauses), 2);
    }

    #[tokio::test]
    async fn service_holds_the_slot_until_the_body_is_done_and_sees_429s() {
        let guard = guard(None, 1, 0);
        let calls = Arc::new(AtomicUsize::new(0));
        let inner = {
            let calls = calls.clone();
            service_fn(move |_: Request<Body>| {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    let mut response = Response::new(body::full("x"));
                    if n == 1 {
                        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                        response
                            .headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from(30u32));
                    }
                    Ok::<_, BoxError>(response)
                }
            })
        };
        let service = UpstreamGuardLayer::new(guard.clone()).layer(inner);
        let first = service
            .clone()
            .oneshot(Request::new(body::empty()))
            .await
            .unwrap();
        assert_eq!(guard.in_flight(), 1);
        // The slot is taken until the first body goes: the next call is refused.
        assert!(service
            .clone()
            .oneshot(Request::new(body::empty()))
            .await
            .is_err());
        drop(first);
        assert_eq!(guard.in_flight(), 0);
        let throttled = service
            .clone()
            .oneshot(Request::new(body::empty()))
            .await
            .unwrap();
        assert_eq!(throttled.status(), 429);
        drop(throttled);
        let paused = service
            .oneshot(Request::new(body::empty()))
            .await
            .unwrap_err();
        assert!(paused.to_string().contains("paused"), "{paused}");
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        assert!(guard.paused_for().unwrap() > Duration::from_secs(29));
    }

    #[tokio::test]
    async fn a_flight_is_charged_to_no_clients_share() {
        let guard = guard(None, 4, 20);
        let team = Arc::new(client("a", Some(1)));
        let _own = guard.admit_client(Some(&team), false).await.unwrap();
        let inner = service_fn(|_: Request<Body>| async {
            Ok::<_, BoxError>(Response::new(body::full("x")))
        });
        let service = UpstreamGuardLayer::new(guard.clone()).layer(inner);
        let request = |shared: bool| {
            let mut request = Request::new(body::empty());
            AuthenticatedClient(team.clone()).attach_to(&mut request);
            if shared {
                request.extensions_mut().insert(SharedCall);
            }
            request
        };
        // The team is at its share: its own call waits and is refused...
        assert!(service.clone().oneshot(request(false)).await.is_err());
        // ...but a flight it leads (others joined it) is not its alone.
        let flight = service.oneshot(request(true)).await.unwrap();
        assert_eq!(guard.in_flight(), 2);
        drop(flight);
    }
}
