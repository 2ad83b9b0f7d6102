//! The middleware stack: every layer a request passes through, in order, in
//! one builder chain.
//!
//! [`app`] is shared by the server, the tests and the benchmarks, so all of
//! them exercise exactly the same stack.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::{Request, Response};
use tower::timeout::TimeoutLayer;
use tower::{Service, ServiceBuilder};

use crate::admin::endpoints::{Endpoints, GatewayEndpointsLayer, Readiness};
use crate::admin::reload::Reloader;
use crate::body::BoxError;
use crate::cache::{CacheLayer, CacheState};
use crate::config::Config;
use crate::error;
use crate::layers::auth::Clients;
use crate::layers::auth::{Authenticate, ClientRegistry};
use crate::layers::body_limit::BodyLimitLayer;
use crate::layers::check::CheckLayer;
use crate::layers::guard::RequestGuard;
use crate::layers::namespace::ResolveNamespace;
use crate::layers::observe::ObserveLayer;
use crate::layers::request_body::ReadAheadLayer;
use crate::limits::{AuthFailureGuard, ClientLimitLayer, Limits, UpstreamGuardLayer};
use crate::telemetry::metrics::Metrics;
use crate::upstream::Upstream;

/// Everything the stack is built from, created once at startup.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The clients in force, by key digest; swapped on reload.
    pub clients: Clients,
    /// Reloads the clients from the config file.
    pub reloader: Arc<Reloader>,
    /// When the gateway started, for the status page.
    pub started: Instant,
    /// The pooled upstream client.
    pub upstream: Upstream,
    /// Cleared when the gateway starts draining.
    pub readiness: Readiness,
    /// The execution-detail cache, flights and their counters.
    pub cache: Arc<CacheState>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Rate limits, the upstream quota guard and their counters.
    pub limits: Arc<Limits>,
}

impl AppState {
    /// Builds the upstream client and the client registry; the config did
    /// not come from a file, so it cannot be reloaded.
    pub fn new(config: Config) -> Result<Self, BoxError> {
        Self::with_path(config, None)
    }

    /// As [`new`](Self::new), reloadable from `path`.
    pub fn with_path(config: Config, path: Option<PathBuf>) -> Result<Self, BoxError> {
        let upstream = Upstream::new(&config.upstream)?;
        let clients: Clients = Arc::new(ArcSwap::from_pointee(ClientRegistry::new(
            config.clients.iter().cloned(),
        )));
        let cache = CacheState::new(&config);
        let limits = Limits::new(&config);
        if let Some(shared) = &cache.shared {
            limits.upstream.share_rate(shared.clone());
        }
        let metrics = Arc::new(Metrics::new());
        let config = Arc::new(config);
        let reloader = Arc::new(Reloader::new(
            path,
            config.clone(),
            clients.clone(),
            limits.clients.clone(),
        ));
        Ok(Self {
            metrics,
            config,
            clients,
            reloader,
            started: Instant::now(),
            upstream,
            readiness: Readiness::new(),
            cache,
            limits,
        })
    }
}

/// The gateway as one tower service over requests with body `B`.
pub fn app<B>(
    state: &AppState,
) -> impl Service<
    Request<B>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static>,
    Error = BoxError,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    ServiceBuilder::new()
        // One access-log line and the request metrics, when the body ends;
        // the X-Request-Id (the client's when sane) that correlates it with
        // the client and upstream.
        .layer(ObserveLayer::new(state.metrics.clone()))
        // Every failure below becomes Mixpeek's error body, once, here.
        .map_result(error::into_response)
        // Bodies over server.max_body_bytes: 413 (by Content-Length at once,
        // or when a streamed body crosses the limit).
        .layer(BodyLimitLayer::new(state.config.server.max_body_bytes))
        // Ambiguous credentials and dot-segment paths never go further; the
        // client's Authorization is marked sensitive (never printed).
        .layer(CheckLayer::new(RequestGuard))
        // /_gateway/ routes need no key and are never forwarded.
        .layer(GatewayEndpointsLayer::new(Endpoints {
            readiness: state.readiness.clone(),
            admin_key_sha256: state.config.server.admin_key_sha256,
            cache: state.cache.clone(),
            metrics: state.metrics.clone(),
            limits: state.limits.clone(),
            reloader: state.reloader.clone(),
            clients: state.clients.clone(),
            started: state.started,
        }))
        // Who is calling; strips the client's own Authorization. A peer IP
        // with too many 401s gets 429 before its key is even looked at.
        .layer(CheckLayer::new(AuthFailureGuard::new(
            state.limits.auth_failures.clone(),
            Authenticate::new(state.clients.clone()),
        )))
        // The client's rate_limit on every authenticated request (cache hits too).
        .layer(
            ClientLimitLayer::new(state.limits.clients.clone()).shared(
                state.cache.shared.clone(),
                state
                    .config
                    .redis
                    .as_ref()
                    .map(|r| r.rate_limit_fail_mode)
                    .unwrap_or_default(),
            ),
        )
        // Which namespace the request acts in (403 outside the allowed set).
        .layer(CheckLayer::new(ResolveNamespace))
        // Terminal execution details from memory; identical calls coalesced.
        .layer(CacheLayer::new(state.cache.clone()))
        // Request bodies read ahead (up to 64 KiB): one over the limit or
        // malformed is refused before anything goes upstream or any quota
        // is spent; a small one goes with its Content-Length.
        .layer(ReadAheadLayer::new(state.config.upstream.timeout))
        // Only calls that really go upstream spend the organisation's quota.
        .layer(UpstreamGuardLayer::new(state.limits.upstream.clone()))
        // upstream.timeout_ms until the response head: 504.
        .layer(TimeoutLayer::new(state.config.upstream.timeout))
        .service(state.upstream.clone())
}
