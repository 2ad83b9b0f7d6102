//! Request bodies read before anything goes upstream: a body of unknown or
//! known length is read up to [`READ_AHEAD`] bytes (or until the body limit
//! refuses it, whichever comes first) before the upstream call starts.
//!
//! - A body that ends within that is sent whole, with a `Content-Length`.
//! - A body over `server.max_body_bytes` (smaller than [`READ_AHEAD`]) is
//!   refused with 413 and nothing reaches upstream — streamed as it
//!   arrived, its first bytes would already be upstream when the limit
//!   struck.
//! - A body that is malformed or ends early (bad chunk framing, a
//!   `Content-Length` longer than what came before the client closed) is
//!   the client's fault: 400 `bad_request`, never blamed on upstream.
//! - Only a larger body streams: what was read, then the rest as it
//!   arrives (its limit still applies mid-stream).
//!
//! The layer sits below the cache, right above the upstream quota guard,
//! so neither a cache hit nor a refused body spends anything, and only
//! calls that go upstream pay for the read. Bodies the gateway built itself
//! (a flight's) are in memory already and pass as they are. nginx's
//! `proxy_request_buffering` does the same for whole bodies.

use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, Either};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use tower::{Layer, Service};

use crate::body::{self, Body, BoxError, Prefix};
use crate::error::{classify, GatewayError};

/// How much of a request body is read before the upstream call starts.
pub const READ_AHEAD: usize = 64 * 1024;

/// Layer for [`ReadAhead`].
#[derive(Clone, Copy, Debug)]
pub struct ReadAheadLayer {
    timeout: Duration,
}

impl ReadAheadLayer {
    /// Reads ahead for at most `timeout` (`upstream.timeout_ms`: the window
    /// a streamed body had before, so a client that stalls its upload still
    /// ends in 504 and holds nothing longer).
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for ReadAheadLayer {
    type Service = ReadAhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadAhead {
            inner,
            timeout: self.timeout,
        }
    }
}

/// Reads request bodies ahead of the upstream call (see the module docs).
#[derive(Clone, Debug)]
pub struct ReadAhead<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request<Body>> for ReadAhead<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response<Body>, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let body = request.body();
        if body.is_in_memory() || body.is_end_stream() {
            return Either::Left(self.inner.call(request));
        }
        // The service that was made ready goes with the request; a clone
        // stays for the next one (tower's usual hand-over).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let timeout = self.timeout;
        Either::Right(Box::pin(async move {
            let request = tokio::time::timeout(timeout, read_ahead(request))
                .await
                .map_err(|_| GatewayError::GatewayTimeout)??;
            inner.call(request).await
        }))
    }
}

/// `request` with its body read up to [`READ_AHEAD`] bytes: whole, or what
/// was read followed by the rest.
async fn read_ahead(request: Request<Body>) -> Result<Request<Body>, BoxError> {
    let (parts, body) = request.into_parts();
    let body = match body::read_up_to(body, READ_AHEAD).await {
        Ok(Prefix::Whole(bytes)) => body::full(bytes),
        // Streams on: a later fault of the client's body is still the
        // client's (400, or 413 past the limit), whatever the upstream
        // write it broke reports.
        Ok(Prefix::Longer(body)) => body::boxed(body.map_err(client_fault)),
        Err(error) => return Err(client_fault(error)),
    };
    Ok(Request::from_parts(parts, body))
}

/// A failure reading the client's body, as the client's fault: over the
/// limit stays 413, anything else (framing, an early end) is 400.
fn client_fault(error: BoxError) -> BoxError {
    match classify(error.as_ref()) {
        GatewayError::PayloadTooLarge => error,
        _ => GatewayError::BadRequest("the request body is malformed or incomplete".into()).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use http_body::Frame;
    use http_body_util::{BodyExt, Limited, StreamBody};
    use std::sync::{Arc, Mutex};
    use tower::ServiceExt;

    /// A streamed body of `chunks`, failing at the end when `fails`.
    fn streamed(chunks: Vec<Bytes>, fails: bool) -> Body {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> =
            chunks.into_iter().map(|c| Ok(Frame::data(c))).collect();
        if fails {
            frames.push(Err("connection closed before message completed".into()));
        }
        body::boxed(StreamBody::new(futures_util::stream::iter(frames)))
    }

    /// What the service below saw: whether its body was in memory, its
    /// length hint and its bytes; `None` when it was never called.
    type Seen = Arc<Mutex<Option<(bool, Option<u64>, Bytes)>>>;

    async fn send(body: Body) -> (Result<Response<Body>, BoxError>, Seen) {
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let service = ReadAheadLayer::new(Duration::from_secs(30)).layer(tower::service_fn(
            move |request: Request<Body>| {
                let record = record.clone();
                async move {
                    let body = request.into_body();
                    let in_memory = body.is_in_memory();
                    let hint = body.size_hint().exact();
                    let bytes = body.collect().await?.to_bytes();
                    *record.lock().unwrap() = Some((in_memory, hint, bytes));
                    Ok::<_, BoxError>(Response::new(body::empty()))
                }
            },
        ));
        let result = service.oneshot(Request::new(body)).await;
        (result, seen)
    }

    #[tokio::test]
    async fn a_small_streamed_body_goes_whole_with_its_length() {
        let (result, seen) = send(streamed(vec!["ab".into(), "cd".into()], false)).await;
        assert!(result.is_ok());
        let seen = seen.lock().unwrap().clone().unwrap();
        assert_eq!(seen, (true, Some(4), Bytes::from_static(b"abcd")));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_never_reaches_the_service_below() {
        let chunks = vec![Bytes::from(vec![b'x'; 700]), Bytes::from(vec![b'y'; 1400])];
        let limited = body::boxed(Limited::new(streamed(chunks, false), 1024));
        let (result, seen) = send(limited).await;
        let error = result.unwrap_err();
        assert!(matches!(
            classify(error.as_ref()),
            GatewayError::PayloadTooLarge
        ));
        assert!(seen.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_broken_body_is_the_clients_fault_and_never_reaches_the_service_below() {
        let (result, seen) = send(streamed(vec!["ab".into()], true)).await;
        let error = result.unwrap_err();
        assert!(matches!(
            classify(error.as_ref()),
            GatewayError::BadRequest(_)
        ));
        assert!(seen.lock().unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_is_a_504_after_the_upstream_timeout_and_never_sent() {
        let stalled = futures_util::stream::once(async {
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"a few bytes")))
        })
        .chain(futures_util::stream::pending());
        let started = tokio::time::Instant::now();
        let (result, seen) = send(body::boxed(StreamBody::new(stalled))).await;
        let error = result.unwrap_err();
        assert!(matches!(
            classify(error.as_ref()),
            GatewayError::GatewayTimeout
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert!(seen.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_large_body_streams_on_after_what_was_read() {
        let chunk = Bytes::from(vec![b'z'; 16 * 1024]);
        let chunks = vec![chunk; 64];
        let (result, seen) = send(streamed(chunks, false)).await;
        assert!(result.is_ok());
        let (in_memory, hint, bytes) = seen.lock().unwrap().clone().unwrap();
        assert!(!in_memory);
        assert_eq!(hint, None);
        assert_eq!(bytes.len(), 1024 * 1024);
    }
}
