//! The reserved `/_gateway/` routes, answered by the gateway itself and never
//! forwarded: `health` (the process serves) and `ready` (config loaded,
//! upstream client built, not shutting down). Any other path under the
//! prefix is a 404 in Mixpeek's error shape.
//!
//! These routes need no key, so the layer sits above authentication.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{self, Either, Ready};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::body::{self, Body, BoxError};
use crate::error::GatewayError;

/// The prefix no upstream route may use.
pub const PREFIX: &str = "/_gateway/";

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

/// Layer for [`GatewayEndpoints`].
#[derive(Clone, Debug)]
pub struct GatewayEndpointsLayer {
    readiness: Readiness,
}

impl GatewayEndpointsLayer {
    /// Answers `ready` from `readiness`.
    pub fn new(readiness: Readiness) -> Self {
        Self { readiness }
    }
}

impl<S> Layer<S> for GatewayEndpointsLayer {
    type Service = GatewayEndpoints<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GatewayEndpoints {
            inner,
            readiness: self.readiness.clone(),
        }
    }
}

/// Answers `/_gateway/` requests; passes everything else to `S`.
#[derive(Clone, Debug)]
pub struct GatewayEndpoints<S> {
    inner: S,
    readiness: Readiness,
}

impl<S, B> Service<Request<B>> for GatewayEndpoints<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<Ready<Result<Response<Body>, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        if !(path.starts_with(PREFIX) || path == "/_gateway") {
            return Either::Right(self.inner.call(request));
        }
        let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
        let answer = match &path[path.len().min(PREFIX.len())..] {
            "health" if is_read => Ok(json(StatusCode::OK, r#"{"status":"ok"}"#)),
            "ready" if is_read && self.readiness.is_ready() => {
                Ok(json(StatusCode::OK, r#"{"status":"ready"}"#))
            }
            "ready" if is_read => Ok(json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"draining"}"#,
            )),
            _ => Err(GatewayError::NotFound.into()),
        };
        Either::Left(future::ready(answer))
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
        GatewayEndpointsLayer::new(readiness).layer(tower::util::BoxService::new(inner))
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
