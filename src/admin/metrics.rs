//! `GET /_gateway/metrics`: the Prometheus text exposition.
//!
//! The registry ([`crate::telemetry::metrics`]) counts every request as it
//! finishes; what the cache, the limits and Redis keep themselves is read
//! here, at scrape time, so the request path never updates those gauges.

use http::{header, HeaderValue, Response};

use crate::body::{self, Body};
use crate::cache::CacheState;
use crate::limits::{LimitMetrics, Limits};
use crate::telemetry::metrics::{Metrics, RedisFigures, Scrape};

/// The response to `GET /_gateway/metrics`.
pub fn response(metrics: &Metrics, cache: &CacheState, limits: &Limits) -> Response<Body> {
    let mut response = Response::new(body::full(scrape(metrics, cache, limits)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The text exposition of `metrics`, with the figures of `cache` and
/// `limits` read now.
pub fn scrape(metrics: &Metrics, cache: &CacheState, limits: &Limits) -> String {
    let store = &cache.store;
    let counted = &limits.metrics;
    let upstream = &limits.upstream;
    let figures = Scrape {
        cache_entries: store.entry_count(),
        cache_bytes: store.weighted_bytes(),
        cache_evictions: store.evictions(),
        refused: counted
            .snapshot()
            .into_iter()
            .map(|(client, reason, count)| (client, reason.as_str(), count))
            .collect(),
        queued: LimitMetrics::get(&counted.queued),
        queue_wait_micros: LimitMetrics::get(&counted.queue_wait_micros),
        pauses: LimitMetrics::get(&counted.pauses),
        paused_for: upstream.paused_for(),
        upstream_in_flight: upstream.in_flight(),
        upstream_waiting: upstream.waiting(),
        log_lines_dropped: crate::telemetry::access::dropped_lines(),
        redis: cache.shared.as_ref().map(|shared| {
            let m = &shared.metrics;
            RedisFigures {
                up: shared.is_healthy(),
                l2_hits: LimitMetrics::get(&m.l2_hits),
                errors: LimitMetrics::get(&m.errors),
                fallbacks: LimitMetrics::get(&m.fallbacks),
                remote_flights: LimitMetrics::get(&m.remote_flights),
            }
        }),
    };
    metrics.encode(&figures)
}
