//! The upstream: the one place that builds requests to the Mixpeek API and
//! sends them.
//!
//! [`Upstream`] is the innermost service of the stack. It rewrites the
//! request target onto `upstream.base_url` (path and query kept exactly as
//! received, percent-encoding included), drops hop-by-hop headers (RFC 9110
//! §7.6.1), sets the organisation's real key as `Authorization` and the
//! effective namespace as `X-Namespace`, and sends it over a pooled
//! HTTP/1.1 + HTTP/2 (ALPN) client. Both bodies stream: nothing is buffered,
//! so Server-Sent Events pass event by event.
//!
//! A `GET` or `HEAD` without a body whose connection failed before any
//! response byte — connect error, or a (pooled) connection closed or reset
//! under it — is retried once, on a fresh connection, after a short
//! jittered backoff. Nothing else is retried: a `POST` may have been acted
//! on even if no answer came back.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::{self, BoxFuture, FutureExt};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{self, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_http::timeout::TimeoutBody;

use crate::body::{self, Body, BoxError};
use crate::config::{ApiKey, UpstreamConfig};
use crate::context::RequestContext;
use crate::context::{EffectiveNamespace, X_NAMESPACE};
use crate::error::GatewayError;

/// The pooled HTTP client used for every upstream call.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;
/// The connector every pool of the upstream uses (HTTP, or HTTPS by rustls).
type Connector = HttpsConnector<HttpConnector>;

/// Where requests go and with which key.
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// Path prefix of `base_url` without a trailing slash; usually empty.
    prefix: String,
    api_key: ApiKey,
    /// Longest silence allowed between two frames of a response body.
    body_idle: Duration,
    /// A client that never reuses a connection, for retries.
    fresh: HttpClient,
    /// The connector, for more pools.
    connector: Connector,
    /// Retries made.
    retries: AtomicU64,
}

/// A client keeping idle connections for reuse.
fn pooled(connector: Connector) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// Least time before a retry.
const RETRY_BACKOFF: Duration = Duration::from_millis(25);
/// Random extra time before a retry, up to this many milliseconds.
const RETRY_JITTER_MS: u64 = 50;

/// The service that forwards a request to the Mixpeek API.
///
/// Cheap to clone (one reference count): hyper clones the whole stack for
/// every request.
#[derive(Clone)]
pub struct Upstream {
    client: Arc<HttpClient>,
    target: Arc<Target>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("authority", &self.target.authority)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A client for `config.base_url`, with rustls (ring, webpki roots) for
    /// `https://`.
    pub fn new(config: &UpstreamConfig) -> Result<Self, BoxError> {
        let scheme = config
            .base_url
            .scheme()
            .cloned()
            .ok_or("upstream.base_url has no scheme")?;
        let authority = config
            .base_url
            .authority()
            .cloned()
            .ok_or("upstream.base_url has no host")?;
        let prefix = config.base_url.path().trim_end_matches('/').to_string();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeout.min(Duration::from_secs(10))));
        let tls = crate::config::tls::client_config(config.ca_file.as_deref())?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = pooled(https.clone());
        let fresh = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(https.clone());
        Ok(Self {
            client: Arc::new(client),
            target: Arc::new(Target {
                scheme,
                authority,
                prefix,
                api_key: config.api_key.clone(),
                body_idle: config.timeout,
                fresh,
                connector: https,
                retries: AtomicU64::new(0),
            }),
        })
    }

    /// The same upstream with a pool of connections of its own (one per
    /// serving thread), sharing everything else, counters included.
    pub fn with_own_pool(&self) -> Self {
        Self {
            client: Arc::new(pooled(self.target.connector.clone())),
            target: self.target.clone(),
        }
    }

    /// Upstream calls retried after a connection failure.
    pub fn retries(&self) -> u64 {
        self.target.retries.load(Ordering::Relaxed)
    }

    /// Turns a client's request into the request sent upstream.
    pub fn build_request(&self, request: Request<Body>) -> Result<Request<Body>, GatewayError> {
        let (mut parts, body) = request.into_parts();
        let namespace = EffectiveNamespace::of(&parts.extensions)
            .ok_or(GatewayError::Internal("no namespace resolved"))?;
        let namespace = HeaderValue::from_str(namespace.as_str())
            .map_err(|_| GatewayError::Internal("namespace is not a header value"))?;

        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let path_and_query = if self.target.prefix.is_empty() {
            path_and_query
        } else {
            PathAndQuery::try_from(format!("{}{}", self.target.prefix, path_and_query))
                .map_err(|_| GatewayError::BadRequest("invalid request target".into()))?
        };
        parts.uri = Uri::builder()
            .scheme(self.target.scheme.clone())
            .authority(self.target.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| GatewayError::BadRequest("invalid request target".into()))?;
        // The pooled client picks HTTP/2 by ALPN; the client's own version
        // has nothing to do with the upstream connection.
        parts.version = Version::HTTP_11;

        let headers = &mut parts.headers;
        remove_hop_by_hop(headers);
        remove_look_alikes(headers);
        // The request's id goes upstream: a generated one was not in the
        // headers yet, and a client's may just have been stripped as
        // hop-by-hop (`Connection: x-request-id`).
        if let Some(id) = RequestContext::of(&parts.extensions).and_then(RequestContext::request_id)
        {
            crate::context::set_request_id_if_absent(headers, id);
        }
        headers.remove(header::HOST);
        headers.remove(header::EXPECT);
        headers.insert(
            header::AUTHORIZATION,
            self.target.api_key.authorization().clone(),
        );
        headers.insert(X_NAMESPACE.clone(), namespace);
        Ok(Request::from_parts(parts, body))
    }
}

