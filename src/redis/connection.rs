//! Scale-out on Redis: what several replicas share.
//!
//! - a second cache tier for terminal execution details (`c:` keys), read
//!   after a local miss and written with the same TTL as the local tier;
//! - cross-replica single flight: a short lease per key (`SET NX PX`), whose
//!   holder publishes the answer under a key named by its lease token
//!   (`f:` keys) for the other replicas' waiters;
//! - invalidation epochs per namespace and for everything (`e:` keys), so a
//!   mutation or an admin clear on one replica retires the shared entries
//!   of every replica.
//!
//! Redis is optional and never on the critical path of availability: every
//! call is bounded by `redis.timeout_ms`; a failure opens a one-second
//! circuit during which the replica works alone (local tier, local flights,
//! local limits), logged once per state change and counted, and the next
//! call after it probes Redis again. The connection manager reconnects by
//! itself. All keys are hashed (SHA-256 of namespace, path, query and body
//! key), so they are fixed-length and carry no ids in clear.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use crate::cache::key::{BodyKey, CacheKey};
use crate::config::RedisConfig;

/// How long a replica works alone after a Redis failure before probing again.
const CIRCUIT_OPEN: Duration = Duration::from_secs(1);
/// How long a published flight result stays for late waiters.
const RESULT_TTL: Duration = Duration::from_secs(10);
/// Waiters on another replica's flight look for its result this often.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// An invalidation one replica tells the others about, so that their
/// in-memory tier drops what it dropped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum Invalidation {
    /// One execution detail.
    Exact {
        /// Namespace.
        ns: String,
        /// Canonical path.
        path: String,
    },
    /// Everything at and below a path.
    Below {
        /// Namespace.
        ns: String,
        /// Canonical path.
        path: String,
    },
    /// Everything.
    All,
}

/// A response shared through Redis: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEntry {
    /// Status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: Option<HeaderValue>,
    /// Body.
    pub body: Bytes,
}

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

/// The result of trying to take a flight lease.
#[derive(Debug)]
pub enum Lease {
    /// This replica calls upstream and publishes under this token.
    Acquired(String),
    /// Another replica holds it, with this token.
    Held(String),
    /// Redis cannot be used now: fly locally.
    Unavailable,
}

/// What waiting on another replica's flight gave.
#[derive(Debug)]
pub enum Waited {
    /// Its published answer.
    Answer(SharedEntry),
    /// The lease ended without an answer (holder died or failed): take it.
    LeaseGone,
    /// Redis cannot be used now: fly locally.
    Unavailable,
    /// Nothing before the deadline.
    TimedOut,
}

