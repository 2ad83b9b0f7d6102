//! Where cached responses live: a moka cache bounded by weighted bytes.
//!
//! Execution details live for `cache.ttl_seconds`; list results (only when
//! `coalesce.list_ttl_ms > 0`) for that much shorter time, in the same byte
//! budget. The weigher counts body, headers and key, so `cache.max_bytes`
//! bounds what the entries really hold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use moka::notification::RemovalCause;
use moka::Expiry;

use super::key::{BodyKey, CacheKey, DetailKey};
use super::route::is_at_or_below;
use crate::body::{self, Body};
use crate::cache::status::{CacheStatus, X_CACHE};
use crate::clock;

/// Fixed per-entry overhead counted by the weigher: moka's nodes, the
/// `Entry` struct and the allocator's rounding of the body. With the key's
/// own weight (40 bytes plus its strings) it matches what 100 000 ~900-byte
/// entries really take (`examples/store_mem.rs`, mimalloc: 597 bytes per
/// entry beyond the body), so `cache.max_bytes` bounds real memory, not
/// just body bytes.
const ENTRY_OVERHEAD: usize = 512;

/// A stored response: status, content type and body, nothing else.
/// 56 bytes beside its body: one is held per cached entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The upstream status (200 for everything stored today).
    pub status: StatusCode,
    /// The upstream `Content-Type`.
    content_type: StoredType,
    /// The body; shared, never copied on a hit.
    pub body: Bytes,
    /// When it was stored on the coarse clock, for `Age` on the hot path.
    stored_secs: u32,
}

/// The content type of an entry: the API's own is a shared constant (no
/// allocation, 16 bytes instead of a 40-byte `HeaderValue` per entry),
/// anything else an owned copy.
#[derive(Clone, Debug)]
enum StoredType {
    Absent,
    Json,
    Other(Box<HeaderValue>),
}

const JSON: &str = "application/json";

impl StoredType {
    fn new(value: Option<&HeaderValue>) -> Self {
        match value {
            None => Self::Absent,
            Some(value) if value.as_bytes() == JSON.as_bytes() => Self::Json,
            // A copy: a value parsed by hyper is a slice of its read
            // buffer, which an entry must not keep alive.
            Some(value) => HeaderValue::from_bytes(value.as_bytes())
                .map_or(Self::Absent, |value| Self::Other(Box::new(value))),
        }
    }

    fn get(&self) -> Option<HeaderValue> {
        match self {
            Self::Absent => None,
            Self::Json => Some(HeaderValue::from_static(JSON)),
            Self::Other(value) => Some((**value).clone()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Absent | Self::Json => 0,
            Self::Other(value) => std::mem::size_of::<HeaderValue>() + value.len(),
        }
    }
}

impl Entry {
    /// Builds an entry stored now.
    pub fn new(status: StatusCode, content_type: Option<HeaderValue>, body: Bytes) -> Self {
        Self {
            status,
            content_type: StoredType::new(content_type.as_ref()),
            body,
            stored_secs: u32::try_from(clock::now_secs()).unwrap_or(u32::MAX),
        }
    }

    /// The upstream `Content-Type`.
    pub fn content_type(&self) -> Option<HeaderValue> {
        self.content_type.get()
    }