impl tower::Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let request = match self.build_request(request) {
            Ok(request) => request,
            Err(error) => return future::ready(Err(error.into())).boxed(),
        };
        let body_idle = self.target.body_idle;
        let context = RequestContext::of(request.extensions()).map(|c| c.observed().clone());
        let started = Instant::now();
        let record = move |result: &Result<Response<Incoming>, legacy::Error>| {
            if let Some(context) = &context {
                let status = match result {
                    Ok(response) => response.status().as_u16(),
                    // The client's body broke the call: not upstream's failure.
                    Err(error) if is_client_fault(error) => return,
                    Err(_) => 0,
                };
                context.set_upstream(status, started.elapsed());
            }
        };
        let Some(replay) = Replay::of(&request) else {
            return self
                .client
                .request(request)
                .map(move |result| {
                    record(&result);
                    finish(result, body_idle)
                })
                .boxed();
        };
        let first = self.client.request(request);
        let target = self.target.clone();
        async move {
            let result = match first.await {
                Err(error) if retryable(&error) => {
                    target.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, "upstream connection failed before a response; retrying once");
                    tokio::time::sleep(backoff()).await;
                    target.fresh.request(replay.into_request()).await
                }
                result => result,
            };
            record(&result);
            finish(result, body_idle)
        }
        .boxed()
    }
}

/// Whether a failed call failed on the client's own request body (over the
/// limit, malformed, cut short).
fn is_client_fault(error: &legacy::Error) -> bool {
    matches!(
        crate::error::classify(error),
        GatewayError::BadRequest(_) | GatewayError::PayloadTooLarge
    )
}

/// What it takes to send a bodiless `GET` or `HEAD` again.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    /// Only `GET` and `HEAD` with an empty body are ever replayed.
    fn of(request: &Request<Body>) -> Option<Self> {
        let idempotent = matches!(*request.method(), Method::GET | Method::HEAD);
        let empty = http_body::Body::size_hint(request.body()).exact() == Some(0);
        (idempotent && empty).then(|| Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
        })
    }

    fn into_request(self) -> Request<Body> {
        let mut request = Request::new(body::empty());
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.headers_mut() = self.headers;
        request
    }
}

