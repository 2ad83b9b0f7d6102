//! What the layers learn about a request, and the headers that carry it.
//!
//! The request's [`RequestContext`] is its one request extension: the
//! server creates it with the peer's address, the observe layer adds the
//! request id, authentication the [`AuthenticatedClient`], namespace
//! resolution the [`EffectiveNamespace`], and the cache and upstream what
//! the access log reports ([`Observed`]). It sits at the bottom of the
//! crate: every layer reads and writes it, and it depends on no layer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::HeaderName;
use http::{Extensions, HeaderMap, HeaderValue, Request};

use crate::config::ClientConfig;
use crate::telemetry::metrics::{ClientLabel, RouteClass};

/// The prefix of the gateway's own routes, which no upstream route may
/// use: answered by [`crate::admin::endpoints`], never forwarded.
pub const GATEWAY_PREFIX: &str = "/_gateway/";

/// What the layers learn about a request, in its one request extension:
/// the server creates it with the peer's address (the observe layer when
/// there is none: in-process callers); authentication adds the caller,
/// namespace resolution the namespace, and the layers below what the
/// access log reports ([`Observed`]). One extension instead of one per
/// fact: each insert into a request's extension map is a boxed allocation,
/// and a fourth one rehashes the map, on every request.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    peer: Option<SocketAddr>,
    request_id: Option<HeaderValue>,
    caller: Option<AuthenticatedClient>,
    namespace: Option<EffectiveNamespace>,
    observed: Arc<Observed>,
}

impl RequestContext {
    /// The context of a request from `peer`.
    pub fn with_peer(peer: SocketAddr) -> Self {
        Self {
            peer: Some(peer),
            ..Self::default()
        }
    }

    /// The context of a request, if it has one.
    pub fn of(extensions: &Extensions) -> Option<&Self> {
        extensions.get::<Self>()
    }

    /// The context of a request, attached first if it has none.
    pub fn attach<B>(request: &mut Request<B>) -> &mut Self {
        request.extensions_mut().get_or_insert_default::<Self>()
    }

    /// The address the request came from; `None` in process.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The request's `X-Request-Id`, once assigned; when the client did
    /// not send a sane one, it is not in the request's headers.
    pub fn request_id(&self) -> Option<&HeaderValue> {
        self.request_id.as_ref()
    }

    /// Records the request's `X-Request-Id`.
    pub fn set_request_id(&mut self, id: HeaderValue) {
        self.request_id = Some(id);
    }

    /// Records who is calling.
    pub fn set_caller(&mut self, caller: AuthenticatedClient) {
        self.caller = Some(caller);
    }

    /// Who is calling, once authenticated.
    pub fn caller(&self) -> Option<&AuthenticatedClient> {
        self.caller.as_ref()
    }

    /// Records the namespace the request acts in.
    pub fn set_namespace(&mut self, namespace: EffectiveNamespace) {
        self.namespace = Some(namespace);
    }

    /// The namespace the request acts in, once resolved.
    pub fn namespace(&self) -> Option<&EffectiveNamespace> {
        self.namespace.as_ref()
    }

    /// What the access log and metrics will report, shared with the
    /// observe layer (which outlives the request).
    pub fn observed(&self) -> &Arc<Observed> {
        &self.observed
    }
}

/// What the observe layer reports about a request, filled in by the
/// layers below it while the request travels.
#[derive(Debug, Default)]
pub struct Observed {
    client: OnceLock<ClientLabel>,
    route: AtomicU8,
    upstream_status: AtomicU16,
    upstream_micros: AtomicU64,
}

impl Observed {
    /// Records the authenticated client.
    pub fn set_client(&self, label: &ClientLabel) {
        let _ = self.client.set(label.clone());
    }

    /// The authenticated client's label, once recorded.
    pub fn client(&self) -> Option<&ClientLabel> {
        self.client.get()
    }

    /// Records the route class.
    pub fn set_route(&self, route: RouteClass) {
        self.route.store(route as u8 + 1, Ordering::Relaxed);
    }

    /// Records the upstream call this request made (status 0: no response).
    pub fn set_upstream(&self, status: u16, latency: Duration) {
        self.upstream_micros.store(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.upstream_status.store(status, Ordering::Relaxed);
    }

    /// The route class recorded (pass-through until a layer says otherwise).
    pub fn route(&self) -> RouteClass {
        match self.route.load(Ordering::Relaxed) {
            1 => RouteClass::Detail,
            2 => RouteClass::List,
            4 => RouteClass::Gateway,
            _ => RouteClass::Passthrough,
        }
    }

    /// The upstream call this request made: its status and latency.
    pub fn upstream(&self) -> Option<(u16, Duration)> {
        let micros = self.upstream_micros.load(Ordering::Relaxed);
        let status = self.upstream_status.load(Ordering::Relaxed);
        (micros > 0 || status > 0).then(|| (status, Duration::from_micros(micros)))
    }
}

/// The client a request was authenticated as (kept in its
/// [`RequestContext`]).
#[derive(Clone, Debug)]
pub struct AuthenticatedClient(pub Arc<ClientConfig>);

impl AuthenticatedClient {
    /// The caller of `request`, once authenticated.
    pub fn of<B>(request: &Request<B>) -> Option<&Self> {
        RequestContext::of(request.extensions())?.caller()
    }

    /// Records `self` as the caller of `request`.
    pub fn attach_to<B>(self, request: &mut Request<B>) {
        RequestContext::attach(request).set_caller(self);
    }
}

/// Marks an upstream call the cache makes for every request that joined it
/// (a flight): it is charged to no client's share of the in-flight slots,
/// since its answer is read by the gateway, not by one client's socket,
/// and whoever led it, the others must not get that client's refusal.
#[derive(Clone, Copy, Debug)]
pub struct SharedCall;

/// The `X-Namespace` header.
pub static X_NAMESPACE: HeaderName = HeaderName::from_static("x-namespace");

/// The namespace a request acts in (kept in its [`RequestContext`]).
///
/// It is always one of the client's allowed namespaces, so it is kept as an
/// index into that list instead of a copy of the string.
#[derive(Clone, Debug)]
pub struct EffectiveNamespace {
    client: Arc<ClientConfig>,
    index: usize,
}

impl EffectiveNamespace {
    /// The `index`th of `client`'s allowed namespaces (0: its own
    /// `namespace`); `None` when it has no such namespace.
    pub fn new(client: Arc<ClientConfig>, index: usize) -> Option<Self> {
        (index < client.allowed_namespaces.len()).then_some(Self { client, index })
    }

    /// The namespace `request` acts in, once resolved.
    pub fn of(extensions: &http::Extensions) -> Option<&Self> {
        RequestContext::of(extensions)?.namespace()
    }

    /// The namespace.
    pub fn as_str(&self) -> &str {
        &self.client.allowed_namespaces[self.index]
    }

    /// The namespace, shared (no copy).
    pub fn shared(&self) -> std::sync::Arc<str> {
        self.client.allowed_namespaces[self.index].clone()
    }
}

/// The `X-Request-Id` header.
pub const X_REQUEST_ID: &str = "x-request-id";

/// The `X-Request-Id` header name, parsed once.
pub const X_REQUEST_ID_NAME: HeaderName = HeaderName::from_static(X_REQUEST_ID);

/// Sets `id` as the `X-Request-Id` of `headers` unless they have one.
pub fn set_request_id_if_absent(headers: &mut HeaderMap, id: &HeaderValue) {
    // One probe of the map, not a lookup and then an insert.
    if let http::header::Entry::Vacant(slot) = headers.entry(X_REQUEST_ID_NAME) {
        slot.insert(id.clone());
    }
}
