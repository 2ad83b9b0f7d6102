//! The cache and coalescing layer: sits below namespace resolution and above
//! the upstream.
//!
//! - `GET` of an execution detail: a hit is answered from the store
//!   (`X-Cache: HIT`); a miss joins or starts the single flight for its key.
//!   A 200 whose `status` is terminal is stored before the flight ends, so
//!   no request can slip between "flight over" and "entry stored".
//! - `POST` of a list query: the body is read (bounded by the body limit),
//!   canonicalised into the key, and identical queries share one flight. A
//!   body that is not JSON goes upstream alone.
//! - Mutations under a cached path drop what is cached at and below it, in
//!   that namespace (RFC 9111 §4.4), before forwarding and again after a
//!   non-error answer.
//! - Everything else passes straight through (`X-Cache: BYPASS`).
//!
//! The upstream call of a flight runs in its own task and publishes its
//! outcome to every request that joined, so any client — the one that
//! started it included — may disconnect at any time without affecting the
//! others. A response too large to share ([`SHARE_LIMIT`]) is streamed to
//! the request that started the flight; the waiters then call upstream on
//! their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either, TryFutureExt};
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use super::flight::{Flights, Joined};
use super::key::{CacheKey, DetailKey};
use super::metrics::{bump, CacheMetrics, RouteClass};
use super::policy;
use super::route::{self, Route};
use super::store::{Entry, Store};
use crate::body::{self, Body, BoxError};
use crate::cache::status::{CacheStatus, X_CACHE, X_CACHE_TIER};
use crate::config::Config;
use crate::context::EffectiveNamespace;
use crate::context::{RequestContext, SharedCall};
use crate::error::{classify, GatewayError};
use crate::redis::{Invalidation, Lease, Shared, SharedEntry, Waited};

/// Largest response body shared between coalesced requests or cached
/// (16 MiB). Larger ones stream to the request that fetched them.
pub const SHARE_LIMIT: usize = 16 * 1024 * 1024;

/// What a flight ends with.
#[derive(Clone, Debug)]
enum Outcome {
    /// The full response, shared by everyone who joined.
    Shared(Arc<SharedResponse>),
    /// The gateway's own error (timeout, unreachable upstream), shared too.
    Failed(GatewayError),
    /// Too large to share: the leader streams it, waiters retry alone.
    Unshareable,
}

/// A buffered upstream response.
#[derive(Debug)]
struct SharedResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// Answered by another replica's upstream call (through Redis).
    remote: bool,
}

/// Response headers that belong to the request that made the call, not to
/// the others sharing its answer.
const PER_REQUEST_RESPONSE_HEADERS: [&str; 2] = ["x-request-id", "set-cookie"];

/// Request headers that would make the answer depend on the one request
/// that happens to lead a flight: conditionals, ranges, compression.
const PER_REQUEST_REQUEST_HEADERS: [header::HeaderName; 7] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::ACCEPT_ENCODING,
];

impl SharedResponse {
    fn to_response(&self, cache_status: CacheStatus) -> Response<Body> {
        let mut response = Response::new(body::full(self.body.clone()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        *headers = self.headers.clone();
        if cache_status != CacheStatus::Miss {
            for name in PER_REQUEST_RESPONSE_HEADERS {
                headers.remove(name);
            }
        }
        headers.insert(X_CACHE.clone(), cache_status.header_value());
        response
    }
}

/// Whether a flight's result may be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Detail,
    List,
}

/// Everything the layer shares across requests: the store, the flights,
/// the counters and the settings.
#[derive(Debug)]
pub struct CacheState {
    /// The cached entries.
    pub store: Store,
    /// Counters for the metrics endpoint.
    pub metrics: CacheMetrics,
    flights: Arc<Flights<CacheKey, Outcome>>,
    terminal_statuses: Vec<String>,
    list_ttl: Duration,
    detail_ttl: Duration,
    timeout: Duration,
    share_limit: AtomicUsize,
    generations: Generations,
    /// The second tier and cross-replica flights, when `[redis]` is set.
    pub shared: Option<Arc<Shared>>,
}

/// Invalidation generations: a flight records its namespace's generation
/// when it starts and stores its answer only if no invalidation happened
/// meanwhile, so a read racing a DELETE cannot put back what was dropped.
#[derive(Debug, Default)]
struct Generations {
    all: AtomicU64,
    namespaces: Mutex<HashMap<String, u64>>,
}

impl Generations {
    fn current(&self, namespace: &str) -> (u64, u64) {
        let namespaces = self
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (
            self.all.load(Ordering::Acquire),
            namespaces.get(namespace).copied().unwrap_or(0),
        )
    }