/// True when the call failed before upstream sent any response byte, in a
/// way a new connection may fix: the connection could not be made, or it
/// was closed or reset before the response began.
fn retryable(error: &legacy::Error) -> bool {
    if error.is_connect() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(err) = source {
        if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() || hyper.is_canceled() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// A short pause with jitter, so that retries after a shared failure do not
/// arrive together.
fn backoff() -> Duration {
    let random = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    RETRY_BACKOFF + Duration::from_millis(random % RETRY_JITTER_MS)
}

/// Prepares an upstream response for the client: hop-by-hop headers out
/// (the cache layer adds `X-Cache`), and a body that fails if upstream
/// goes silent for `body_idle` mid-stream, so a stalled upstream can never
/// hold a client forever.
fn finish(
    result: Result<Response<Incoming>, legacy::Error>,
    body_idle: Duration,
) -> Result<Response<Body>, BoxError> {
    let mut response = result?;
    let headers = response.headers_mut();
    remove_hop_by_hop(headers);
    Ok(response.map(|incoming| body::boxed(TimeoutBody::new(body_idle, incoming))))
}

/// The headers the gateway itself sets on every upstream request (the
/// request id: the client's when sane, see [`crate::layers::request_id`]).
const GATEWAY_SET: [&str; 3] = ["authorization", "x-namespace", "x-request-id"];

/// Whether `name` is not one of the gateway's own headers but reads as one
/// once `_` is read as `-` (names are lowercase already): CGI and WSGI
/// stacks fold `HTTP_X_NAMESPACE` from both spellings, so a client's
/// `X_Namespace: ns_a` beside the gateway's `x-namespace: ns_b` could win.
fn is_look_alike(name: &str) -> bool {
    let name = name.as_bytes();
    name.contains(&b'_')
        && GATEWAY_SET.iter().any(|own| {
            own.len() == name.len()
                && own
                    .bytes()
                    .zip(name)
                    .all(|(own, &c)| own == if c == b'_' { b'-' } else { c })
        })
}

/// Drops every request header that looks like one the gateway sets
/// ([`is_look_alike`]).
fn remove_look_alikes(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| is_look_alike(name.as_str())) {
        return;
    }
    let found: Vec<header::HeaderName> = headers
        .keys()
        .filter(|name| is_look_alike(name.as_str()))
        .cloned()
        .collect();
    for name in found {
        headers.remove(name);
    }
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1, including every header
/// that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| header::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientConfig;
    use crate::context::AuthenticatedClient;

    fn upstream(base: &str) -> Upstream {
        let config = UpstreamConfig {
            base_url: base.parse().unwrap(),
            api_key_env: "K".into(),
            api_key: ApiKey::new("sk_real").unwrap(),
            timeout: Duration::from_secs(1),
            ca_file: None,
            max_requests_per_second: None,
            queue_timeout: Duration::from_secs(2),
            max_in_flight: 256,
        };
        Upstream::new(&config).unwrap()
    }

    fn namespaced(uri: &str) -> Request<Body> {
        let client = Arc::new(ClientConfig {
            name: "t".into(),
            key_sha256: [0; 32],
            namespace: "ns_t".into(),
            allowed_namespaces: vec!["ns_t".into()],
            rate_limit: None,
            max_in_flight: None,
        });
        let mut request = Request::builder()
            .uri(uri)
            .header("host", "gateway.internal")
            .header("connection", "keep-alive, x-secret-hop")
            .header("x-secret-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-request-id", "abc")
            .body(body::empty())
            .unwrap();
        let namespace = EffectiveNamespace::new(client.clone(), 0).unwrap();
        AuthenticatedClient(client).attach_to(&mut request);
        RequestContext::attach(&mut request).set_namespace(namespace);
        request
    }

    #[tokio::test]
    async fn builds_target_headers_and_key() {
        let up = upstream("http://127.0.0.1:9/base/");
        let request = up.build_request(namespaced("/v1/a%2Fb?x=1&y=%20")).unwrap();
        assert_eq!(
            request.uri().to_string(),
            "http://127.0.0.1:9/base/v1/a%2Fb?x=1&y=%20"
        );
        let h = request.headers();
        assert_eq!(h["authorization"], "Bearer sk_real");
        assert_eq!(h["x-namespace"], "ns_t");
        assert_eq!(h["x-request-id"], "abc");
        for gone in ["host", "connection", "x-secret-hop", "keep-alive"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
    }

    #[tokio::test]
    async fn look_alikes_of_the_gateways_own_headers_never_go_upstream() {
        let up = upstream("http://127.0.0.1:9/");
        let mut request = namespaced("/v1/x");
        for (name, value) in [
            ("x_namespace", "ns_other"),
            ("x_request_id", "forged"),
            ("x-namespace_", "kept: not a look-alike"),
            ("x_custom", "kept"),
        ] {
            request.headers_mut().append(
                header::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let built = up.build_request(request).unwrap();
        let h = built.headers();
        assert!(h.get("x_namespace").is_none());
        assert!(h.get("x_request_id").is_none());
        assert_eq!(h["x-namespace"], "ns_t");
        assert_eq!(h["x-request-id"], "abc");
        assert_eq!(h["x-namespace_"], "kept: not a look-alike");
        assert_eq!(h["x_custom"], "kept");
        assert!(is_look_alike("x_request-id"));
        assert!(!is_look_alike("x-request-id"));
    }

    #[tokio::test]
    async fn the_request_id_goes_upstream_even_when_named_hop_by_hop() {
        let up = upstream("http://127.0.0.1:9/");
        // A generated id (not in the headers), and a client's id that its
        // own `Connection` header names as hop-by-hop.
        for (header, connection) in [(None, None), (Some("abc"), Some("x-request-id"))] {
            let mut request = namespaced("/v1/x");
            request.headers_mut().remove("x-request-id");
            if let Some(id) = header {
                request
                    .headers_mut()
                    .insert("x-request-id", id.parse().unwrap());
            }
            if let Some(connection) = connection {
                request
                    .headers_mut()
                    .insert("connection", connection.parse().unwrap());
            }
            let id = header.unwrap_or("0123456789abcdef0123456789abcdef");
            RequestContext::attach(&mut request).set_request_id(id.parse().unwrap());
            let built = up.build_request(request).unwrap();
            assert_eq!(built.headers()["x-request-id"], id);
            assert!(built.headers().get("connection").is_none());
        }
    }

    #[test]
    fn only_bodiless_get_and_head_are_replayable() {
        let request = |method: Method, body: Body| {
            Request::builder()
                .method(method)
                .uri("http://u/v1/x")
                .header("x-namespace", "ns")
                .body(body)
                .unwrap()
        };
        let replay = Replay::of(&request(Method::GET, body::empty())).unwrap();
        let again = replay.into_request();
        assert_eq!(again.method(), Method::GET);
        assert_eq!(again.uri(), "http://u/v1/x");
        assert_eq!(again.headers()["x-namespace"], "ns");
        assert!(Replay::of(&request(Method::HEAD, body::full(""))).is_some());
        assert!(Replay::of(&request(Method::GET, body::full("x"))).is_none());
        assert!(Replay::of(&request(Method::POST, body::empty())).is_none());
        assert!(Replay::of(&request(Method::DELETE, body::empty())).is_none());
    }

    #[test]
    fn backoff_is_short_and_jittered() {
        let waits: Vec<Duration> = (0..20).map(|_| backoff()).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= RETRY_BACKOFF
                && *w < RETRY_BACKOFF + Duration::from_millis(RETRY_JITTER_MS)));
        assert!(waits.iter().any(|w| *w != waits[0]));
    }

    #[tokio::test]
    async fn refuses_without_namespace() {
        let up = upstream("http://127.0.0.1:9");
        let request = Request::builder().uri("/v1/x").body(body::empty()).unwrap();
        assert!(matches!(
            up.build_request(request),
            Err(GatewayError::Internal(_))
        ));
    }
}