    /// The response for a hit: `X-Cache: HIT` and `Age` in seconds.
    pub fn to_response(&self) -> Response<Body> {
        let mut response = Response::new(body::full(self.body.clone()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if let Some(content_type) = self.content_type.get() {
            headers.insert(header::CONTENT_TYPE, content_type);
        }
        headers.insert(X_CACHE.clone(), CacheStatus::Hit.header_value());
        let age = clock::now_secs().saturating_sub(u64::from(self.stored_secs));
        headers.insert(header::AGE, clock::age_header(age));
        response
    }

    fn weight(&self, key: &CacheKey) -> u32 {
        let bytes = self.body.len() + self.content_type.len() + key.weight() + ENTRY_OVERHEAD;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// Per-kind lifetimes.
struct Lifetimes {
    detail: Duration,
    list: Duration,
}

impl Lifetimes {
    fn of(&self, key: &CacheKey) -> Duration {
        match key.body() {
            BodyKey::Detail => self.detail,
            BodyKey::Absent | BodyKey::Json(_) => self.list,
        }
    }
}

impl Expiry<CacheKey, Entry> for Lifetimes {
    fn expire_after_create(&self, key: &CacheKey, _: &Entry, _: Instant) -> Option<Duration> {
        Some(self.of(key))
    }

    // A refresh (no-cache) starts a new lifetime.
    fn expire_after_update(
        &self,
        key: &CacheKey,
        _: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.of(key))
    }
}

/// moka's key hasher: foldhash with a random per-store seed, a quarter of
/// the instructions of the standard library's SipHash on the hit path
/// (hashbrown's default; keys are namespace and path, and only terminal
/// executions that exist upstream are ever stored).
type Hasher = foldhash::quality::RandomState;

/// The cache.
#[derive(Clone)]
pub struct Store {
    cache: moka::sync::Cache<CacheKey, Entry, Hasher>,
    evictions: Arc<AtomicU64>,
    /// Whether list results may be stored.
    lists: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.cache.entry_count())
            .field("weighted_bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl Store {
    /// A store bounded by `max_bytes`; it keeps list results only when
    /// `list_ttl` is given.
    ///
    /// With execution details alone (the default) every entry has the same
    /// lifetime, and moka's per-entry expiry (a timer-wheel node per entry,
    /// ~40 bytes) is not needed: one time-to-live does.
    pub fn new(max_bytes: u64, detail_ttl: Duration, list_ttl: Option<Duration>) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counter = evictions.clone();
        let builder = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, entry: &Entry| entry.weight(key));
        let builder = match list_ttl {
            None => builder.time_to_live(detail_ttl),
            Some(list) => builder.expire_after(Lifetimes {
                detail: detail_ttl,
                list,
            }),
        };
        let cache = builder
            .support_invalidation_closures()
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build_with_hasher(Hasher::default());
        Self {
            cache,
            evictions,
            lists: list_ttl.is_some(),
        }
    }

    /// The entry for `key` (a [`CacheKey`], or a detail's borrowed
    /// [`DetailKey`]), if stored and not expired.
    pub fn get<Q>(&self, key: &Q) -> Option<Entry>
    where
        Q: moka::Equivalent<CacheKey> + std::hash::Hash + ?Sized,
    {
        self.cache.get(key)
    }

    /// Stores (or refreshes) an entry. A list result is not stored when
    /// lists have no lifetime here (it would get the details' one).
    pub fn insert(&self, key: CacheKey, entry: Entry) {
        if self.lists || key.body() == BodyKey::Detail {
            self.cache.insert(key, entry);
        }
    }

    /// Removes one entry; true when there was one.
    pub fn remove(&self, key: &CacheKey) -> bool {
        self.cache.remove(key).is_some()
    }

    /// Drops the entries of `namespace` at and below `path`.
    ///
    /// moka applies such a predicate lazily and checks it on every read
    /// until a maintenance pass has scanned all entries, so routes use it
    /// only for the rare `DELETE` of a whole retriever.
    pub fn invalidate_below(&self, namespace: &str, path: &str) {
        let namespace = namespace.to_string();
        let path = path.to_string();
        // Only fails when invalidation closures are disabled, and they are
        // enabled above.
        let _ = self.cache.invalidate_entries_if(move |key, _| {
            *key.namespace == *namespace && is_at_or_below(&key.path, &path)
        });
    }

    /// Drops the execution detail of `namespace` at `path`: one key, no scan.
    pub fn invalidate_exact(&self, namespace: &str, path: &str) {
        self.cache.invalidate(&DetailKey { namespace, path });
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Applies pending maintenance (evictions, invalidations) now.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// Number of entries (approximate until maintenance runs).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Weighted bytes held (approximate until maintenance runs).
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Entries evicted to stay within `max_bytes`.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_lifetime_the_config_allows_still_builds_a_store() {
        let longest = Duration::from_secs(crate::config::MAX_CACHE_TTL_SECONDS);
        for list_ttl in [None, Some(Duration::from_millis(50))] {
            let store = Store::new(1 << 20, longest, list_ttl);
            store.insert(key("ns", "/v1/retrievers/executions/e"), entry(10));
            assert!(store
                .get(&key("ns", "/v1/retrievers/executions/e"))
                .is_some());
        }
    }

    fn key(ns: &str, path: &str) -> CacheKey {
        CacheKey::detail(ns, path.into())
    }

    fn entry(len: usize) -> Entry {
        Entry::new(StatusCode::OK, None, Bytes::from(vec![b'x'; len]))
    }

    fn list_key(ns: &str) -> CacheKey {
        CacheKey::list(
            ns,
            "/v1/retrievers/executions/list".into(),
            None,
            &http::HeaderMap::new(),
            b"",
        )
        .unwrap()
    }

    #[test]
    fn a_detail_is_found_by_its_borrowed_parts_in_its_own_namespace_only() {
        let store = Store::new(
            1 << 20,
            Duration::from_secs(60),
            Some(Duration::from_secs(60)),
        );
        let path = "/v1/retrievers/executions/list";
        store.insert(key("team-a", path), entry(10));
        let borrowed = |namespace| DetailKey { namespace, path };
        assert!(store.get(&borrowed("team-a")).is_some());
        assert!(store.get(&borrowed("team-b")).is_none());
        // A list query on the same path and namespace is another entry.
        store.invalidate_exact("team-a", path);
        store.insert(list_key("team-a"), entry(10));
        assert!(store.get(&list_key("team-a")).is_some());
        assert!(store.get(&borrowed("team-a")).is_none());
    }

    // Expiry has no event to await: the test waits out short lifetimes.
    #[tokio::test]
    async fn details_alone_share_one_lifetime_and_lists_are_not_kept() {
        let store = Store::new(1 << 20, Duration::from_millis(150), None);
        store.insert(key("a", "/d"), entry(10));
        store.insert(list_key("a"), entry(10));
        assert!(store.get(&key("a", "/d")).is_some());
        assert!(store.get(&list_key("a")).is_none());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.get(&key("a", "/d")).is_none());
    }

    #[tokio::test]
    async fn lists_expire_on_their_own_lifetime() {
        let store = Store::new(
            1 << 20,
            Duration::from_secs(60),
            Some(Duration::from_millis(150)),
        );
        store.insert(key("a", "/d"), entry(10));
        store.insert(list_key("a"), entry(10));
        assert!(store.get(&list_key("a")).is_some());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.get(&list_key("a")).is_none());
        assert!(store.get(&key("a", "/d")).is_some());
    }

