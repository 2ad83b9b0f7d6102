//! Prometheus metrics, served at `GET /_gateway/metrics` in the text format.
//!
//! Every label has a bounded set of values: client names come from the
//! config (plus `-` for requests that never authenticated), route classes
//! are four words, statuses are HTTP codes. No label holds a key, a path,
//! an id or a namespace.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

use crate::striped::{StripedCells, StripedU64};

/// A counter bumped on every request: striped per worker thread, so two
/// cores never write the same cache line for it (see [`crate::striped`]).
type HotCounter = Counter<u64, StripedU64>;

/// A client name as a label value, shared rather than copied per request.
///
/// It also carries the client's own counters once they have been looked up,
/// so a request's bookkeeping does not search the metric families by label
/// (hashing the name) on every response. Equality and hashing are by name.
/// One `Arc` for both, so a request takes one reference, not two.
#[derive(Clone, Debug)]
pub struct ClientLabel(Arc<LabelInner>);

#[derive(Debug)]
struct LabelInner {
    name: Box<str>,
    hot: OnceLock<ClientCounters>,
}

impl ClientLabel {
    /// The label of a client named `name`.
    pub fn new(name: &str) -> Self {
        Self(Arc::new(LabelInner {
            name: name.into(),
            hot: OnceLock::new(),
        }))
    }

    /// The label of requests that were not authenticated.
    pub fn anonymous() -> Self {
        Self::new("-")
    }

    /// The client's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }
}

impl PartialEq for ClientLabel {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for ClientLabel {}

impl Hash for ClientLabel {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl EncodeLabelValue for ClientLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.name())
    }
}

/// One client's counters, resolved from the families once.
#[derive(Debug)]
struct ClientCounters {
    /// `requests{status="200"}` per route class.
    ok: [HotCounter; ROUTES.len()],
    requests: HotCounter,
    hits: HotCounter,
    saved: HotCounter,
}

/// Every route class, in `RouteClass as usize` order.
const ROUTES: [RouteClass; 4] = [
    RouteClass::Detail,
    RouteClass::List,
    RouteClass::Passthrough,
    RouteClass::Gateway,
];

/// Every `X-Cache` outcome, in `CacheOutcome as usize` order.
const OUTCOMES: [CacheOutcome; 5] = [
    CacheOutcome::Hit,
    CacheOutcome::Miss,
    CacheOutcome::Coalesced,
    CacheOutcome::Bypass,
    CacheOutcome::None,
];

/// A latency histogram updated with atomic adds on the calling thread's
/// stripe instead of a lock (the library's histogram takes a write lock per
/// observation, which every request on every core would contend for).
/// Buckets are in seconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram(Arc<HistogramCells>);

#[derive(Debug)]
struct HistogramCells {
    bounds: Vec<f64>,
    /// Cells `0..=bounds.len()` count observations per bucket (the last
    /// counts those above every bound); the one after sums nanoseconds.
    cells: StripedCells,
}

impl HistogramCells {
    fn sum_cell(&self) -> usize {
        self.bounds.len() + 1
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        // 100 µs .. ~52 s
        let bounds: Vec<f64> = exponential_buckets(0.0001, 2.0, 20).collect();
        let cells = StripedCells::new(bounds.len() + 2);
        Self(Arc::new(HistogramCells { bounds, cells }))
    }
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, latency: Duration) {
        let histogram = &self.0;
        let secs = latency.as_secs_f64();
        let bucket = histogram.bounds.partition_point(|bound| *bound < secs);
        histogram.cells.add(bucket, 1);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        histogram.cells.add(histogram.sum_cell(), nanos);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        (0..=self.0.bounds.len()).map(|i| self.0.cells.sum(i)).sum()
    }
}

