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

use super::key::{BodyKey, CacheKey};
use super::route::is_at_or_below;
use crate::body::{self, Body};
use crate::cache_status::{CacheStatus, X_CACHE};
use crate::clock;

/// Fixed per-entry overhead counted by the weigher: moka's nodes, the key
/// and `Entry` structs and allocator headers. Measured ≈ 530 bytes per
/// detail entry beyond its body and path (100 000 entries, glibc malloc),
/// so `cache.max_bytes` bounds real memory, not just body bytes.
const ENTRY_OVERHEAD: usize = 512;

/// A stored response: status, content type and body, nothing else.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The upstream status (200 for everything stored today).
    pub status: StatusCode,
    /// The upstream `Content-Type`.
    pub content_type: Option<HeaderValue>,
    /// The body; shared, never copied on a hit.
    pub body: Bytes,
    /// When it was stored on the coarse clock, for `Age` on the hot path.
    stored_secs: u32,
}

impl Entry {
    /// Builds an entry stored now.
    pub fn new(status: StatusCode, content_type: Option<HeaderValue>, body: Bytes) -> Self {
        Self {
            status,
            content_type,
            body,
            stored_secs: u32::try_from(clock::now_secs()).unwrap_or(u32::MAX),
        }
    }

    /// The response for a hit: `X-Cache: HIT` and `Age` in seconds.
    pub fn to_response(&self) -> Response<Body> {
        let mut response = Response::new(body::full(self.body.clone()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if let Some(content_type) = &self.content_type {
            headers.insert(header::CONTENT_TYPE, content_type.clone());
        }
        headers.insert(X_CACHE.clone(), CacheStatus::Hit.header_value());
        let age = clock::now_secs().saturating_sub(u64::from(self.stored_secs));
        headers.insert(header::AGE, clock::age_header(age));
        response
    }

    fn weight(&self, key: &CacheKey) -> u32 {
        let bytes = self.body.len()
            + self.content_type.as_ref().map_or(0, HeaderValue::len)
            + key.weight()
            + ENTRY_OVERHEAD;
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
        match key.body {
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

/// The cache.
#[derive(Clone)]
pub struct Store {
    cache: moka::future::Cache<CacheKey, Entry>,
    evictions: Arc<AtomicU64>,
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
    /// A store bounded by `max_bytes`.
    pub fn new(max_bytes: u64, detail_ttl: Duration, list_ttl: Duration) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counter = evictions.clone();
        let cache = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, entry: &Entry| entry.weight(key))
            .expire_after(Lifetimes {
                detail: detail_ttl,
                list: list_ttl,
            })
            .support_invalidation_closures()
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Self { cache, evictions }
    }

    /// The entry for `key`, if stored and not expired.
    pub async fn get(&self, key: &CacheKey) -> Option<Entry> {
        self.cache.get(key).await
    }

    /// Stores (or refreshes) an entry.
    pub async fn insert(&self, key: CacheKey, entry: Entry) {
        self.cache.insert(key, entry).await;
    }

    /// Removes one entry; true when there was one.
    pub async fn remove(&self, key: &CacheKey) -> bool {
        self.cache.remove(key).await.is_some()
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
    pub async fn invalidate_exact(&self, namespace: &str, path: &str) {
        self.cache
            .invalidate(&CacheKey::detail(namespace, path.to_string()))
            .await;
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Applies pending maintenance (evictions, invalidations) now.
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
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

    fn key(ns: &str, path: &str) -> CacheKey {
        CacheKey::detail(ns, path.into())
    }

    fn entry(len: usize) -> Entry {
        Entry::new(StatusCode::OK, None, Bytes::from(vec![b'x'; len]))
    }

    #[tokio::test]
    async fn namespaces_are_separate_and_prefix_invalidation_is_scoped() {
        let store = Store::new(1 << 20, Duration::from_secs(60), Duration::from_secs(1));
        store
            .insert(key("a", "/v1/retrievers/r1/executions/e1"), entry(10))
            .await;
        store
            .insert(key("b", "/v1/retrievers/r1/executions/e1"), entry(10))
            .await;
        store
            .insert(key("a", "/v1/retrievers/r10/executions/e1"), entry(10))
            .await;
        assert!(store
            .get(&key("c", "/v1/retrievers/r1/executions/e1"))
            .await
            .is_none());
        store.invalidate_below("a", "/v1/retrievers/r1");
        assert!(store
            .get(&key("a", "/v1/retrievers/r1/executions/e1"))
            .await
            .is_none());
        assert!(store
            .get(&key("b", "/v1/retrievers/r1/executions/e1"))
            .await
            .is_some());
        assert!(store
            .get(&key("a", "/v1/retrievers/r10/executions/e1"))
            .await
            .is_some());
    }

    #[tokio::test]
    async fn byte_bound_holds() {
        let store = Store::new(100_000, Duration::from_secs(60), Duration::from_secs(1));
        for i in 0..200 {
            store
                .insert(
                    key("a", &format!("/v1/retrievers/executions/e{i}")),
                    entry(1000),
                )
                .await;
        }
        store.run_pending_tasks().await;
        assert!(
            store.weighted_bytes() <= 100_000,
            "{}",
            store.weighted_bytes()
        );
        assert!(store.evictions() > 0);
    }

    #[tokio::test]
    async fn hit_response_has_headers() {
        let mut e = entry(3);
        e.content_type = Some(HeaderValue::from_static("application/json"));
        let response = e.to_response();
        assert_eq!(response.headers()["x-cache"], "HIT");
        assert_eq!(response.headers()["age"], "0");
        assert_eq!(response.headers()["content-type"], "application/json");
    }
}
