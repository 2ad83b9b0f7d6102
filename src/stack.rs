//! The middleware stack: every layer a request passes through, in order, in
//! one builder chain.
//!
//! [`app`] is shared by the server, the tests and the benchmarks, so all of
//! them exercise exactly the same stack.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response};
use tower::filter::FilterLayer;
use tower::timeout::TimeoutLayer;
use tower::{Service, ServiceBuilder};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::ServiceBuilderExt;
use tracing::Level;

use crate::auth::{Authenticate, ClientRegistry};
use crate::body::BoxError;
use crate::cache::{CacheLayer, CacheState};
use crate::config::Config;
use crate::endpoints::{Endpoints, GatewayEndpointsLayer, Readiness};
use crate::error;
use crate::guard::RequestGuard;
use crate::limits::{AuthFailureGuardLayer, ClientLimitLayer, Limits, UpstreamGuardLayer};
use crate::namespace::ResolveNamespace;
use crate::request_id::MakeRequestIds;
use crate::upstream::Upstream;

/// Everything the stack is built from, created once at startup.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The clients, by key digest.
    pub registry: Arc<ClientRegistry>,
    /// The pooled upstream client.
    pub upstream: Upstream,
    /// Cleared when the gateway starts draining.
    pub readiness: Readiness,
    /// The execution-detail cache, flights and their counters.
    pub cache: Arc<CacheState>,
    /// Rate limits, the upstream quota guard and their counters.
    pub limits: Arc<Limits>,
}

impl AppState {
    /// Builds the upstream client and the client registry.
    pub fn new(config: Config) -> Result<Self, BoxError> {
        let upstream = Upstream::new(&config.upstream)?;
        let registry = Arc::new(ClientRegistry::new(config.clients.iter().cloned()));
        let cache = CacheState::new(&config);
        let limits = Limits::new(&config);
        Ok(Self {
            config: Arc::new(config),
            registry,
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
        // Keys must not reach logs even if a layer below prints headers.
        .sensitive_request_headers(Arc::new([header::AUTHORIZATION]))
        // Correlates the gateway's log line with the client and upstream.
        .set_x_request_id(MakeRequestIds::new())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<B>| {
                    // Building the span's fields costs even when nothing logs.
                    if !tracing::enabled!(Level::INFO) {
                        return tracing::Span::none();
                    }
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("request", id, method = %request.method(), path = %request.uri().path())
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .propagate_x_request_id()
        // Every failure below becomes Mixpeek's error body, once, here.
        .map_result(error::into_response)
        // Bodies over server.max_body_bytes: 413 (by Content-Length at once,
        // or when a streamed body crosses the limit).
        .layer(RequestBodyLimitLayer::new(state.config.server.max_body_bytes))
        // Ambiguous credentials and dot-segment paths never go further.
        .layer(FilterLayer::new(RequestGuard))
        // /_gateway/ routes need no key and are never forwarded.
        .layer(GatewayEndpointsLayer::new(Endpoints {
            readiness: state.readiness.clone(),
            admin_key_sha256: state.config.server.admin_key_sha256,
            cache: state.cache.clone(),
        }))
        // A peer IP with too many 401s gets 429 before its key is even looked at.
        .layer(AuthFailureGuardLayer::new(state.limits.auth_failures.clone()))
        // Who is calling; strips the client's own Authorization.
        .layer(FilterLayer::new(Authenticate::new(state.registry.clone())))
        // The client's rate_limit on every authenticated request (cache hits too).
        .layer(ClientLimitLayer::new(state.limits.clients.clone()))
        // Which namespace the request acts in (403 outside the allowed set).
        .layer(FilterLayer::new(ResolveNamespace))
        // Terminal execution details from memory; identical calls coalesced.
        .layer(CacheLayer::new(state.cache.clone()))
        // Only calls that really go upstream spend the organisation's quota.
        .layer(UpstreamGuardLayer::new(state.limits.upstream.clone()))
        // upstream.timeout_ms until the response head: 504.
        .layer(TimeoutLayer::new(state.config.upstream.timeout))
        .service(state.upstream.clone())
}