impl prometheus_client::metrics::TypedMetric for LatencyHistogram {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let histogram = &self.0;
        let buckets: Vec<(f64, u64)> = histogram
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .enumerate()
            .map(|(i, bound)| (bound, histogram.cells.sum(i)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = Duration::from_nanos(histogram.cells.sum(histogram.sum_cell())).as_secs_f64();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// What kind of route a request was.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RouteClass {
    /// An execution detail.
    Detail,
    /// An execution list query.
    List,
    /// Any other API route.
    Passthrough,
    /// The gateway's own `/_gateway/` routes.
    Gateway,
}

impl RouteClass {
    /// The label text.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Detail => "detail",
            RouteClass::List => "list",
            RouteClass::Passthrough => "passthrough",
            RouteClass::Gateway => "gateway",
        }
    }
}

/// `X-Cache` outcomes, plus `none` for answers without the header.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CacheOutcome {
    /// `HIT`
    Hit,
    /// `MISS`
    Miss,
    /// `COALESCED`
    Coalesced,
    /// `BYPASS`
    Bypass,
    /// The gateway answered itself (errors, gateway routes).
    None,
}

impl CacheOutcome {
    /// From an `X-Cache` header value.
    pub fn from_header(value: Option<&http::HeaderValue>) -> Self {
        match value.map(http::HeaderValue::as_bytes) {
            Some(b"HIT") => CacheOutcome::Hit,
            Some(b"MISS") => CacheOutcome::Miss,
            Some(b"COALESCED") => CacheOutcome::Coalesced,
            Some(b"BYPASS") => CacheOutcome::Bypass,
            _ => CacheOutcome::None,
        }
    }

    /// The log text.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "HIT",
            CacheOutcome::Miss => "MISS",
            CacheOutcome::Coalesced => "COALESCED",
            CacheOutcome::Bypass => "BYPASS",
            CacheOutcome::None => "-",
        }
    }
}

impl EncodeLabelValue for RouteClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for CacheOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    client: ClientLabel,
    route: RouteClass,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: CacheOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    route: RouteClass,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: RouteClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    client: ClientLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    client: ClientLabel,
    reason: &'static str,
}

/// One finished request, as the access log sees it.
#[derive(Debug, Clone)]
pub struct Finished<'a> {
    /// The client, or anonymous (borrowed: a clone would write the label's
    /// shared reference count on every request).
    pub client: &'a ClientLabel,
    /// The route class.
    pub route: RouteClass,
    /// The status sent to the client.
    pub status: u16,
    /// `X-Cache`.
    pub outcome: CacheOutcome,
    /// Status and latency of the upstream call this request made, if any.
    pub upstream: Option<(u16, Duration)>,
    /// Time from request to the end of the response body.
    pub latency: Duration,
}

/// All of the gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, HotCounter>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    /// The families' members for every route and outcome, resolved once.
    upstream_latency: [LatencyHistogram; ROUTES.len()],
    request_latency: [LatencyHistogram; ROUTES.len()],
    outcome_counters: [HotCounter; OUTCOMES.len()],
    saved: Family<ClientLabels, HotCounter>,
    rate_limited: Family<LimitLabels, Counter>,
    client_requests: Family<ClientLabels, HotCounter>,
    client_hits: Family<ClientLabels, HotCounter>,
    client_limited: Family<ClientLabels, Counter>,
    in_flight: Gauge<i64, StripedU64>,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    cache_evictions: Counter,
    evictions_seen: AtomicU64,
    guard_paused: Gauge,
    guard_in_flight: Gauge,
    guard_waiting: Gauge,
    guard_queued: Counter,
    guard_queue_wait: Counter<f64, AtomicU64>,
    guard_pauses: Counter,
    redis_up: Gauge,
    redis_l2_hits: Counter,
    redis_errors: Counter,
    redis_fallbacks: Counter,
    redis_remote_flights: Counter,
    connections_refused: Counter,
    worker_connections: Family<WorkerLabels, Gauge>,
    log_dropped: Counter,
    /// The server's connections per worker, once it serves.
    workers: OnceLock<WorkerGauge>,
    /// Last values read from the limit counters, to add only the growth.
    limits_seen: Mutex<HashMap<(Option<String>, &'static str), u64>>,
    /// The label of unauthenticated requests, one for the process, so its
    /// counters are resolved once like any client's.
    anonymous: ClientLabel,
}

