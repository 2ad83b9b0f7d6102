//! What the simulator remembers between requests: counters, the recent
//! request log, when each execution was first requested, and the next
//! execution id.
//!
//! Locks here are `std` mutexes held for a few instructions and never across
//! an `.await`.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method};

use super::route::ROUTE_KEYS;

/// How many requests [`SimState::requests`] keeps.
const LOG_CAPACITY: usize = 1000;

/// One request as the simulator received it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// The request method.
    pub method: Method,
    /// Path and query exactly as received, percent-encoding kept.
    pub path_and_query: String,
    /// All request headers.
    pub headers: HeaderMap,
    /// The full request body.
    pub body: Bytes,
}

/// Identifies one execution's lifecycle: the same id in two namespaces, or
/// under two retrievers, is two executions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ExecutionKey {
    pub(crate) namespace: String,
    /// `None` for ad-hoc executions.
    pub(crate) retriever_id: Option<String>,
    pub(crate) id: String,
}

/// Shared, thread-safe simulator state.
#[derive(Debug)]
pub(crate) struct SimState {
    counts: [AtomicU64; ROUTE_KEYS.len()],
    total: AtomicU64,
    log: Mutex<VecDeque<SeenRequest>>,
    first_seen: Mutex<HashMap<ExecutionKey, Instant>>,
    next_execution: AtomicU64,
}

impl Default for SimState {
    fn default() -> Self {
        Self {
            counts: Default::default(),
            total: AtomicU64::new(0),
            log: Mutex::new(VecDeque::with_capacity(LOG_CAPACITY)),
            first_seen: Mutex::new(HashMap::new()),
            // Past the ids of the fixed listed executions (`exec_1`..).
            next_execution: AtomicU64::new(1001),
        }
    }
}

impl SimState {
    /// Counts one request under its route class.
    pub(crate) fn count_request(&self, class: usize) {
        if let Some(counter) = self.counts.get(class) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests seen under a key of [`ROUTE_KEYS`]; 0 for unknown keys.
    pub(crate) fn count(&self, route: &str) -> u64 {
        ROUTE_KEYS
            .iter()
            .position(|key| *key == route)
            .map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Every counter as JSON, for `GET /_sim/stats`.
    pub(crate) fn stats(&self) -> serde_json::Value {
        let mut counts = serde_json::Map::new();
        for (key, counter) in ROUTE_KEYS.iter().zip(&self.counts) {
            counts.insert((*key).to_string(), counter.load(Ordering::Relaxed).into());
        }
        serde_json::json!({ "total": self.total(), "counts": counts })
    }

    /// All requests seen.
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Appends to the request log, dropping the oldest beyond capacity.
    pub(crate) fn record(&self, request: SeenRequest) {
        let mut log = lock(&self.log);
        if log.len() == LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(request);
    }

    /// The logged requests, oldest first.
    pub(crate) fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.log).iter().cloned().collect()
    }

    /// When `key` was first requested, recording `now` if this is the first
    /// time.
    pub(crate) fn first_seen(&self, key: ExecutionKey, now: Instant) -> Instant {
        match lock(&self.first_seen).entry(key) {
            Entry::Occupied(seen) => *seen.get(),
            Entry::Vacant(slot) => *slot.insert(now),
        }
    }

    /// A fresh execution id, `exec_<n>`.
    pub(crate) fn next_execution_id(&self) -> String {
        format!(
            "exec_{}",
            self.next_execution.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Locks, ignoring poisoning: the guarded data stays consistent because no
/// code panics while holding these locks.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn seen(n: usize) -> SeenRequest {
        SeenRequest {
            method: Method::GET,
            path_and_query: format!("/{n}"),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    #[test]
    fn counts_per_route_and_total() {
        let state = SimState::default();
        state.count_request(0);
        state.count_request(0);
        state.count_request(6);
        assert_eq!(state.count("GET /v1/retrievers/executions/{id}"), 2);
        assert_eq!(state.count("other"), 1);
        assert_eq!(state.count("no such route"), 0);
        assert_eq!(state.total(), 3);
    }

    #[test]
    fn log_keeps_the_last_thousand() {
        let state = SimState::default();
        for n in 0..1005 {
            state.record(seen(n));
        }
        let log = state.requests();
        assert_eq!(log.len(), 1000);
        assert_eq!(log[0].path_and_query, "/5");
        assert_eq!(log[999].path_and_query, "/1004");
    }

    #[test]
    fn first_seen_is_sticky_per_key() {
        let state = SimState::default();
        let t0 = Instant::now();
        let key = |ns: &str| ExecutionKey {
            namespace: ns.into(),
            retriever_id: None,
            id: "exec_1".into(),
        };
        assert_eq!(state.first_seen(key("a"), t0), t0);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(state.first_seen(key("a"), later), t0);
        assert_eq!(state.first_seen(key("b"), later), later);
    }

    #[test]
    fn execution_ids_are_fresh() {
        let state = SimState::default();
        assert_ne!(state.next_execution_id(), state.next_execution_id());
    }
}
