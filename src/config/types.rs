//! The typed configuration the gateway runs on: durations, digests, parsed
//! URLs and validated bounds, built once by [`super::Config::from_toml`]
//! and never re-parsed per request.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderValue, Uri};
use serde::Deserialize;

/// The default location of the config file, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/gateway.toml";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[upstream]`
    pub upstream: UpstreamConfig,
    /// `[[clients]]`, at least one.
    pub clients: Vec<ClientConfig>,
    /// `[cache]`
    pub cache: CacheConfig,
    /// `[coalesce]`
    pub coalesce: CoalesceConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[redis]`: shared state across replicas; `None` without a `url`.
    pub redis: Option<RedisConfig>,
}

/// `[redis]`: what several replicas share through Redis.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS through rustls).
    pub url: String,
    /// Prefix of every key the gateway writes.
    pub key_prefix: String,
    /// Longest wait for any Redis call before the replica works alone.
    pub timeout: Duration,
    /// Lifetime of a cross-replica flight lease.
    pub lease: Duration,
    /// What the per-client limits do while Redis is unavailable.
    pub rate_limit_fail_mode: FailMode,
}

impl fmt::Debug for RedisConfig {
    // The URL may carry a password: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("lease", &self.lease)
            .field("rate_limit_fail_mode", &self.rate_limit_fail_mode)
            .finish()
    }
}

/// Rate limiting while Redis is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Enforce each replica's own limiter.
    #[default]
    Local,
    /// Let requests through.
    Open,
}

/// `[log]`: how request logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable key=value lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[server]`: where and how the gateway listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Request bodies larger than this are answered 413.
    pub max_body_bytes: usize,
    /// Certificate and key files for HTTPS, when both are set.
    pub tls: Option<TlsFiles>,
    /// SHA-256 of the admin key; `None` disables the admin API.
    pub admin_key_sha256: Option<[u8; 32]>,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// A connection with no request started or in flight for this long is
    /// closed (idle keep-alive connections, and clients that never finish
    /// their request head).
    pub idle_timeout: Duration,
    /// A connection whose client accepts no bytes of a response for this
    /// long (its socket stays full) is closed, and whatever it held freed.
    pub send_timeout: Duration,
    /// Client connections open at once; past it a new connection is closed
    /// as soon as it is accepted.
    pub max_connections: usize,
    /// Threads serving connections, each with its own runtime (or, with
    /// `work_stealing`, all in one).
    pub workers: std::num::NonZeroUsize,
    /// Serve on one work-stealing runtime instead of a runtime per thread.
    pub work_stealing: bool,
    /// Failed authentications (401) one peer IP may cause per minute before
    /// it is answered 429 for the rest of that minute.
    pub auth_failures_per_minute: NonZeroU32,
}

/// PEM files for serving HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert_file: PathBuf,
    /// Private key.
    pub key_file: PathBuf,
}

/// `[upstream]`: the Mixpeek API the gateway forwards to.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Scheme and authority of the API, e.g. `https://api.mixpeek.com`.
    pub base_url: Uri,
    /// Name of the environment variable the real key was read from.
    pub api_key_env: String,
    /// The real key, ready to send as `Authorization: Bearer …`.
    pub api_key: ApiKey,
    /// Time allowed from sending the request to receiving the response head.
    pub timeout: Duration,
    /// Extra CA certificates (PEM) trusted for an `https://` upstream.
    pub ca_file: Option<PathBuf>,
    /// Gateway-wide limit on calls that actually go upstream; `None`: no limit.
    pub max_requests_per_second: Option<NonZeroU32>,
    /// Longest a call waits for the upstream quota guard before it is 429.
    pub queue_timeout: Duration,
    /// Upstream calls running at once.
    pub max_in_flight: usize,
}

/// Largest `cache.ttl_seconds` accepted: moka refuses lifetimes beyond
/// 1000 years (it asserts when the cache is built).
pub const MAX_CACHE_TTL_SECONDS: u64 = 1000 * 365 * 24 * 3600;

/// Largest `upstream.queue_timeout_ms` accepted (one hour).
pub const MAX_QUEUE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Largest `upstream.max_in_flight` accepted.
pub const MAX_IN_FLIGHT: usize = 1_000_000;

/// The organisation's real API key as a ready `Authorization` value.
///
/// Marked sensitive, and its `Debug` never prints it, so it cannot leak into
/// logs through a stray `{:?}`.
#[derive(Clone)]
pub struct ApiKey(HeaderValue);

impl ApiKey {
    /// Wraps a raw key; fails if it cannot be sent in a header.
    pub fn new(key: &str) -> Result<Self, &'static str> {
        if key.is_empty() {
            return Err("is empty");
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| "contains characters not allowed in an HTTP header")?;
        value.set_sensitive(true);
        Ok(Self(value))
    }

    /// The `Authorization` header value (`Bearer <key>`).
    pub fn authorization(&self) -> &HeaderValue {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// One `[[clients]]` table: a team and what it may do.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The team's name, used in logs, metrics and error messages.
    pub name: String,
    /// SHA-256 of the team's gateway key.
    pub key_sha256: [u8; 32],
    /// Namespace injected when a request names none.
    pub namespace: String,
    /// Namespaces the team may name; always contains `namespace`.
    /// Shared, so cache keys hold the namespace without copying it.
    pub allowed_namespaces: Vec<std::sync::Arc<str>>,
    /// The team's rate limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// The most upstream calls the team may have running at once; `None`:
    /// the default share, half of `upstream.max_in_flight` (rounded up).
    pub max_in_flight: Option<std::num::NonZeroUsize>,
}

/// A GCRA rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate.
    pub requests_per_second: NonZeroU32,
    /// Requests allowed at once after an idle period.
    pub burst: NonZeroU32,
}

/// `[cache]`: the execution-detail cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Bound on the weighted size of cached entries.
    pub max_bytes: u64,
    /// Time to live of an entry.
    pub ttl: Duration,
    /// Lower-cased statuses after which an execution never changes.
    pub terminal_statuses: Vec<String>,
}

/// `[coalesce]`: list-query coalescing.
#[derive(Debug, Clone)]
pub struct CoalesceConfig {
    /// How long a finished list result is reused; zero joins only calls in flight.
    pub list_ttl: Duration,
}