    fn bump(&self, namespace: &str) {
        // Namespaces are the clients' allowed ones: a bounded set.
        let mut namespaces = self
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *namespaces.entry(namespace.to_string()).or_default() += 1;
    }

    fn bump_all(&self) {
        self.all.fetch_add(1, Ordering::AcqRel);
    }
}

impl CacheState {
    /// Builds the store and flight table from the config.
    pub fn new(config: &Config) -> Arc<Self> {
        let state = Self::build(config);
        // The other replicas' invalidations, applied to this one's memory.
        if let Some(mut invalidations) = state.shared.as_ref().and_then(|s| s.take_invalidations())
        {
            let weak = Arc::downgrade(&state);
            tokio::spawn(async move {
                while let Some(invalidation) = invalidations.recv().await {
                    let Some(state) = weak.upgrade() else { return };
                    state.apply_remote(invalidation);
                }
            });
        }
        state
    }

    fn build(config: &Config) -> Arc<Self> {
        // A zero list TTL: list results are never kept.
        let list_ttl = config.coalesce.list_ttl;
        Arc::new(Self {
            store: Store::new(
                config.cache.max_bytes,
                config.cache.ttl,
                (!list_ttl.is_zero()).then_some(list_ttl),
            ),
            metrics: CacheMetrics::default(),
            flights: Flights::new(),
            terminal_statuses: config.cache.terminal_statuses.clone(),
            list_ttl,
            timeout: config.upstream.timeout,
            share_limit: AtomicUsize::new(SHARE_LIMIT),
            generations: Generations::default(),
            detail_ttl: config.cache.ttl,
            shared: config
                .redis
                .as_ref()
                .and_then(|redis| match Shared::start(redis) {
                    Ok(shared) => Some(shared),
                    Err(error) => {
                        tracing::error!(%error, "redis disabled: cannot use redis.url");
                        None
                    }
                }),
        })
    }

    /// Changes the largest response body shared or cached (default
    /// [`SHARE_LIMIT`]); applies to flights started afterwards.
    pub fn set_share_limit(&self, bytes: usize) {
        self.share_limit.store(bytes, Ordering::Relaxed);
    }

    fn storable(&self, kind: Kind, status: StatusCode, body: &[u8]) -> bool {
        match kind {
            Kind::Detail => policy::is_terminal_detail(status, body, &self.terminal_statuses),
            Kind::List => !self.list_ttl.is_zero() && status == StatusCode::OK,
        }
    }

    /// Drops the whole cache (admin API).
    pub async fn clear(&self) {
        self.generations.bump_all();
        self.store.clear();
        if let Some(shared) = &self.shared {
            shared.bump_epoch(None).await;
            shared.broadcast(&Invalidation::All).await;
        }
    }

    /// Applies another replica's invalidation to this replica's memory.
    fn apply_remote(&self, invalidation: Invalidation) {
        match invalidation {
            Invalidation::All => {
                self.generations.bump_all();
                self.store.clear();
            }
            Invalidation::Exact { ns, path } => {
                self.generations.bump(&ns);
                self.store.invalidate_exact(&ns, &path);
            }
            Invalidation::Below { ns, path } => {
                self.generations.bump(&ns);
                self.store.invalidate_below(&ns, &path);
            }
        }
    }

    /// Drops one execution detail (admin API); true when it was cached.
    pub async fn drop_detail(&self, namespace: &str, path: &str) -> bool {
        self.generations.bump(namespace);
        let key = CacheKey::detail(namespace, path.to_string());
        if let Some(shared) = &self.shared {
            shared.delete_entry(&key).await;
            shared
                .broadcast(&Invalidation::Exact {
                    ns: namespace.to_string(),
                    path: path.to_string(),
                })
                .await;
        }
        self.store.remove(&key)
    }