/// The connection to Redis and the state around it.
pub struct Shared {
    connection: Arc<ArcSwapOption<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
    lease: Duration,
    start: Instant,
    closed_until_ms: AtomicU64,
    healthy: AtomicBool,
    /// An invalidation was lost while Redis was unavailable.
    missed_invalidation: AtomicBool,
    token_seed: u64,
    token_counter: AtomicU64,
    release: redis::Script,
    renew: redis::Script,
    gcra: redis::Script,
    /// Invalidations received from the other replicas, taken once by the
    /// cache (`take_invalidations`).
    invalidations: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Invalidation>>>,
    subscribed: Arc<AtomicBool>,
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
        let (invalidated, invalidations) = tokio::sync::mpsc::unbounded_channel();
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
            release: redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
            ),
                        renew: redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
            ),
                        gcra: redis::Script::new(GCRA_SCRIPT),
                        invalidations: std::sync::Mutex::new(Some(invalidations)),
            subscribed: Arc::new(AtomicBool::new(false)),
            metrics: SharedMetrics::default(),
        });
        tokio::spawn(listen_for_invalidations(
            client.clone(),
            shared.channel(),
            invalidated,
            shared.subscribed.clone(),
        ));
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

    fn channel(&self) -> String {
        format!("{}invalidations", self.prefix)
    }

    /// The invalidations the other replicas publish; `None` after the first
    /// call (one consumer: the cache).
    pub fn take_invalidations(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Invalidation>> {
        self.invalidations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Tells every replica (this one included) about an invalidation.
    pub async fn broadcast(&self, invalidation: &Invalidation) {
        let Some(mut conn) = self.connection() else {
            self.missed_invalidation.store(true, Ordering::Release);
            return;
        };
        let Ok(message) = serde_json::to_string(invalidation) else {
            return;
        };
        let sent: Option<i64> = self
            .call(
                redis::cmd("PUBLISH")
                    .arg(self.channel())
                    .arg(message)
                    .query_async(&mut conn),
            )
            .await;
        if sent.is_none() {
            self.missed_invalidation.store(true, Ordering::Release);
        }
    }

    /// True while this replica hears the others' invalidations.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// True while Redis answers (false before the first connection and while
    /// the circuit is open).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.connection.load().is_some()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The connection, unless Redis is known to be unavailable right now.
    fn connection(&self) -> Option<ConnectionManager> {
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
    async fn call<T, F>(&self, call: F) -> Option<T>
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

    /// Counts a request that worked alone.
    pub fn fell_back(&self) {
        self.metrics.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    fn hash(key: &CacheKey) -> String {
        let mut h = Sha256::new();
        for part in [&*key.namespace, &*key.path, key.query()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        match key.body() {
            BodyKey::Detail => h.update([0]),
            BodyKey::Absent => h.update([1]),
            BodyKey::Json(digest) => {
                h.update([2]);
                h.update(digest);
            }
        }
        hex::encode(h.finalize())
    }

    fn epoch_keys(&self, namespace: &str) -> (String, String) {
        let ns = hex::encode(Sha256::digest(namespace.as_bytes()));
        (
            format!("{}e:all", self.prefix),
            format!("{}e:{ns}", self.prefix),
        )
    }

    /// The shared entry for a detail, if stored and not retired by an
    /// invalidation epoch.
    pub async fn get_entry(&self, key: &CacheKey) -> Option<SharedEntry> {
        let mut conn = self.connection()?;
        if self.missed_invalidation.load(Ordering::Acquire) {
            // An invalidation could not reach Redis while it was down:
            // retire every shared entry before trusting any of them again.
            let (all, _) = self.epoch_keys("");
            let _: u64 = self
                .call(redis::cmd("INCR").arg(&all).query_async(&mut conn))
                .await?;
            self.missed_invalidation.store(false, Ordering::Release);
        }
        let (all, ns) = self.epoch_keys(&key.namespace);
        let entry_key = format!("{}c:{}", self.prefix, Self::hash(key));
        let (value, epoch_all, epoch_ns): (Option<Vec<u8>>, Option<u64>, Option<u64>) = self
            .call(
                redis::cmd("MGET")
                    .arg(&entry_key)
                    .arg(&all)
                    .arg(&ns)
                    .query_async(&mut conn),
            )
            .await?;
        let (epochs, entry) = decode(&value?)?;
        (epochs == (epoch_all.unwrap_or(0), epoch_ns.unwrap_or(0))).then_some(entry)
    }

    /// Stores a detail for `ttl`, stamped with the epochs read before the
    /// upstream call started (`epochs`).
    pub async fn put_entry(
        &self,
        key: &CacheKey,
        entry: &SharedEntry,
        ttl: Duration,
        epochs: (u64, u64),
    ) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let entry_key = format!("{}c:{}", self.prefix, Self::hash(key));
        let _: Option<()> = self
            .call(
                redis::cmd("SET")
                    .arg(&entry_key)
                    .arg(encode(epochs, entry).as_ref())
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut conn),
            )
            .await;
    }

    /// Deletes a shared detail.
    pub async fn delete_entry(&self, key: &CacheKey) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let entry_key = format!("{}c:{}", self.prefix, Self::hash(key));
        let _: Option<i64> = self
            .call(redis::cmd("DEL").arg(&entry_key).query_async(&mut conn))
            .await;
    }

    /// The invalidation epochs of a namespace now.
    pub async fn epochs(&self, namespace: &str) -> Option<(u64, u64)> {
        let mut conn = self.connection()?;
        let (all, ns) = self.epoch_keys(namespace);
        let (a, n): (Option<u64>, Option<u64>) = self
            .call(redis::cmd("MGET").arg(&all).arg(&ns).query_async(&mut conn))
            .await?;
        Some((a.unwrap_or(0), n.unwrap_or(0)))
    }

    /// Retires every shared entry of `namespace` (or of all namespaces).
    pub async fn bump_epoch(&self, namespace: Option<&str>) {
        let Some(mut conn) = self.connection() else {
            self.missed_invalidation.store(true, Ordering::Release);
            return;
        };
        let (all, ns) = self.epoch_keys(namespace.unwrap_or(""));
        let key = if namespace.is_some() { ns } else { all };
        let bumped: Option<u64> = self
            .call(redis::cmd("INCR").arg(&key).query_async(&mut conn))
            .await;
        if bumped.is_none() {
            self.missed_invalidation.store(true, Ordering::Release);
        }
    }

    fn token(&self) -> String {
        let n = self.token_counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:016x}", self.token_seed)
    }

    /// The Redis key of `key`'s flight lease (operators and tests can
    /// inspect or clear it).
    pub fn lease_key(&self, key: &CacheKey) -> String {
        format!("{}l:{}", self.prefix, Self::hash(key))
    }

    /// Tries to take the flight lease for `key`.
    pub async fn try_lease(&self, key: &CacheKey) -> Lease {
        let Some(mut conn) = self.connection() else {
            return Lease::Unavailable;
        };
        let lease_key = format!("{}l:{}", self.prefix, Self::hash(key));
        let token = self.token();
        for _ in 0..3 {
            let taken: Option<Option<String>> = self
                .call(
                    redis::cmd("SET")
                        .arg(&lease_key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(self.lease.as_millis() as u64)
                        .query_async(&mut conn),
                )
                .await;
            match taken {
                None => return Lease::Unavailable,
                Some(Some(_)) => return Lease::Acquired(token),
                Some(None) => {}
            }
            let holder: Option<Option<String>> = self
                .call(redis::cmd("GET").arg(&lease_key).query_async(&mut conn))
                .await;
            match holder {
                None => return Lease::Unavailable,
                Some(Some(holder)) => return Lease::Held(holder),
                // Expired in between: try again.
                Some(None) => {}
            }
        }
        Lease::Unavailable
    }

    /// Publishes a flight's answer for the other replicas' waiters.
    pub async fn publish(&self, key: &CacheKey, token: &str, entry: &SharedEntry) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let result_key = format!("{}f:{}:{token}", self.prefix, Self::hash(key));
        let _: Option<()> = self
            .call(
                redis::cmd("SET")
                    .arg(&result_key)
                    .arg(encode((0, 0), entry).as_ref())
                    .arg("PX")
                    .arg(RESULT_TTL.as_millis() as u64)
                    .query_async(&mut conn),
            )
            .await;
    }

    /// Renews the lease every third of its lifetime while the holder's
    /// upstream call runs; never returns while the lease is ours (the
    /// caller races it against the call).
    pub async fn keep_lease(&self, key: &CacheKey, token: &str) {
        let lease_key = format!("{}l:{}", self.prefix, Self::hash(key));
        loop {
            tokio::time::sleep(self.lease / 3).await;
            let Some(mut conn) = self.connection() else {
                continue;
            };
            let renewed: Option<i64> = self
                .call(
                    self.renew
                        .key(&lease_key)
                        .arg(token)
                        .arg(self.lease.as_millis() as u64)
                        .invoke_async(&mut conn),
                )
                .await;
            if renewed == Some(0) {
                // Taken over: let the call finish; it still answers locally.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Gives the lease back, if it is still ours.
    pub async fn release(&self, key: &CacheKey, token: &str) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let lease_key = format!("{}l:{}", self.prefix, Self::hash(key));
        let _: Option<i64> = self
            .call(
                self.release
                    .key(&lease_key)
                    .arg(token)
                    .invoke_async(&mut conn),
            )
            .await;
    }

    /// Waits for the answer of the flight holding `token`, until `deadline`.
    pub async fn wait(
        &self,
        key: &CacheKey,
        token: &str,
        deadline: tokio::time::Instant,
    ) -> Waited {
        let hash = Self::hash(key);
        let result_key = format!("{}f:{hash}:{token}", self.prefix);
        let lease_key = format!("{}l:{hash}", self.prefix);
        loop {
            let Some(mut conn) = self.connection() else {
                return Waited::Unavailable;
            };
            let polled: Option<(Option<Vec<u8>>, Option<String>)> = self
                .call(
                    redis::cmd("MGET")
                        .arg(&result_key)
                        .arg(&lease_key)
                        .query_async(&mut conn),
                )
                .await;
            match polled {
                None => return Waited::Unavailable,
                Some((Some(value), _)) => {
                    return match decode(&value) {
                        Some((_, entry)) => {
                            self.metrics.remote_flights.fetch_add(1, Ordering::Relaxed);
                            Waited::Answer(entry)
                        }
                        None => Waited::LeaseGone,
                    }
                }
                Some((None, holder)) if holder.as_deref() != Some(token) => {
                    return Waited::LeaseGone
                }
                Some((None, _)) => {}
            }
            if tokio::time::Instant::now() + POLL_EVERY > deadline {
                return Waited::TimedOut;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// Subscribes to the invalidation channel for the life of the process,
/// resubscribing after any disconnection.
async fn listen_for_invalidations(
    client: redis::Client,
    channel: String,
    out: tokio::sync::mpsc::UnboundedSender<Invalidation>,
    subscribed: Arc<AtomicBool>,
) {
    use futures_util::StreamExt;
    let mut delay = Duration::from_millis(100);
    loop {
        if let Ok(mut pubsub) = client.get_async_pubsub().await {
            if pubsub.subscribe(&channel).await.is_ok() {
                delay = Duration::from_millis(100);
                subscribed.store(true, Ordering::Release);
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    if let Ok(invalidation) =
                        serde_json::from_slice::<Invalidation>(message.get_payload_bytes())
                    {
                        if out.send(invalidation).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        subscribed.store(false, Ordering::Release);
        if out.is_closed() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Which shared rate a GCRA step spends.
#[derive(Debug, Clone, Copy)]
pub enum Bucket<'a> {
    /// A client's `rate_limit`.
    Client(&'a str),
    /// `upstream.max_requests_per_second`, gateway-wide.
    Upstream,
}

/// One GCRA step in Redis for a shared per-client limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraStep {
    /// The request may pass.
    pub allowed: bool,
    /// Requests left in the burst after this one.
    pub remaining: u32,
    /// When refused: time until one request would pass.
    pub wait: Duration,
    /// Time until the whole burst is back.
    pub reset: Duration,
}

impl Shared {
    /// Evaluates the client's limit atomically in Redis (one script: no
    /// read-modify-write race between replicas), on Redis's own clock.
    /// `None` when Redis is unavailable.
    pub async fn gcra(
        &self,
        bucket: Bucket<'_>,
        interval: Duration,
        burst: u32,
    ) -> Option<GcraStep> {
        let mut conn = self.connection()?;
        let client = match bucket {
            Bucket::Client(name) => name,
            // Its own key space: no client name can collide with it.
            Bucket::Upstream => "",
        };
        let kind = if matches!(bucket, Bucket::Upstream) {
            "u"
        } else {
            "r"
        };
        let key = format!(
            "{}{kind}:{}",
            self.prefix,
            hex::encode(Sha256::digest(client.as_bytes()))
        );
        let interval_us = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let (allowed, remaining, wait_us, reset_us): (i64, i64, i64, i64) = self
            .call(
                self.gcra
                    .key(&key)
                    .arg(interval_us)
                    .arg(burst)
                    .invoke_async(&mut conn),
            )
            .await?;
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Some(GcraStep {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(0),
            wait: us(wait_us),
            reset: us(reset_us),
        })
    }
}

/// GCRA on a theoretical arrival time (TAT) kept in one key, timed by
/// Redis's clock so that every replica agrees.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - interval * (burst - 1)
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor((new_tat - now) / 1000) + 1000)
local remaining = math.floor((now - (new_tat - burst * interval)) / interval)
if remaining < 0 then remaining = 0 end
return {1, remaining, 0, new_tat - now}
";

const FORMAT: u8 = 1;

fn encode(epochs: (u64, u64), entry: &SharedEntry) -> Bytes {
    let content_type = entry
        .content_type
        .as_ref()
        .map_or(&[][..], HeaderValue::as_bytes);
    let mut out = BytesMut::with_capacity(21 + content_type.len() + entry.body.len());
    out.put_u8(FORMAT);
    out.put_u64(epochs.0);
    out.put_u64(epochs.1);
    out.put_u16(entry.status.as_u16());
    out.put_u16(u16::try_from(content_type.len()).unwrap_or(0));
    if content_type.len() <= usize::from(u16::MAX) {
        out.put_slice(content_type);
    }
    out.put_slice(&entry.body);
    out.freeze()
}

fn decode(raw: &[u8]) -> Option<((u64, u64), SharedEntry)> {
    let mut buf = raw;
    if buf.len() < 21 || buf.get_u8() != FORMAT {
        return None;
    }
    let epochs = (buf.get_u64(), buf.get_u64());
    let status = StatusCode::from_u16(buf.get_u16()).ok()?;
    let ct_len = usize::from(buf.get_u16());
    if buf.len() < ct_len {
        return None;
    }
    let content_type = match ct_len {
        0 => None,
        n => Some(HeaderValue::from_bytes(&buf[..n]).ok()?),
    };
    buf.advance(ct_len);
    Some((
        epochs,
        SharedEntry {
            status,
            content_type,
            body: Bytes::copy_from_slice(buf),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trips_and_rejects_garbage() {
        let entry = SharedEntry {
            status: StatusCode::OK,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: Bytes::from_static(b"{\"status\":\"completed\"}"),
        };
        let raw = encode((3, 7), &entry);
        assert_eq!(decode(&raw), Some(((3, 7), entry)));
        assert_eq!(decode(b"short"), None);
        assert_eq!(decode(&[9; 40]), None);
    }

    #[test]
    fn hashes_separate_namespaces_and_kinds() {
        let a = CacheKey::detail("ns_a", "/v1/retrievers/executions/e".into());
        let b = CacheKey::detail("ns_b", "/v1/retrievers/executions/e".into());
        assert_ne!(Shared::hash(&a), Shared::hash(&b));
        // Length-prefixed parts: moving a byte between fields changes the hash.
        let c = CacheKey::detail("ns_a/", "v1/retrievers/executions/e".into());
        assert_ne!(Shared::hash(&a), Shared::hash(&c));
        assert_eq!(Shared::hash(&a).len(), 64);
    }
}
