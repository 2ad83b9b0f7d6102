//! Counters of the cache and coalescing layer, read by the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

/// The class of an upstream call, a bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// Execution detail.
    Detail,
    /// Execution list query.
    List,
    /// Everything else.
    Passthrough,
}

/// Monotonic counters; entries, bytes and evictions come from the store.
#[derive(Debug, Default)]
pub struct CacheMetrics {
    /// Served from cache (`X-Cache: HIT`).
    pub hits: AtomicU64,
    /// Made the upstream call of a cacheable route (`MISS`).
    pub misses: AtomicU64,
    /// Shared another request's upstream call (`COALESCED`).
    pub coalesced: AtomicU64,
    /// Not cacheable (`BYPASS`).
    pub bypassed: AtomicU64,
    /// Upstream calls of execution details.
    pub upstream_detail: AtomicU64,
    /// Upstream calls of list queries.
    pub upstream_list: AtomicU64,
    /// Upstream calls of everything else.
    pub upstream_passthrough: AtomicU64,
    /// Responses too large to share: streamed to one client, waiters retried.
    pub unshareable: AtomicU64,
}

impl CacheMetrics {
    /// Counts one upstream call.
    pub fn upstream_call(&self, class: RouteClass) {
        let counter = match class {
            RouteClass::Detail => &self.upstream_detail,
            RouteClass::List => &self.upstream_list,
            RouteClass::Passthrough => &self.upstream_passthrough,
        };
        bump(counter);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Adds one.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