    async fn invalidate(&self, namespace: &str, path: &str, exact_detail: bool) {
        self.generations.bump(namespace);
        if let Some(shared) = &self.shared {
            if exact_detail {
                shared
                    .delete_entry(&CacheKey::detail(namespace, path.to_string()))
                    .await;
            }
            // Also retires what a flight on any replica, started before
            // this invalidation, may still write back.
            shared.bump_epoch(Some(namespace)).await;
            let (ns, path) = (namespace.to_string(), path.to_string());
            shared
                .broadcast(&if exact_detail {
                    Invalidation::Exact { ns, path }
                } else {
                    Invalidation::Below { ns, path }
                })
                .await;
        }
        if exact_detail {
            self.store.invalidate_exact(namespace, path);
        } else {
            self.store.invalidate_below(namespace, path);
        }
    }
}

/// Layer for [`CacheService`].
#[derive(Clone, Debug)]
pub struct CacheLayer {
    state: Arc<CacheState>,
}

impl CacheLayer {
    /// A layer sharing `state`.
    pub fn new(state: Arc<CacheState>) -> Self {
        Self { state }
    }
}

/// The service below the cache, type-erased: flights move clones of it into
/// their own tasks.
pub type Inner = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// Makes an [`Inner`] on demand. hyper clones the whole stack for every
/// request; keeping this behind an `Arc` makes that clone a reference count
/// and leaves the boxing to the requests that actually go upstream — a
/// cache hit never does.
type MakeInner = Arc<dyn Fn() -> Inner + Send + Sync>;

impl<S> Layer<S> for CacheLayer
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Service = CacheService;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            make_inner: Arc::new(move || BoxCloneSyncService::new(inner.clone())),
            state: self.state.clone(),
        }
    }
}

/// Serves cached routes from the store and coalesces identical calls.
#[derive(Clone)]
pub struct CacheService {
    make_inner: MakeInner,
    state: Arc<CacheState>,
}

impl std::fmt::Debug for CacheService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for CacheService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    /// A hit is answered at once, without an async state machine or a box;
    /// everything else is a boxed future.
    type Future = Either<
        std::future::Ready<Result<Response<Body>, BoxError>>,
        BoxFuture<'static, Result<Response<Body>, BoxError>>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness of the service below is awaited per call (`oneshot`),
        // only by the requests that reach it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Borrowed: a hit clones no `Arc` (a shared reference count is a
        // cache line both cores write); the boxed futures take their own.
        let state = &self.state;
        let route = route::classify(request.method(), request.uri().path());
        if let Some(context) = RequestContext::of(request.extensions()) {
            context.observed().set_route(match route {
                Route::Detail { .. } => crate::telemetry::metrics::RouteClass::Detail,
                Route::List { .. } => crate::telemetry::metrics::RouteClass::List,
                Route::Invalidate { .. } | Route::PassThrough => {
                    crate::telemetry::metrics::RouteClass::Passthrough
                }
            });
        }
        Either::Right(match route {
            Route::PassThrough => {
                bump(&state.metrics.bypassed);
                state.metrics.upstream_call(RouteClass::Passthrough);
                send((self.make_inner)(), request.map(body::boxed))
            }
            Route::Detail { path } => {
                let Some(namespace) = EffectiveNamespace::of(request.extensions()) else {
                    return Either::Left(std::future::ready(Err(NO_NAMESPACE.into())));
                };
                let lookup = !policy::request_skips_lookup(request.headers());
                if lookup {
                    // Borrowed: a hit copies neither the path nor the namespace.
                    let borrowed = DetailKey {
                        namespace: namespace.as_str(),
                        path: &path,
                    };
                    if let Some(entry) = state.store.get(&borrowed) {
                        bump(&state.metrics.hits);
                        return Either::Left(std::future::ready(Ok(entry.to_response())));
                    }
                }
                let key = CacheKey::detail(namespace.shared(), path.into_owned());
                Box::pin(detail_miss(
                    state.clone(),
                    self.make_inner.clone(),
                    request,
                    key,
                    lookup,
                ))
            }
            Route::List { path } => {
                let path = path.into_owned();
                Box::pin(list(state.clone(), self.make_inner.clone(), request, path))
            }
            Route::Invalidate { path, exact_detail } => {
                let path = path.into_owned();
                Box::pin(mutation(
                    state.clone(),
                    self.make_inner.clone(),
                    request,
                    path,
                    exact_detail,
                ))
            }
        })
    }
}