/// Reads the connections each worker serves (see
/// [`Metrics::watch_workers`]).
struct WorkerGauge(Box<dyn Fn() -> Vec<usize> + Send + Sync>);

impl std::fmt::Debug for WorkerGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerGauge")
    }
}

/// The figures that other parts of the gateway keep themselves (the cache,
/// the limits, Redis), read when the registry is scraped and copied into
/// it by [`Metrics::encode`]. Counts are totals since start; the registry
/// adds only their growth since the last scrape.
#[derive(Debug, Default)]
pub struct Scrape<'a> {
    /// Entries in the cache.
    pub cache_entries: u64,
    /// Weighted size of the cache.
    pub cache_bytes: u64,
    /// Entries evicted so far.
    pub cache_evictions: u64,
    /// Requests refused by a limit so far: client (`None`: not
    /// authenticated), reason, count.
    pub refused: Vec<(Option<&'a str>, &'static str, u64)>,
    /// Upstream calls that had to wait for the quota guard so far.
    pub queued: u64,
    /// Total time they waited, in microseconds.
    pub queue_wait_micros: u64,
    /// Pauses of all upstream calls after an upstream 429 so far.
    pub pauses: u64,
    /// Time left of the current pause, if any.
    pub paused_for: Option<Duration>,
    /// Upstream calls running.
    pub upstream_in_flight: usize,
    /// Calls waiting for the quota guard.
    pub upstream_waiting: usize,
    /// Redis's figures, with `[redis]` configured.
    pub redis: Option<RedisFigures>,
    /// Log lines dropped so far ([`super::access::dropped_lines`]).
    pub log_lines_dropped: u64,
}

/// What the Redis tier has counted so far (see [`Scrape`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct RedisFigures {
    /// Whether Redis answers now.
    pub up: bool,
    /// Local misses answered from Redis.
    pub l2_hits: u64,
    /// Redis calls that failed or timed out.
    pub errors: u64,
    /// Decisions taken locally because Redis was unavailable.
    pub fallbacks: u64,
    /// Flights answered by another replica's upstream call.
    pub remote_flights: u64,
}

