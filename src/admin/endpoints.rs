//! The layer that owns the reserved `/_gateway/` prefix: every request
//! under it is answered by the gateway itself and never forwarded. It
//! answers `health` (the process serves) and `ready` (config loaded,
//! upstream client built, not shutting down) itself, checks the admin key,
//! and routes `metrics` ([`super::metrics`]), `status` ([`super::status`]),
//! `POST reload` ([`super::reload`]) and the admin cache API
//! (`DELETE /_gateway/cache[/{namespace}/{path...}]`, [`super::cache`]).
//! Any other path under the prefix — however it is spelled: percent-
//! encoded, with repeated slashes — is a 404 in Mixpeek's error shape.
//!
//! Health and ready need no key, so the layer sits above client
//! authentication; the admin API checks its own key and answers 404, not
//! 401, to anyone else, so that it cannot be discovered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::{BoxFuture, Either, FutureExt};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use super::reload::Reloader;
use super::status::StatusFigures;
use super::{cache, metrics};
use crate::body::{self, Body, BoxError};
use crate::cache::CacheState;
use crate::error::GatewayError;
use crate::layers::auth::bearer_token;
use crate::layers::auth::Clients;
use crate::limits::Limits;
use crate::telemetry::metrics::Metrics;

/// Whether the gateway should receive traffic; cleared when shutdown begins.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A new flag, ready.
    pub fn new() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    /// Marks the gateway as not ready (draining).
    pub fn set_draining(&self) {
        self.0.store(false, Ordering::Release);
    }

    /// True while the gateway accepts traffic.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

/// What the endpoints read and act on.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// Answers `ready`.
    pub readiness: Readiness,
    /// SHA-256 of the admin key; `None` disables the admin API.
    pub admin_key_sha256: Option<[u8; 32]>,
    /// The cache the admin API clears.
    pub cache: Arc<CacheState>,
    /// What `/_gateway/metrics` serves.
    pub metrics: Arc<Metrics>,
    /// The limits, whose figures the metrics and the status page show.
    pub limits: Arc<Limits>,
    /// Reloads the clients (`POST /_gateway/reload`).
    pub reloader: Arc<Reloader>,
    /// The clients in force, for the status page.
    pub clients: Clients,
    /// When the gateway started.
    pub started: Instant,
}

/// Layer for [`GatewayEndpoints`].
#[derive(Clone, Debug)]
pub struct GatewayEndpointsLayer {
    endpoints: Arc<Endpoints>,
}

impl GatewayEndpointsLayer {
    /// Serves `endpoints`.
    pub fn new(endpoints: Endpoints) -> Self {
        Self {
            endpoints: Arc::new(endpoints),
        }
    }
}

impl<S> Layer<S> for GatewayEndpointsLayer {
    type Service = GatewayEndpoints<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GatewayEndpoints {
            inner,
            endpoints: self.endpoints.clone(),
        }
    }
}

/// Answers `/_gateway/` requests; passes everything else to `S`.
#[derive(Clone, Debug)]
pub struct GatewayEndpoints<S> {
    inner: S,
    endpoints: Arc<Endpoints>,
}

/// True for any spelling of a path under the reserved prefix: the upstream
/// would decode `%5F` and may collapse `//`, so neither may smuggle a
/// reserved path past this layer.
pub fn is_reserved(raw_path: &str) -> bool {
    // Every request asks this, so first the cheap answer: after the
    // leading slashes, a path whose next byte is neither `_` nor `%` (which
    // might decode to `_` or `/`) decodes to a first segment that cannot
    // be `_gateway`. No substring search of the whole path.
    if !matches!(
        raw_path.trim_start_matches('/').as_bytes().first(),
        Some(b'_' | b'%')
    ) {
        return false;
    }
    let decoded = percent_decode_str(raw_path).decode_utf8_lossy();
    let trimmed = decoded.trim_start_matches('/');
    trimmed == "_gateway" || trimmed.starts_with("_gateway/")
}

impl Endpoints {
    fn is_admin<B>(&self, request: &Request<B>) -> bool {
        let Some(expected) = &self.admin_key_sha256 else {
            return false;
        };
        let Some(token) = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(bearer_token)
        else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(token).into();
        bool::from(digest.ct_eq(expected))
    }

    /// The status page is open without an admin key configured, and needs
    /// it when one is.
    fn may_see_status<B>(&self, request: &Request<B>) -> bool {
        self.admin_key_sha256.is_none() || self.is_admin(request)
    }

    fn status_page(&self) -> Response<Body> {
        let clients = self.clients.load();
        let labels = clients
            .names()
            .cloned()
            .chain(std::iter::once(self.metrics.anonymous().clone()));
        StatusFigures::read(
            self.started.elapsed(),
            &self.cache,
            &self.metrics,
            labels,
            self.limits.upstream.paused_for(),
        )
        .response()
    }
}