fn namespace_of<B>(request: &Request<B>) -> Result<Arc<str>, GatewayError> {
    EffectiveNamespace::of(request.extensions())
        .map(EffectiveNamespace::shared)
        .ok_or(NO_NAMESPACE)
}

/// The namespace layer runs above this one; reaching here without a
/// namespace is a wiring bug, answered as an internal error.
const NO_NAMESPACE: GatewayError = GatewayError::Internal("no namespace resolved");

/// An execution detail not in this replica's memory (or a refresh, when
/// `lookup` is false): the shared tier, then one upstream call per key.
async fn detail_miss<B>(
    state: Arc<CacheState>,
    make_inner: MakeInner,
    request: Request<B>,
    key: CacheKey,
    lookup: bool,
) -> Result<Response<Body>, BoxError> {
    if lookup {
        if let Some(response) = shared_hit(&state, &key).await {
            return Ok(response);
        }
    }
    // A GET's body means nothing to these routes; it is not forwarded.
    let (parts, _body) = request.into_parts();
    coalesce(state, make_inner, key, parts, Bytes::new(), Kind::Detail).await
}

/// A hit in the replicas' shared tier (with `[redis]`), kept locally too.
async fn shared_hit(state: &CacheState, key: &CacheKey) -> Option<Response<Body>> {
    let shared = state.shared.as_ref()?;
    let found = shared.get_entry(key).await?;
    bump(&state.metrics.hits);
    shared
        .metrics
        .l2_hits
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let entry = Entry::new(found.status, found.content_type, found.body);
    state.store.insert(key.clone(), entry.clone());
    let mut response = entry.to_response();
    response
        .headers_mut()
        .insert(X_CACHE_TIER.clone(), HeaderValue::from_static("L2"));
    Some(response)
}

async fn list<B>(
    state: Arc<CacheState>,
    make_inner: MakeInner,
    request: Request<B>,
    path: String,
) -> Result<Response<Body>, BoxError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let namespace = namespace_of(&request)?;
    let (parts, body) = request.into_parts();
    // Bounded by the body limit layer above: over it, this is a 413.
    let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
    let key = CacheKey::list(namespace, path, parts.uri.query(), &parts.headers, &bytes);
    let Some(key) = key else {
        // Not JSON: the API will answer 422; don't share that guess.
        bump(&state.metrics.bypassed);
        state.metrics.upstream_call(RouteClass::List);
        return send(make_inner(), upstream_request(parts, bytes)).await;
    };
    if !state.list_ttl.is_zero() && !policy::request_skips_lookup(&parts.headers) {
        if let Some(entry) = state.store.get(&key) {
            bump(&state.metrics.hits);
            return Ok(entry.to_response());
        }
    }
    coalesce(state, make_inner, key, parts, bytes, Kind::List).await
}

async fn mutation<B>(
    state: Arc<CacheState>,
    make_inner: MakeInner,
    request: Request<B>,
    path: String,
    exact_detail: bool,
) -> Result<Response<Body>, BoxError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let namespace = namespace_of(&request)?;
    state.invalidate(&namespace, &path, exact_detail).await;
    bump(&state.metrics.bypassed);
    state.metrics.upstream_call(RouteClass::Passthrough);
    let response = send(make_inner(), request.map(body::boxed)).await?;
    // Again once upstream has applied it: a read racing the mutation may
    // have stored the old state meanwhile.
    if response.status().is_success() || response.status().is_redirection() {
        state.invalidate(&namespace, &path, exact_detail).await;
    }
    Ok(response)
}