impl Metrics {
    /// Registers every metric; the figures other parts keep are given to
    /// [`encode`](Self::encode) at scrape time.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mixpeek_gateway");
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests answered, by client, route class and status",
            requests.clone(),
        );
        let outcomes: Family<OutcomeLabels, HotCounter> = Family::default();
        registry.register(
            "cache_outcomes",
            "Responses by X-Cache outcome",
            outcomes.clone(),
        );
        let upstream_requests = Family::default();
        registry.register(
            "upstream_requests",
            "Calls made to the upstream API, by route class and status (0: no response)",
            upstream_requests.clone(),
        );
        let upstream_duration: Family<RouteLabels, LatencyHistogram> = Family::default();
        registry.register(
            "upstream_duration_seconds",
            "Upstream latency until the response head",
            upstream_duration.clone(),
        );
        let request_duration: Family<RouteLabels, LatencyHistogram> = Family::default();
        registry.register(
            "request_duration_seconds",
            "End-to-end latency until the last byte of the response",
            request_duration.clone(),
        );
        let saved = Family::default();
        registry.register(
            "upstream_calls_saved",
            "Requests answered without an upstream call of their own (hits and coalesced), by client",
            saved.clone(),
        );
        let rate_limited = Family::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by client and reason",
            rate_limited.clone(),
        );
        let client_requests = Family::default();
        registry.register(
            "client_requests",
            "Requests answered, by client",
            client_requests.clone(),
        );
        let client_hits = Family::default();
        registry.register(
            "client_cache_hits",
            "Requests served from cache (X-Cache: HIT), by client",
            client_hits.clone(),
        );
        let client_limited = Family::default();
        registry.register(
            "client_throttled",
            "Requests answered 429, by client",
            client_limited.clone(),
        );
        let in_flight = Gauge::<i64, StripedU64>::default();
        registry.register(
            "in_flight_requests",
            "Requests being served",
            in_flight.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Entries in the cache",
            cache_entries.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_weighted_bytes",
            "Weighted size of the cache (bounded by cache.max_bytes)",
            cache_bytes.clone(),
        );
        let cache_evictions = Counter::default();
        registry.register(
            "cache_evictions",
            "Entries evicted to stay within cache.max_bytes",
            cache_evictions.clone(),
        );
        let guard_paused = Gauge::default();
        registry.register(
            "upstream_paused_seconds",
            "Seconds left of a pause of all upstream calls after an upstream 429 (0: not paused)",
            guard_paused.clone(),
        );
        let guard_in_flight = Gauge::default();
        registry.register(
            "upstream_in_flight",
            "Upstream calls running (bounded by upstream.max_in_flight)",
            guard_in_flight.clone(),
        );
        let guard_waiting = Gauge::default();
        registry.register(
            "upstream_queue_waiting",
            "Calls waiting for the upstream quota guard",
            guard_waiting.clone(),
        );
        let guard_queued = Counter::default();
        registry.register(
            "upstream_queued",
            "Upstream calls that had to wait for the quota guard",
            guard_queued.clone(),
        );
        let guard_queue_wait = Counter::<f64, AtomicU64>::default();
        registry.register(
            "upstream_queue_wait_seconds",
            "Total time upstream calls waited for the quota guard",
            guard_queue_wait.clone(),
        );
        let guard_pauses = Counter::default();
        registry.register(
            "upstream_pauses",
            "Pauses of all upstream calls started by an upstream 429",
            guard_pauses.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Client connections closed as soon as accepted because server.max_connections were open",
            connections_refused.clone(),
        );
        let redis_up = Gauge::default();
        registry.register(
            "redis_up",
            "1 while Redis answers (shared mode), 0 while this replica works alone; absent without [redis]",
            redis_up.clone(),
        );
        let redis_l2_hits = Counter::default();
        registry.register(
            "cache_l2_hits",
            "Local misses answered from the shared Redis tier",
            redis_l2_hits.clone(),
        );
        let redis_errors = Counter::default();
        registry.register(
            "redis_errors",
            "Redis calls that failed or timed out",
            redis_errors.clone(),
        );
        let redis_fallbacks = Counter::default();
        registry.register(
            "redis_fallbacks",
            "Decisions taken locally because Redis was unavailable",
            redis_fallbacks.clone(),
        );
        let redis_remote_flights = Counter::default();
        registry.register(
            "remote_flights",
            "Flights answered by another replica's upstream call",
            redis_remote_flights.clone(),
        );
        let worker_connections = Family::default();
        registry.register(
            "worker_connections",
            "Client connections each worker thread is serving (spread evenly at accept)",
            worker_connections.clone(),
        );
        let log_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log writer could not keep up",
            log_dropped.clone(),
        );
        let by_route = |family: &Family<RouteLabels, LatencyHistogram>| {
            ROUTES.map(|route| family.get_or_create(&RouteLabels { route }).clone())
        };
        Self {
            registry,
            upstream_latency: by_route(&upstream_duration),
            request_latency: by_route(&request_duration),
            outcome_counters: OUTCOMES
                .map(|outcome| outcomes.get_or_create(&OutcomeLabels { outcome }).clone()),
            requests,
            upstream_requests,
            saved,
            rate_limited,
            client_requests,
            client_hits,
            client_limited,
            in_flight,
            cache_entries,
            cache_bytes,
            cache_evictions,
            evictions_seen: AtomicU64::new(0),
            guard_paused,
            guard_in_flight,
            guard_waiting,
            guard_queued,
            guard_queue_wait,
            guard_pauses,
            redis_up,
            redis_l2_hits,
            redis_errors,
            redis_fallbacks,
            redis_remote_flights,
            connections_refused,
            worker_connections,
            log_dropped,
            workers: OnceLock::new(),
            limits_seen: Mutex::new(HashMap::new()),
            anonymous: ClientLabel::anonymous(),
        }
    }

    /// A client connection was closed at once: `server.max_connections`
    /// were open.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// A request started.
    pub fn started(&self) {
        self.in_flight.inc();
    }

    /// A request finished (its body ended or the client went away).
    pub fn finished(&self, done: &Finished<'_>) {
        self.in_flight.dec();
        let client = done
            .client
            .0
            .hot
            .get_or_init(|| self.client_counters(done.client));
        let route = done.route as usize;
        if done.status == 200 {
            client.ok[route].inc();
        } else {
            self.requests
                .get_or_create(&RequestLabels {
                    client: done.client.clone(),
                    route: done.route,
                    status: done.status,
                })
                .inc();
        }
        self.outcome_counters[done.outcome as usize].inc();
        client.requests.inc();
        if done.outcome == CacheOutcome::Hit {
            client.hits.inc();
        }
        if done.status == 429 {
            self.client_limited
                .get_or_create(&ClientLabels {
                    client: done.client.clone(),
                })
                .inc();
        }
        if matches!(done.outcome, CacheOutcome::Hit | CacheOutcome::Coalesced) {
            client.saved.inc();
        }
        if let Some((status, latency)) = done.upstream {
            self.upstream_requests
                .get_or_create(&UpstreamLabels {
                    route: done.route,
                    status,
                })
                .inc();
            self.upstream_latency[route].observe(latency);
        }
        self.request_latency[route].observe(done.latency);
    }

    /// Looks a client's counters up in the families (once per client label).
    fn client_counters(&self, client: &ClientLabel) -> ClientCounters {
        let labels = ClientLabels {
            client: client.clone(),
        };
        ClientCounters {
            ok: ROUTES.map(|route| {
                self.requests
                    .get_or_create(&RequestLabels {
                        client: client.clone(),
                        route,
                        status: 200,
                    })
                    .clone()
            }),
            requests: self.client_requests.get_or_create(&labels).clone(),
            hits: self.client_hits.get_or_create(&labels).clone(),
            saved: self.saved.get_or_create(&labels).clone(),
        }
    }

    /// The label of requests that were not authenticated.
    pub fn anonymous(&self) -> &ClientLabel {
        &self.anonymous
    }

    /// Requests, cache hits and 429s of one client so far.
    pub fn client_figures(&self, client: &ClientLabel) -> (u64, u64, u64) {
        let labels = ClientLabels {
            client: client.clone(),
        };
        (
            self.client_requests.get_or_create(&labels).get(),
            self.client_hits.get_or_create(&labels).get(),
            self.client_limited.get_or_create(&labels).get(),
        )
    }

    /// Brings the figures the limits and Redis keep into the registry.
    fn read_limits(&self, scrape: &Scrape<'_>) {
        let mut seen = self
            .limits_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for &(client, reason, count) in &scrape.refused {
            let key = (client.map(str::to_string), reason);
            let before = seen.insert(key, count).unwrap_or(0);
            let client = client.map_or_else(|| self.anonymous.clone(), ClientLabel::new);
            self.rate_limited
                .get_or_create(&LimitLabels { client, reason })
                .inc_by(count.saturating_sub(before));
        }
        let mut delta = |key: &'static str, now: u64| {
            let before = seen.insert((None, key), now).unwrap_or(0);
            now.saturating_sub(before)
        };
        self.guard_queued.inc_by(delta("~queued", scrape.queued));
        let waited = delta("~queue_wait", scrape.queue_wait_micros);
        self.guard_queue_wait.inc_by(waited as f64 / 1e6);
        self.guard_pauses.inc_by(delta("~pauses", scrape.pauses));
        self.log_dropped
            .inc_by(delta("~log_dropped", scrape.log_lines_dropped));
        self.guard_paused.set(
            scrape
                .paused_for
                .map_or(0, |d| i64::try_from(d.as_secs().max(1)).unwrap_or(i64::MAX)),
        );
        self.guard_in_flight
            .set(i64::try_from(scrape.upstream_in_flight).unwrap_or(i64::MAX));
        self.guard_waiting
            .set(i64::try_from(scrape.upstream_waiting).unwrap_or(i64::MAX));
        if let Some(redis) = &scrape.redis {
            self.redis_up.set(i64::from(redis.up));
            self.redis_l2_hits.inc_by(delta("~l2_hits", redis.l2_hits));
            self.redis_errors
                .inc_by(delta("~redis_errors", redis.errors));
            self.redis_fallbacks
                .inc_by(delta("~redis_fallbacks", redis.fallbacks));
            self.redis_remote_flights
                .inc_by(delta("~remote_flights", redis.remote_flights));
        }
    }

    /// Reports `loads` (the connections each worker serves, read at scrape
    /// time) as `worker_connections`; the server calls this once it starts
    /// its workers, later calls are ignored.
    pub fn watch_workers(&self, loads: impl Fn() -> Vec<usize> + Send + Sync + 'static) {
        let _ = self.workers.set(WorkerGauge(Box::new(loads)));
    }

    /// The text exposition, with the figures of `scrape` read now.
    pub fn encode(&self, scrape: &Scrape<'_>) -> String {
        if let Some(loads) = self.workers.get() {
            for (worker, load) in (loads.0)().into_iter().enumerate() {
                self.worker_connections
                    .get_or_create(&WorkerLabels {
                        worker: worker as u64,
                    })
                    .set(i64::try_from(load).unwrap_or(i64::MAX));
            }
        }
        self.cache_entries
            .set(i64::try_from(scrape.cache_entries).unwrap_or(i64::MAX));
        self.cache_bytes
            .set(i64::try_from(scrape.cache_bytes).unwrap_or(i64::MAX));
        let evictions = scrape.cache_evictions;
        let seen = self.evictions_seen.swap(evictions, Ordering::Relaxed);
        self.cache_evictions.inc_by(evictions.saturating_sub(seen));
        self.read_limits(scrape);
        let mut out = String::with_capacity(8 * 1024);
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "metrics encoding failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix} in\n{text}"))
    }

    #[test]
    fn latency_histogram_encodes_cumulative_buckets_count_and_sum() {
        let mut registry = Registry::default();
        let family: Family<RouteLabels, LatencyHistogram> = Family::default();
        registry.register("latency", "test", family.clone());
        let histogram = family
            .get_or_create(&RouteLabels {
                route: RouteClass::Detail,
            })
            .clone();
        for ms in [0, 1, 1, 3000, 100_000] {
            histogram.observe(Duration::from_millis(ms));
        }
        assert_eq!(histogram.count(), 5);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(line(&text, "latency_count{").ends_with(" 5"), "{text}");
        assert!(line(&text, "latency_sum{").ends_with(" 103.002"), "{text}");
        // 100 µs holds the 0 ms observation; 1.6 ms adds the two 1 ms ones.
        assert!(
            line(&text, "latency_bucket{le=\"0.0001\"").ends_with(" 1"),
            "{text}"
        );
        assert!(
            line(&text, "latency_bucket{le=\"0.0016\"").ends_with(" 3"),
            "{text}"
        );
        assert!(
            line(&text, "latency_bucket{le=\"+Inf\"").ends_with(" 5"),
            "{text}"
        );
    }

    #[test]
    fn a_clients_remembered_counters_are_the_exported_series() {
        let metrics = &Metrics::new();
        let label = ClientLabel::new("team");
        let finish = |client: &ClientLabel, status, outcome| {
            metrics.started();
            metrics.finished(&Finished {
                client,
                route: RouteClass::Detail,
                status,
                outcome,
                upstream: None,
                latency: Duration::from_millis(2),
            });
        };
        finish(&label, 200, CacheOutcome::Hit);
        finish(&label, 200, CacheOutcome::Miss);
        // Another label value for the same name shares the series.
        finish(&ClientLabel::new("team"), 404, CacheOutcome::None);
        assert_eq!(metrics.client_figures(&label), (3, 1, 0));
        let text = metrics.encode(&Scrape::default());
        assert!(
            line(
                &text,
                "mixpeek_gateway_requests_total{client=\"team\",route=\"detail\",status=\"200\"}"
            )
            .ends_with(" 2"),
            "{text}"
        );
        assert!(
            line(
                &text,
                "mixpeek_gateway_requests_total{client=\"team\",route=\"detail\",status=\"404\"}"
            )
            .ends_with(" 1"),
            "{text}"
        );
        assert!(line(
            &text,
            "mixpeek_gateway_cache_outcomes_total{outcome=\"HIT\"}"
        )
        .ends_with(" 1"));
        assert!(
            line(
                &text,
                "mixpeek_gateway_request_duration_seconds_count{route=\"detail\"}"
            )
            .ends_with(" 3"),
            "{text}"
        );
        // Unauthenticated requests share the one anonymous label.
        finish(metrics.anonymous(), 401, CacheOutcome::None);
        finish(&metrics.anonymous().clone(), 401, CacheOutcome::None);
        assert_eq!(metrics.client_figures(metrics.anonymous()), (2, 0, 0));
    }

    #[test]
    fn dropped_log_lines_are_exported_as_they_grow() {
        let metrics = Metrics::new();
        let scrape = |n| Scrape {
            log_lines_dropped: n,
            ..Scrape::default()
        };
        let text = metrics.encode(&scrape(3));
        assert!(line(&text, "mixpeek_gateway_log_lines_dropped_total ").ends_with(" 3"));
        let text = metrics.encode(&scrape(5));
        assert!(line(&text, "mixpeek_gateway_log_lines_dropped_total ").ends_with(" 5"));
    }

    #[test]
    fn in_flight_requests_count_across_threads_and_return_to_zero() {
        let metrics = Arc::new(Metrics::new());
        let in_flight = |metrics: &Metrics| {
            line(
                &metrics.encode(&Scrape::default()),
                "mixpeek_gateway_in_flight_requests ",
            )
            .to_string()
        };
        crate::striped::set_thread_stripe(0);
        metrics.started();
        metrics.started();
        assert_eq!(in_flight(&metrics), "mixpeek_gateway_in_flight_requests 2");
        // One ends on another worker's stripe, one on this thread's.
        let other = metrics.clone();
        std::thread::spawn(move || {
            crate::striped::set_thread_stripe(1);
            let label = ClientLabel::new("team");
            other.finished(&Finished {
                client: &label,
                route: RouteClass::Detail,
                status: 200,
                outcome: CacheOutcome::Hit,
                upstream: None,
                latency: Duration::from_millis(1),
            });
        })
        .join()
        .unwrap();
        assert_eq!(in_flight(&metrics), "mixpeek_gateway_in_flight_requests 1");
        metrics.finished(&Finished {
            client: metrics.anonymous(),
            route: RouteClass::Detail,
            status: 200,
            outcome: CacheOutcome::Miss,
            upstream: None,
            latency: Duration::from_millis(1),
        });
        assert_eq!(in_flight(&metrics), "mixpeek_gateway_in_flight_requests 0");
    }
}