impl<S, B> Service<Request<B>> for GatewayEndpoints<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<BoxFuture<'static, Result<Response<Body>, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        if !is_reserved(path) {
            return Either::Right(self.inner.call(request));
        }
        let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
        let ready = self.endpoints.readiness.is_ready();
        let answer = match path {
            "/_gateway/health" if is_read => Ok(json(StatusCode::OK, r#"{"status":"ok"}"#)),
            "/_gateway/ready" if is_read && ready => {
                Ok(json(StatusCode::OK, r#"{"status":"ready"}"#))
            }
            "/_gateway/metrics" if is_read => Ok(metrics::response(
                &self.endpoints.metrics,
                &self.endpoints.cache,
                &self.endpoints.limits,
            )),
            "/_gateway/ready" if is_read => Ok(json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"draining"}"#,
            )),
            "/_gateway/status" if is_read && self.endpoints.may_see_status(&request) => {
                Ok(self.endpoints.status_page())
            }
            "/_gateway/reload"
                if request.method() == Method::POST && self.endpoints.is_admin(&request) =>
            {
                Ok(self.endpoints.reloader.respond())
            }
            _ if request.method() == Method::DELETE && self.endpoints.is_admin(&request) => {
                let target = if path == "/_gateway/cache" {
                    Some(None)
                } else {
                    path.strip_prefix("/_gateway/cache/")
                        .filter(|rest| !rest.is_empty())
                        .map(|rest| Some(rest.to_string()))
                };
                match target {
                    Some(rest) => {
                        let cache = self.endpoints.cache.clone();
                        return Either::Left(
                            async move {
                                let answer = cache::clear(&cache, rest).await?;
                                Ok(json(StatusCode::OK, answer))
                            }
                            .boxed(),
                        );
                    }
                    None => Err(GatewayError::NotFound.into()),
                }
            }
            _ => Err(GatewayError::NotFound.into()),
        };
        Either::Left(futures_util::future::ready(answer).boxed())
    }
}

fn json(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn service(
        readiness: Readiness,
    ) -> GatewayEndpoints<tower::util::BoxService<Request<()>, Response<Body>, BoxError>> {
        let inner = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, BoxError>(Response::new(body::full("forwarded")))
        });
        let toml = "[[clients]]\nname = \"a\"\nnamespace = \"ns\"\nkey_sha256 = \"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\"\n";
        let config = crate::config::Config::from_toml(toml, |_| Some("k".into())).unwrap();
        let cache = CacheState::new(&config);
        let limits = crate::limits::Limits::new(&config);
        let config = Arc::new(config);
        let clients: Clients = Arc::new(arc_swap::ArcSwap::from_pointee(
            crate::layers::auth::ClientRegistry::new(config.clients.iter().cloned()),
        ));
        let endpoints = Endpoints {
            readiness,
            admin_key_sha256: None,
            metrics: Arc::new(Metrics::new()),
            limits: limits.clone(),
            cache,
            reloader: Arc::new(Reloader::new(
                None,
                config.clone(),
                clients.clone(),
                limits.clients.clone(),
            )),
            clients,
            started: Instant::now(),
        };
        GatewayEndpointsLayer::new(endpoints).layer(tower::util::BoxService::new(inner))
    }

    #[test]
    fn reserved_prefix_in_any_spelling() {
        for path in [
            "/_gateway/x",
            "/_gateway",
            "//_gateway/health",
            "/%5Fgateway/health",
            "/%5fgateway",
            "///_gateway/",
            "/%2F_gateway/health",
            "/%2f%2F%5Fgateway",
        ] {
            assert!(is_reserved(path), "{path}");
        }
        for path in [
            "/v1/_gateway",
            "/_gatewayx",
            "/v1/x%20y",
            "/",
            "",
            "/v1/%5Fgateway",
            "/_x/_gateway",
            "/%5Fx",
        ] {
            assert!(!is_reserved(path), "{path}");
        }
    }

    async fn status(
        readiness: &Readiness,
        method: Method,
        path: &str,
    ) -> Result<StatusCode, GatewayError> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        service(readiness.clone())
            .oneshot(request)
            .await
            .map(|r| r.status())
            .map_err(|e| e.downcast_ref::<GatewayError>().unwrap().clone())
    }

    #[tokio::test]
    async fn health_ready_and_unknown() {
        let r = Readiness::new();
        assert_eq!(
            status(&r, Method::GET, "/_gateway/health").await,
            Ok(StatusCode::OK)
        );
        assert_eq!(
            status(&r, Method::GET, "/_gateway/ready").await,
            Ok(StatusCode::OK)
        );
        assert_eq!(
            status(&r, Method::GET, "/_gateway/nope").await,
            Err(GatewayError::NotFound)
        );
        assert_eq!(
            status(&r, Method::POST, "/_gateway/health").await,
            Err(GatewayError::NotFound)
        );
        assert_eq!(status(&r, Method::GET, "/v1/x").await, Ok(StatusCode::OK));
        r.set_draining();
        assert_eq!(
            status(&r, Method::GET, "/_gateway/ready").await,
            Ok(StatusCode::SERVICE_UNAVAILABLE)
        );
    }
}
