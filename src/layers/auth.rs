//! Client authentication: who is calling.
//!
//! A team presents its gateway key as `Authorization: Bearer <key>`, exactly
//! as the Mixpeek SDKs send an API key. The gateway stores only SHA-256
//! digests of the keys (like an htpasswd file), hashes the presented key and
//! compares it with every configured digest in constant time. On success the
//! client's own `Authorization` header is removed — it must never reach
//! upstream — and the client is recorded in the request's
//! [`RequestContext`] as its [`AuthenticatedClient`] for the layers below.
//!
//! SHA-256 of the key costs more than the rest of a cache hit, so each
//! registry remembers, per client, a 128-bit keyed hash (SipHash under a
//! secret random key, over two domain-separated inputs) of the key that last matched its
//! digest. A later request whose key hashes to a remembered value is that
//! client without hashing it again. The raw key is never stored; the keyed
//! hash cannot be computed or matched without the process's secret keys; a
//! reload builds a new registry and so forgets everything.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{header, Request};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use arc_swap::ArcSwap;

use crate::config::ClientConfig;
use crate::context::{AuthenticatedClient, RequestContext};
use crate::error::GatewayError;
use crate::layers::check::Check;
use crate::telemetry::metrics::ClientLabel;

/// The clients in force, swappable while requests read them (a reload
/// swaps in a new registry).
pub type Clients = Arc<ArcSwap<ClientRegistry>>;

/// The configured clients, looked up by the digest of their key.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    clients: Vec<Arc<ClientConfig>>,
    /// Each client's name as a shared metric and log label.
    labels: Vec<ClientLabel>,
    /// Per client, the keyed hash of its key once seen (0: not yet).
    seen: Box<[[AtomicU64; 2]]>,
    /// SipHash with a secret random key, used twice (domain-separated)
    /// for a 128-bit value.
    hasher: RandomState,
}

impl ClientRegistry {
    /// Builds the registry from the configured clients.
    pub fn new(clients: impl IntoIterator<Item = ClientConfig>) -> Self {
        let clients: Vec<Arc<ClientConfig>> = clients.into_iter().map(Arc::new).collect();
        let labels = clients.iter().map(|c| ClientLabel::new(&c.name)).collect();
        let seen = clients
            .iter()
            .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
            .collect();
        Self {
            clients,
            labels,
            seen,
            hasher: RandomState::new(),
        }
    }

    /// The 128-bit keyed hash of a presented key, never zero in either half:
    /// SipHash of `key ‖ 0` and of `key ‖ 1`. The key is absorbed once and
    /// the state cloned for the two domain-separated endings (half the
    /// work of hashing it twice).
    fn keyed_hash(&self, key: &[u8]) -> [u64; 2] {
        let mut absorbed = self.hasher.build_hasher();
        absorbed.write(key);
        [0u8, 1].map(|half| {
            let mut hasher = absorbed.clone();
            hasher.write_u8(half);
            hasher.finish().max(1)
        })
    }

    /// The client whose key this is, if any.
    ///
    /// Every digest is compared, whatever matched earlier, so the time taken
    /// does not tell how many clients a key was checked against.
    pub fn lookup(&self, key: &[u8]) -> Option<&Arc<ClientConfig>> {
        self.lookup_labelled(key).map(|(client, _)| client)
    }

    /// Like [`lookup`](Self::lookup), with the client's label.
    pub fn lookup_labelled(&self, key: &[u8]) -> Option<(&Arc<ClientConfig>, &ClientLabel)> {
        let hash = self.keyed_hash(key);
        let mut found = None;
        // Every slot is read, whatever matched, as with the digests below.
        for (i, seen) in self.seen.iter().enumerate() {
            let seen = [
                seen[0].load(Ordering::Relaxed),
                seen[1].load(Ordering::Relaxed),
            ];
            if seen == hash {
                found = Some(i);
            }
        }
        if found.is_none() {
            let digest: [u8; 32] = Sha256::digest(key).into();
            for (i, client) in self.clients.iter().enumerate() {
                if bool::from(client.key_sha256.ct_eq(&digest)) {
                    found = Some(i);
                }
            }
            if let Some(i) = found {
                // Always the same value for a client (one digest, one key),
                // so a racing reader sees it, nothing, or half of it: a miss.
                self.seen[i][0].store(hash[0], Ordering::Relaxed);
                self.seen[i][1].store(hash[1], Ordering::Relaxed);
            }
        }
        found.map(|i| (&self.clients[i], &self.labels[i]))
    }

