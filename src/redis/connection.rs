//! The connection to Redis and its circuit breaker: every call is bounded
//! by `redis.timeout_ms`; a failure opens a one-second circuit during which
//! the replica works alone (local tier, local flights, local limits),
//! logged once per state change and counted, and the next call after it
//! probes Redis again. The connection manager reconnects by itself.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;

use crate::config::RedisConfig;

/// How long a replica works alone after a Redis failure before probing again.
const CIRCUIT_OPEN: Duration = Duration::from_secs(1);

/// Counters of the shared tier.
#[derive(Debug, Default)]
pub struct SharedMetrics {
    /// Local misses answered from Redis.
    pub l2_hits: AtomicU64,
    /// Redis calls that failed or timed out.
    pub errors: AtomicU64,
    /// Requests that worked alone because Redis was unavailable.
    pub fallbacks: AtomicU64,
    /// Flights answered by another replica's upstream call.
    pub remote_flights: AtomicU64,
}

/// The connection to Redis and the state around it.
pub struct Shared {
    pub(super) connection: Arc<ArcSwapOption<ConnectionManager>>,
    pub(super) prefix: String,
    pub(super) timeout: Duration,
    pub(super) lease: Duration,
    pub(super) start: Instant,
    pub(super) closed_until_ms: AtomicU64,
    pub(super) healthy: AtomicBool,
    /// An invalidation was lost while Redis was unavailable.
    pub(super) missed_invalidation: AtomicBool,
    pub(super) token_seed: u64,
    pub(super) token_counter: AtomicU64,
    /// The client the invalidation subscription connects with.
    pub(super) client: redis::Client,
    /// The invalidations have been taken (once, by the cache:
    /// `take_invalidations`).
    pub(super) invalidations_taken: AtomicBool,
    pub(super) subscribed: Arc<AtomicBool>,
    /// Counters.
    pub metrics: SharedMetrics,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("prefix", &self.prefix)
            .field("connected", &self.connection.load().is_some())
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Starts connecting in the background; the gateway serves (alone)
    /// until the first connection is up.
    pub fn start(config: &RedisConfig) -> Result<Arc<Self>, redis::RedisError> {
        let client = redis::Client::open(config.url.as_str())?;
        let connection = Arc::new(ArcSwapOption::empty());
        let shared = Arc::new(Self {
            connection: connection.clone(),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            lease: config.lease,
            start: Instant::now(),
            closed_until_ms: AtomicU64::new(0),
            healthy: AtomicBool::new(false),
            missed_invalidation: AtomicBool::new(false),
            token_seed: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
            token_counter: AtomicU64::new(0),
            client: client.clone(),
            invalidations_taken: AtomicBool::new(false),
            subscribed: Arc::new(AtomicBool::new(false)),
            metrics: SharedMetrics::default(),
        });
        let timeout = config.timeout;
        tokio::spawn(async move {
            let manager_config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(timeout.max(Duration::from_millis(200)))
                .set_response_timeout(timeout)
                .set_number_of_retries(2)
                .set_max_delay(1000);
            let mut delay = Duration::from_millis(100);
            loop {
                match ConnectionManager::new_with_config(client.clone(), manager_config.clone())
                    .await
                {
                    Ok(manager) => {
                        connection.store(Some(Arc::new(manager)));
                        tracing::info!("redis connected: shared cache, flights and limits on");
                        return;
                    }
                    Err(error) => {
                        if delay == Duration::from_millis(100) {
                            tracing::warn!(%error, "redis not reachable: this replica works alone until it is");
                        } else {
                            tracing::debug!(%error, "redis still not reachable");
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        Ok(shared)
    }

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The connection, unless Redis is known to be unavailable right now.
    pub(super) fn connection(&self) -> Option<ConnectionManager> {
        let until = self.closed_until_ms.load(Ordering::Relaxed);
        if until != 0 {
            let now = self.now_ms();
            if now < until {
                return None;
            }
            // The circuit's window is over: one call probes Redis, the
            // others keep working alone until it has answered.
            let probe_until = now + self.timeout.as_millis() as u64 + 1;
            if self
                .closed_until_ms
                .compare_exchange(until, probe_until, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                return None;
            }
        }
        self.connection.load().as_deref().cloned()
    }

    /// Runs one Redis call within the timeout; `None` (and the circuit
    /// opens) on any failure.
    pub(super) async fn call<T, F>(&self, call: F) -> Option<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                self.closed_until_ms.store(0, Ordering::Relaxed);
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("redis available: replicas share state");
                }
                Some(value)
            }
            outcome => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                let until = self.now_ms() + CIRCUIT_OPEN.as_millis() as u64;
                self.closed_until_ms.store(until, Ordering::Relaxed);
                if self.healthy.swap(false, Ordering::Relaxed) {
                    match outcome {
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "redis unavailable: this replica works alone")
                        }
                        _ => tracing::warn!(
                            timeout_ms = self.timeout.as_millis() as u64,
                            "redis timed out: this replica works alone"
                        ),
                    }
                }
                None
            }
        }
    }

    /// True while Redis answers (false before the first connection and while
    /// the circuit is open).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.connection.load().is_some()
    }

    /// Counts a request that worked alone.
    pub fn fell_back(&self) {
        self.metrics.fallbacks.fetch_add(1, Ordering::Relaxed);
    }
}
