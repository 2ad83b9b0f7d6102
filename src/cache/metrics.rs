//! Counters of the cache and coalescing layer, read by the metrics endpoint.

use crate::striped::StripedU64;

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

/// Monotonic counters, striped per worker thread (a hit bumps one on every
/// request); entries, bytes and evictions come from the store.
#[derive(Debug, Default)]
pub struct CacheMetrics {
    /// Served from cache (`X-Cache: HIT`).
    pub hits: StripedU64,
    /// Made the upstream call of a cacheable route (`MISS`).
    pub misses: StripedU64,
    /// Shared another request's upstream call (`COALESCED`).
    pub coalesced: StripedU64,
    /// Not cacheable (`BYPASS`).
    pub bypassed: StripedU64,
    /// Upstream calls of execution details.
    pub upstream_detail: StripedU64,
    /// Upstream calls of list queries.
    pub upstream_list: StripedU64,
    /// Upstream calls of everything else.
    pub upstream_passthrough: StripedU64,
    /// Responses too large to share: streamed to one client, waiters retried.
    pub unshareable: StripedU64,
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
    pub fn get(counter: &StripedU64) -> u64 {
        counter.sum()
    }
}

/// Adds one.
pub fn bump(counter: &StripedU64) {
    counter.add(1);
}