    /// The clients' names, as shared labels.
    pub fn names(&self) -> impl Iterator<Item = &ClientLabel> {
        self.labels.iter()
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when no client is configured.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// Extracts the token of a `Bearer` credential (scheme case-insensitive).
pub fn bearer_token(value: &http::HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let (scheme, rest) = bytes.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.strip_prefix(b" ")?.trim_ascii();
    (!token.is_empty() && !token.contains(&b' ')).then_some(token)
}

/// The authentication [`Check`].
#[derive(Clone, Debug)]
pub struct Authenticate {
    clients: Clients,
}

impl Authenticate {
    /// Authenticates against the clients in force (swapped on reload).
    pub fn new(clients: Clients) -> Self {
        Self { clients }
    }
}

impl Check for Authenticate {
    fn check<B>(&self, request: &mut Request<B>) -> Result<(), GatewayError> {
        // The request guard has already refused more than one header.
        let value = request
            .headers_mut()
            .remove(header::AUTHORIZATION)
            .ok_or(GatewayError::Unauthorized("missing gateway key"))?;
        let token = bearer_token(&value).ok_or(GatewayError::Unauthorized(
            "malformed Authorization header: expected 'Bearer <gateway key>'",
        ))?;
        let registry = self.clients.load();
        let (client, label) = registry
            .lookup_labelled(token)
            .ok_or(GatewayError::Unauthorized("invalid gateway key"))?;
        let context = RequestContext::attach(request);
        context.observed().set_client(label);
        context.set_caller(AuthenticatedClient(client.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Clients {
        let client = |name: &str, key: &str| ClientConfig {
            name: name.into(),
            key_sha256: Sha256::digest(key.as_bytes()).into(),
            namespace: format!("ns_{name}"),
            allowed_namespaces: vec![format!("ns_{name}").into()],
            rate_limit: None,
            max_in_flight: None,
        };
        Arc::new(arc_swap::ArcSwap::from_pointee(ClientRegistry::new([
            client("a", "key-a"),
            client("b", "key-b"),
        ])))
    }

    fn request(auth: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().uri("/v1/x");
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        builder.body(()).unwrap()
    }

    fn check(auth: Option<&str>) -> Result<Request<()>, GatewayError> {
        let mut request = request(auth);
        Authenticate::new(registry()).check(&mut request)?;
        Ok(request)
    }

    #[test]
    fn known_key_authenticates_and_is_removed() {
        let request = check(Some("Bearer key-b")).unwrap();
        assert!(request.headers().get(header::AUTHORIZATION).is_none());
        let client = AuthenticatedClient::of(&request).unwrap();
        assert_eq!(client.0.name, "b");
        assert_eq!(
            AuthenticatedClient::of(&check(Some("bearer key-a")).unwrap())
                .unwrap()
                .0
                .name,
            "a"
        );
    }

    #[test]
    fn keyed_hash_halves_are_domain_separated() {
        let clients = registry();
        let registry = clients.load();
        let [a0, a1] = registry.keyed_hash(b"key-a");
        assert_ne!(a0, a1);
        assert_eq!(registry.keyed_hash(b"key-a"), [a0, a1]);
        // A key ending in a half's tag byte is a different input.
        for other in [&b"key-a\0"[..], b"key-a\x01", b"key-", b"key-b"] {
            let [b0, b1] = registry.keyed_hash(other);
            assert!(b0 != a0 && b1 != a1 && b0 != a1 && b1 != a0);
        }
        // Another registry (a reload) has another secret key.
        assert_ne!(
            ClientRegistry::new(Vec::new()).keyed_hash(b"key-a"),
            [a0, a1]
        );
    }

    #[test]
    fn remembered_keys_resolve_to_their_client_and_nothing_else() {
        let clients = registry();
        let registry = clients.load();
        // First sight hashes with SHA-256 and remembers; the second is the memo.
        for _ in 0..2 {
            assert_eq!(registry.lookup(b"key-a").unwrap().name, "a");
            assert_eq!(registry.lookup(b"key-b").unwrap().name, "b");
            assert!(registry.lookup(b"key-c").is_none());
            assert!(registry.lookup(b"key-a ").is_none());
            assert!(registry.lookup(b"").is_none());
        }
        let remembered = |i: usize| {
            registry.seen[i]
                .iter()
                .all(|h| h.load(Ordering::Relaxed) != 0)
        };
        assert!(remembered(0) && remembered(1));
        // A wrong key is never remembered: only a digest match stores.
        let fresh = ClientRegistry::new([]);
        assert!(fresh.lookup(b"key-a").is_none());
        assert!(fresh.seen.is_empty());
    }

    #[test]
    fn missing_wrong_and_malformed_keys_are_401() {
        for auth in [
            None,
            Some("Bearer nope"),
            Some("Basic a2V5LWE="),
            Some("Bearer"),
            Some("Bearer "),
            Some("key-a"),
        ] {
            assert!(
                matches!(check(auth), Err(GatewayError::Unauthorized(_))),
                "{auth:?}"
            );
        }
    }
}
