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

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{self, BoxFuture, FutureExt};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderMap, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{self, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_http::timeout::TimeoutBody;

use crate::body::{self, Body, BoxError};
use crate::cache_status::{CacheStatus, X_CACHE};
use crate::config::{ApiKey, UpstreamConfig};
use crate::error::GatewayError;
use crate::namespace::{EffectiveNamespace, X_NAMESPACE};

/// The pooled HTTP client used for every upstream call.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Where requests go and with which key.
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// Path prefix of `base_url` without a trailing slash; usually empty.
    prefix: String,
    api_key: ApiKey,
    /// Longest silence allowed between two frames of a response body.
    body_idle: Duration,
}

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
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Ok(Self {
            client: Arc::new(client),
            target: Arc::new(Target {
                scheme,
                authority,
                prefix,
                api_key: config.api_key.clone(),
                body_idle: config.timeout,
            }),
        })
    }

    /// Turns a client's request into the request sent upstream.
    pub fn build_request(&self, request: Request<Body>) -> Result<Request<Body>, GatewayError> {
        let (mut parts, body) = request.into_parts();
        let namespace = parts
            .extensions
            .get::<EffectiveNamespace>()
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
        match self.build_request(request) {
            Ok(request) => {
                let body_idle = self.target.body_idle;
                self.client
                    .request(request)
                    .map(move |result| finish(result, body_idle))
                    .boxed()
            }
            Err(error) => future::ready(Err(error.into())).boxed(),
        }
    }
}

/// Prepares an upstream response for the client: hop-by-hop headers out,
/// `X-Cache: BYPASS` in (the cache layer overrides it on cached routes), and
/// a body that fails if upstream goes silent for `body_idle` mid-stream, so
/// a stalled upstream can never hold a client forever.
fn finish(
    result: Result<Response<Incoming>, legacy::Error>,
    body_idle: Duration,
) -> Result<Response<Body>, BoxError> {
    let mut response = result?;
    let headers = response.headers_mut();
    remove_hop_by_hop(headers);
    headers.insert(X_CACHE.clone(), CacheStatus::Bypass.header_value());
    Ok(response.map(|incoming| body::boxed(TimeoutBody::new(body_idle, incoming))))
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
    use crate::auth::AuthenticatedClient;
    use crate::config::ClientConfig;

    fn upstream(base: &str) -> Upstream {
        let config = UpstreamConfig {
            base_url: base.parse().unwrap(),
            api_key_env: "K".into(),
            api_key: ApiKey::new("sk_real").unwrap(),
            timeout: Duration::from_secs(1),
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
        let _ = request.extensions_mut().insert(AuthenticatedClient(client));
        use tower::filter::Predicate;
        crate::namespace::ResolveNamespace.check(request).unwrap()
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
    async fn refuses_without_namespace() {
        let up = upstream("http://127.0.0.1:9");
        let request = Request::builder().uri("/v1/x").body(body::empty()).unwrap();
        assert!(matches!(
            up.build_request(request),
            Err(GatewayError::Internal(_))
        ));
    }
}