/// Calls the service below. Its answer says `X-Cache: BYPASS` (upstream's
/// own `X-Cache`, if any, is replaced) until the caller marks it otherwise:
/// the cache's statement about a response is the cache layer's to make, and
/// every upstream call passes through here. A plain function returning a
/// boxed future on purpose: awaiting `Oneshot` directly inside the async
/// functions here trips a rustc limitation with higher-ranked lifetimes in
/// `dyn Error`.
fn send(
    inner: Inner,
    request: Request<Body>,
) -> BoxFuture<'static, Result<Response<Body>, BoxError>> {
    Box::pin(inner.oneshot(request).map_ok(|mut response| {
        response
            .headers_mut()
            .insert(X_CACHE.clone(), CacheStatus::Bypass.header_value());
        response
    }))
}

/// The request a flight (or a lone retry) sends: the client's head without
/// the headers that would make the answer specific to it (the answer is
/// shared and stored, and its `status` must be readable, so uncompressed),
/// with a buffered body whose length hyper sets itself.
fn upstream_request(mut parts: Parts, body: Bytes) -> Request<Body> {
    parts.extensions.insert(SharedCall);
    parts.headers.remove(header::CONTENT_LENGTH);
    for name in PER_REQUEST_REQUEST_HEADERS {
        parts.headers.remove(name);
    }
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        http::HeaderValue::from_static("identity"),
    );
    Request::from_parts(parts, body::full(body))
}

async fn coalesce(
    state: Arc<CacheState>,
    make_inner: MakeInner,
    key: CacheKey,
    parts: Parts,
    body: Bytes,
    kind: Kind,
) -> Result<Response<Body>, BoxError> {
    let class = match kind {
        Kind::Detail => RouteClass::Detail,
        Kind::List => RouteClass::List,
    };
    match state.flights.join(&key) {
        Joined::Waiter(waiter) => {
            let outcome = tokio::time::timeout(state.timeout, waiter.wait())
                .await
                .map_err(|_| GatewayError::GatewayTimeout)?;
            match outcome {
                Some(Outcome::Shared(response)) => {
                    bump(&state.metrics.coalesced);
                    Ok(response.to_response(CacheStatus::Coalesced))
                }
                Some(Outcome::Failed(error)) => Err(error.into()),
                Some(Outcome::Unshareable) => {
                    // Not shared after all: this request makes its own call.
                    bump(&state.metrics.misses);
                    state.metrics.upstream_call(class);
                    let mut response = send(make_inner(), upstream_request(parts, body)).await?;
                    response
                        .headers_mut()
                        .insert(X_CACHE.clone(), CacheStatus::Miss.header_value());
                    Ok(response)
                }
                None => Err(
                    GatewayError::BadGateway("shared upstream call was abandoned".into()).into(),
                ),
            }
        }
        Joined::Leader(leader) => {
            let outcome = leader.waiter();
            let (handoff, handed_off) = oneshot::channel();
            let request = upstream_request(parts, body);
            let generation = state.generations.current(&key.namespace);
            let flight_state = state.clone();
            // Its own task: nothing this request does (or its client's
            // disconnect) can cancel the call the others are waiting for.
            tokio::spawn(async move {
                flight_state.metrics.upstream_call(class);
                let result =
                    fly_shared(&flight_state, make_inner, request, kind, key, generation).await;
                let outcome = match result {
                    Fetched::Shared(response) => Outcome::Shared(response),
                    Fetched::Failed(error) => Outcome::Failed(error),
                    Fetched::TooLarge(response) => {
                        bump(&flight_state.metrics.unshareable);
                        let _ = handoff.send(response);
                        Outcome::Unshareable
                    }
                };
                leader.finish(outcome);
            });
            match outcome.wait().await {
                Some(Outcome::Shared(response)) if response.remote => {
                    bump(&state.metrics.coalesced);
                    Ok(response.to_response(CacheStatus::Coalesced))
                }
                Some(Outcome::Shared(response)) => {
                    bump(&state.metrics.misses);
                    Ok(response.to_response(CacheStatus::Miss))
                }
                Some(Outcome::Failed(error)) => Err(error.into()),
                Some(Outcome::Unshareable) => handed_off.await.map_err(|_| {
                    GatewayError::Internal("oversized response was not handed over").into()
                }),
                None => {
                    Err(GatewayError::Internal("upstream call ended without an outcome").into())
                }
            }
        }
    }
}

enum Fetched {
    Shared(Arc<SharedResponse>),
    Failed(GatewayError),
    TooLarge(Response<Body>),
}

