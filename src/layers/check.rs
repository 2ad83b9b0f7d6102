//! Request checks as layers: a [`Check`] looks at a request in place (and
//! may amend it: mark a header sensitive, strip the client's key, record
//! the caller or the namespace), then passes it on or refuses it with a
//! [`GatewayError`].
//!
//! tower's `Filter` does the same with a predicate that takes the request
//! by value and hands it back in a `Result`, and wraps the inner future to
//! convert its error: two moves of the whole request and one more future
//! layer per check, on every request, cache hits included. Here the check
//! borrows the request, the inner future is returned as it is, and a
//! refusal is a ready error that the error layer turns into Mixpeek's error
//! body.

use std::task::{Context, Poll};

use futures_util::future::Either;
use http::Request;
use tower::{Layer, Service};

use crate::body::BoxError;
use crate::error::GatewayError;

/// A check of a request, done in place before it goes further.
pub trait Check {
    /// Passes (possibly amending) `request`, or refuses it.
    fn check<B>(&self, request: &mut Request<B>) -> Result<(), GatewayError>;
}

/// Layer for [`Checked`].
#[derive(Clone, Debug)]
pub struct CheckLayer<C> {
    check: C,
}

impl<C> CheckLayer<C> {
    /// Checks every request with `check`.
    pub fn new(check: C) -> Self {
        Self { check }
    }
}

impl<C: Clone, S> Layer<S> for CheckLayer<C> {
    type Service = Checked<C, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Checked {
            check: self.check.clone(),
            inner,
        }
    }
}

/// Runs its check on each request and calls the inner service only with
/// the requests that pass.
#[derive(Clone, Debug)]
pub struct Checked<C, S> {
    check: C,
    inner: S,
}

impl<C, S, B> Service<Request<B>> for Checked<C, S>
where
    C: Check,
    S: Service<Request<B>, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<std::future::Ready<Result<S::Response, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.check.check(&mut request) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(error) => Either::Left(std::future::ready(Err(error.into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower::ServiceExt;

    /// Refuses paths under /no, and tags the rest.
    #[derive(Clone)]
    struct NoPrefix;

    impl Check for NoPrefix {
        fn check<B>(&self, request: &mut Request<B>) -> Result<(), GatewayError> {
            if request.uri().path().starts_with("/no") {
                return Err(GatewayError::Forbidden("refused".into()));
            }
            request
                .headers_mut()
                .insert("x-checked", http::HeaderValue::from_static("1"));
            Ok(())
        }
    }

    #[tokio::test]
    async fn passes_amended_requests_and_refuses_without_calling_inside() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let inner = tower::service_fn(move |request: Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            let tagged = request.headers().contains_key("x-checked");
            async move { Ok::<_, BoxError>(tagged) }
        });
        let service = CheckLayer::new(NoPrefix).layer(inner);

        let request = Request::builder().uri("/yes").body(()).unwrap();
        assert!(service.clone().oneshot(request).await.unwrap());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let request = Request::builder().uri("/no/x").body(()).unwrap();
        let error = service.oneshot(request).await.unwrap_err();
        assert!(matches!(
            error.downcast_ref::<GatewayError>(),
            Some(GatewayError::Forbidden(_))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