    #[tokio::test]
    async fn namespaces_are_separate_and_prefix_invalidation_is_scoped() {
        let store = Store::new(
            1 << 20,
            Duration::from_secs(60),
            Some(Duration::from_secs(1)),
        );
        store.insert(key("a", "/v1/retrievers/r1/executions/e1"), entry(10));
        store.insert(key("b", "/v1/retrievers/r1/executions/e1"), entry(10));
        store.insert(key("a", "/v1/retrievers/r10/executions/e1"), entry(10));
        assert!(store
            .get(&key("c", "/v1/retrievers/r1/executions/e1"))
            .is_none());
        store.invalidate_below("a", "/v1/retrievers/r1");
        assert!(store
            .get(&key("a", "/v1/retrievers/r1/executions/e1"))
            .is_none());
        assert!(store
            .get(&key("b", "/v1/retrievers/r1/executions/e1"))
            .is_some());
        assert!(store
            .get(&key("a", "/v1/retrievers/r10/executions/e1"))
            .is_some());
    }

    #[tokio::test]
    async fn byte_bound_holds() {
        let store = Store::new(100_000, Duration::from_secs(60), None);
        for i in 0..200 {
            store.insert(
                key("a", &format!("/v1/retrievers/executions/e{i}")),
                entry(1000),
            );
        }
        store.run_pending_tasks();
        assert!(
            store.weighted_bytes() <= 100_000,
            "{}",
            store.weighted_bytes()
        );
        assert!(store.evictions() > 0);
    }

    #[tokio::test]
    async fn hit_response_has_headers() {
        let e = entry(3);
        let e = Entry::new(
            e.status,
            Some(HeaderValue::from_static("application/json")),
            e.body,
        );
        let response = e.to_response();
        assert_eq!(response.headers()["x-cache"], "HIT");
        assert_eq!(response.headers()["age"], "0");
        assert_eq!(response.headers()["content-type"], "application/json");
    }

    #[test]
    fn entries_stay_small_and_keep_any_content_type() {
        assert_eq!(std::mem::size_of::<Entry>(), 56);
        let other = HeaderValue::from_static("text/plain; charset=utf-8");
        for content_type in [None, Some(HeaderValue::from_static(JSON)), Some(other)] {
            let e = Entry::new(StatusCode::OK, content_type.clone(), Bytes::new());
            assert_eq!(e.content_type(), content_type);
            assert_eq!(
                e.to_response().headers().get(header::CONTENT_TYPE),
                content_type.as_ref()
            );
        }
    }
}