/// A flight across replicas: with `[redis]` set, only the replica holding
/// the key's lease calls upstream and publishes the answer; the others wait
/// for it. Without Redis (or while it is unavailable) this is [`fly`].
async fn fly_shared(
    state: &CacheState,
    make_inner: MakeInner,
    request: Request<Body>,
    kind: Kind,
    key: CacheKey,
    generation: (u64, u64),
) -> Fetched {
    let Some(shared) = state.shared.as_deref() else {
        return fly(state, make_inner(), request, kind, key, generation).await;
    };
    let deadline = tokio::time::Instant::now() + state.timeout;
    let epochs = match kind {
        Kind::Detail => shared.epochs(&key.namespace).await,
        Kind::List => None,
    };
    loop {
        match shared.try_lease(&key).await {
            Lease::Unavailable => {
                shared.fell_back();
                return fly(state, make_inner(), request, kind, key, generation).await;
            }
            Lease::Acquired(token) => {
                // The lease outlives a slow upstream call: renewed while it runs.
                let fetched = {
                    let flight = fly(state, make_inner(), request, kind, key.clone(), generation);
                    tokio::pin!(flight);
                    tokio::select! {
                        fetched = &mut flight => fetched,
                        () = shared.keep_lease(&key, &token) => flight.await,
                    }
                };
                if let Fetched::Shared(response) = &fetched {
                    let entry = SharedEntry {
                        status: response.status,
                        content_type: response.headers.get(header::CONTENT_TYPE).cloned(),
                        body: response.body.clone(),
                    };
                    let storable = kind == Kind::Detail
                        && state.storable(kind, response.status, &response.body)
                        && state.generations.current(&key.namespace) == generation;
                    if let (true, Some(epochs)) = (storable, epochs) {
                        shared
                            .put_entry(&key, &entry, state.detail_ttl, epochs)
                            .await;
                    }
                    // A 429 or 5xx is about that one call (its Retry-After,
                    // its failure): the other replicas' waiters call again.
                    if !(response.status == StatusCode::TOO_MANY_REQUESTS
                        || response.status.is_server_error())
                    {
                        shared.publish(&key, &token, &entry).await;
                    }
                }
                shared.release(&key, &token).await;
                return fetched;
            }
            Lease::Held(token) => match shared.wait(&key, &token, deadline).await {
                Waited::Answer(entry) => {
                    let unchanged = state.generations.current(&key.namespace) == generation;
                    if unchanged && state.storable(kind, entry.status, &entry.body) {
                        let local = Entry::new(
                            entry.status,
                            entry.content_type.clone(),
                            entry.body.clone(),
                        );
                        state.store.insert(key, local);
                    }
                    let mut headers = HeaderMap::new();
                    if let Some(content_type) = entry.content_type {
                        headers.insert(header::CONTENT_TYPE, content_type);
                    }
                    return Fetched::Shared(Arc::new(SharedResponse {
                        status: entry.status,
                        headers,
                        body: entry.body,
                        remote: true,
                    }));
                }
                Waited::LeaseGone => continue,
                Waited::Unavailable => {
                    shared.fell_back();
                    return fly(state, make_inner(), request, kind, key, generation).await;
                }
                Waited::TimedOut => return Fetched::Failed(GatewayError::GatewayTimeout),
            },
        }
    }
}

