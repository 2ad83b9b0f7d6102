//! `server.max_body_bytes`: a request whose `Content-Length` is over the
//! limit is refused at once (413), and any other body is wrapped so that
//! reading past the limit fails (413 too: [`crate::error::classify`] maps
//! the [`http_body_util::LengthLimitError`]).
//!
//! tower-http's `RequestBodyLimit` does the same, but answers with a
//! response body type of its own, which the top of the stack then had to
//! box again on every response (cache hits included). This layer fails with
//! [`GatewayError::PayloadTooLarge`] instead, so the response type stays
//! [`Body`] and the error body is Mixpeek's like every other.

use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{header, Request, Response};
use http_body_util::Limited;
use tower::{Layer, Service};

use crate::body::{Body, BoxError};
use crate::error::GatewayError;

/// Layer for [`BodyLimit`].
#[derive(Clone, Copy, Debug)]
pub struct BodyLimitLayer {
    limit: usize,
}

impl BodyLimitLayer {
    /// Bodies of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// Refuses or limits request bodies over the configured size.
#[derive(Clone, Debug)]
pub struct BodyLimit<S> {
    inner: S,
    limit: usize,
}

impl<S, B> Service<Request<B>> for BodyLimit<S>
where
    S: Service<Request<Limited<B>>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<std::future::Ready<Result<Response<Body>, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.limit as u64) {
            return Either::Left(std::future::ready(
                Err(GatewayError::PayloadTooLarge.into()),
            ));
        }
        let limit = self.limit;
        Either::Right(
            self.inner
                .call(request.map(|body| Limited::new(body, limit))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    /// Echoes the size of the body it could read, or fails with the read error.
    async fn read_all(
        request: Request<Limited<Full<bytes::Bytes>>>,
    ) -> Result<Response<Body>, BoxError> {
        let bytes = request.into_body().collect().await?.to_bytes();
        Ok(Response::new(crate::body::full(bytes.len().to_string())))
    }

    fn request(body: &'static [u8], content_length: Option<&str>) -> Request<Full<bytes::Bytes>> {
        let mut builder = Request::builder().method("POST").uri("/v1/x");
        if let Some(length) = content_length {
            builder = builder.header(header::CONTENT_LENGTH, length);
        }
        builder
            .body(Full::new(bytes::Bytes::from_static(body)))
            .unwrap()
    }

    fn refused_as_too_large(result: Result<Response<Body>, BoxError>) -> bool {
        matches!(
            result
                .map(|_| ())
                .map_err(|e| crate::error::classify(e.as_ref())),
            Err(GatewayError::PayloadTooLarge)
        )
    }

    #[tokio::test]
    async fn declared_or_streamed_bodies_over_the_limit_are_refused() {
        let service = BodyLimitLayer::new(4).layer(tower::service_fn(read_all));
        // Declared too long: refused before the service reads anything.
        let result = service.clone().oneshot(request(b"12", Some("5"))).await;
        assert!(refused_as_too_large(result));
        // Undeclared, and longer than it may be: the read fails.
        let result = service.clone().oneshot(request(b"12345", None)).await;
        assert!(refused_as_too_large(result));
        // At the limit: read whole.
        let response = service.oneshot(request(b"1234", Some("4"))).await.unwrap();
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(text, "4");
    }
}