/// The upstream call of a flight: fetch, buffer, store if allowed.
async fn fly(
    state: &CacheState,
    inner: Inner,
    request: Request<Body>,
    kind: Kind,
    key: CacheKey,
    generation: (u64, u64),
) -> Fetched {
    let fetched = tokio::time::timeout(state.timeout, async {
        let response = send(inner, request).await?;
        buffer(response, state.share_limit.load(Ordering::Relaxed)).await
    })
    .await;
    let (parts, bytes) = match fetched {
        Err(_elapsed) => return Fetched::Failed(GatewayError::GatewayTimeout),
        Ok(Err(error)) => return Fetched::Failed(classify(error.as_ref())),
        Ok(Ok(Buffered::TooLarge(response))) => return Fetched::TooLarge(response),
        Ok(Ok(Buffered::Whole(parts, bytes))) => (parts, bytes),
    };
    let unchanged = state.generations.current(&key.namespace) == generation;
    if state.storable(kind, parts.status, &bytes) && unchanged {
        // The body (when read in one frame) and every header value are
        // slices of hyper's read buffer, which is several times larger:
        // stored as they are, each entry would keep a whole buffer alive,
        // unseen by the weigher. Copies at fill time keep the memory equal
        // to what `cache.max_bytes` counts.
        let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
        let stored = Bytes::copy_from_slice(&bytes);
        state
            .store
            .insert(key, Entry::new(parts.status, content_type, stored));
    } else if kind == Kind::Detail
        && matches!(parts.status, StatusCode::NOT_FOUND | StatusCode::GONE)
    {
        // A refresh (no-cache) learned the execution is gone.
        state.store.remove(&key);
        if let Some(shared) = &state.shared {
            shared.delete_entry(&key).await;
        }
    }
    Fetched::Shared(Arc::new(SharedResponse {
        status: parts.status,
        headers: parts.headers,
        body: bytes,
        remote: false,
    }))
}

enum Buffered {
    Whole(http::response::Parts, Bytes),
    TooLarge(Response<Body>),
}

/// Reads the whole body, unless it grows past `limit`: then the part read so
/// far and the rest are handed back as one streaming response.
async fn buffer(response: Response<Body>, limit: usize) -> Result<Buffered, BoxError> {
    let (parts, body) = response.into_parts();
    match body::read_up_to(body, limit).await? {
        body::Prefix::Whole(bytes) => Ok(Buffered::Whole(parts, bytes)),
        body::Prefix::Longer(body) => {
            let mut response = Response::from_parts(parts, body);
            response
                .headers_mut()
                .insert(X_CACHE.clone(), CacheStatus::Miss.header_value());
            Ok(Buffered::TooLarge(response))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::StreamBody;

    fn chunked(chunks: &[&'static str]) -> Response<Body> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        Response::new(body::boxed(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
    }

    #[test]
    fn waiters_do_not_get_the_leaders_per_request_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", "leader-id".parse().unwrap());
        headers.insert("set-cookie", "a=b".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        let shared = SharedResponse {
            remote: false,
            status: StatusCode::OK,
            headers,
            body: Bytes::new(),
        };
        let waiter = shared.to_response(CacheStatus::Coalesced);
        assert!(waiter.headers().get("x-request-id").is_none());
        assert!(waiter.headers().get("set-cookie").is_none());
        assert_eq!(waiter.headers()["content-type"], "application/json");
        assert_eq!(waiter.headers()["x-cache"], "COALESCED");
        let leader = shared.to_response(CacheStatus::Miss);
        assert_eq!(leader.headers()["x-request-id"], "leader-id");
    }

    #[test]
    fn flight_requests_are_not_conditional_ranged_or_compressed() {
        let (parts, ()) = Request::get("/v1/retrievers/executions/e")
            .header("range", "bytes=0-9")
            .header("if-none-match", "\"x\"")
            .header("accept-encoding", "gzip, br")
            .header("content-length", "3")
            .header("x-keep", "1")
            .body(())
            .unwrap()
            .into_parts();
        let request = upstream_request(parts, Bytes::new());
        let h = request.headers();
        assert!(h.get("range").is_none() && h.get("if-none-match").is_none());
        assert!(h.get("content-length").is_none());
        assert_eq!(h["accept-encoding"], "identity");
        assert_eq!(h["x-keep"], "1");
    }

    #[tokio::test]
    async fn small_bodies_are_buffered_whole() {
        let Buffered::Whole(_, bytes) = buffer(chunked(&["ab", "cd", "e"]), 10).await.unwrap()
        else {
            panic!("fits")
        };
        assert_eq!(bytes, "abcde");
    }

    #[tokio::test]
    async fn oversized_bodies_stream_on_with_nothing_lost() {
        let Buffered::TooLarge(response) = buffer(chunked(&["abc", "def", "ghi", "jkl"]), 5)
            .await
            .unwrap()
        else {
            panic!("too large")
        };
        assert_eq!(response.headers()["x-cache"], "MISS");
        let all = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(all, "abcdefghijkl");
    }
}
