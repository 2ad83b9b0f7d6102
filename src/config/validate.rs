//! From the file as written ([`super::raw`]) to the typed config
//! ([`super::types`]): every check, each failure one [`ConfigError`] that
//! names its key.

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use http::Uri;

use super::raw::*;
use super::types::*;
use super::ConfigError;

impl RawRedis {
    fn validate(self) -> Result<RedisConfig, ConfigError> {
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://")) {
            return Err(ConfigError::new(
                "redis.url",
                "must start with redis:// or rediss://",
            ));
        }
        if redis::Client::open(self.url.as_str()).is_err() {
            // The message could echo a password in the URL: keep it generic.
            return Err(ConfigError::new("redis.url", "is not a valid Redis URL"));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::new(
                "redis.timeout_ms",
                "must be greater than 0",
            ));
        }
        if self.lease_ms < 100 {
            return Err(ConfigError::new("redis.lease_ms", "must be at least 100"));
        }
        Ok(RedisConfig {
            url: self.url,
            key_prefix: self.key_prefix,
            timeout: Duration::from_millis(self.timeout_ms),
            lease: Duration::from_millis(self.lease_ms),
            rate_limit_fail_mode: self.rate_limit_fail_mode,
        })
    }
}

/// Upper bound of `server.max_connections`.
const MAX_CONNECTIONS: u64 = 10_000_000;

/// Descriptors kept for everything but client and upstream sockets: the
/// listener, Redis, the config and TLS files, standard streams, resolvers.
const RESERVED_DESCRIPTORS: u64 = 64;

/// The open-file limit the process runs under (the soft `RLIMIT_NOFILE`,
/// read from `/proc/self/limits`); 1024, the usual default, where it cannot
/// be read.
fn open_file_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| parse_open_file_limit(&text))
        .unwrap_or(1024)
}

/// The soft limit on the `Max open files` line; `u64::MAX` for unlimited.
fn parse_open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// `server.max_connections` when unset: the descriptors left once every
/// upstream slot has its socket and [`RESERVED_DESCRIPTORS`] are kept, but
/// never less than half of the limit (a small limit with many slots), at
/// least 1 and at most [`MAX_CONNECTIONS`].
fn default_max_connections(open_files: u64, max_in_flight: usize) -> usize {
    let reserved = (max_in_flight as u64).saturating_add(RESERVED_DESCRIPTORS);
    let left = open_files.saturating_sub(reserved).max(open_files / 2);
    left.clamp(1, MAX_CONNECTIONS) as usize
}

/// Bounds of `server.idle_timeout_ms` and `server.send_timeout_ms`: 30 ms
/// to one day.
const MIN_IDLE_TIMEOUT_MS: u64 = 30;

const MAX_IDLE_TIMEOUT_MS: u64 = 86_400_000;

/// Largest `server.workers`.
const MAX_WORKERS: u64 = 1024;

impl Config {
    /// Reads and validates the file at `path`, reading the real key from the
    /// process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        Self::from_toml(&text, |name| std::env::var(name).ok())
    }

    /// Parses and validates TOML text; `env` looks up environment variables.
    pub fn from_toml(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let raw: RawFile = parse(text)?;
        raw.validate(env)
    }

    /// A human-readable summary without any secret, for `check-config`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let s = &self.server;
        let _ = writeln!(out, "listen:          {}", s.listen);
        let _ = writeln!(
            out,
            "tls:             {}",
            if s.tls.is_some() { "on" } else { "off" }
        );
        let _ = writeln!(out, "max_body_bytes:  {}", s.max_body_bytes);
        let _ = writeln!(out, "connections:     at most {}", s.max_connections);
        let _ = writeln!(
            out,
            "admin api:       {}",
            if s.admin_key_sha256.is_some() {
                "enabled"
            } else {
                "disabled"
            }
        );
        let u = &self.upstream;
        let _ = writeln!(out, "upstream:        {}", u.base_url);
        let _ = writeln!(out, "api key:         from ${} (set)", u.api_key_env);
        let _ = writeln!(out, "timeout:         {} ms", u.timeout.as_millis());
        let _ = writeln!(
            out,
            "upstream guard:  {}, {} in flight, queue timeout {} ms",
            match u.max_requests_per_second {
                Some(rps) => format!("{rps} rps"),
                None => "no rate limit".into(),
            },
            u.max_in_flight,
            u.queue_timeout.as_millis()
        );
        let _ = writeln!(
            out,
            "auth failures:   {} per minute per peer IP",
            s.auth_failures_per_minute
        );
        let _ = writeln!(
            out,
            "cache:           {} bytes, ttl {} s, terminal {:?}",
            self.cache.max_bytes,
            self.cache.ttl.as_secs(),
            self.cache.terminal_statuses
        );
        let _ = writeln!(
            out,
            "coalesce:        list_ttl {} ms",
            self.coalesce.list_ttl.as_millis()
        );
        let _ = writeln!(
            out,
            "redis:           {}",
            match &self.redis {
                // Never the URL: it may hold a password.
                Some(r) => format!(
                    "on (prefix {:?}, timeout {} ms, lease {} ms, limits fail {:?})",
                    r.key_prefix,
                    r.timeout.as_millis(),
                    r.lease.as_millis(),
                    r.rate_limit_fail_mode
                ),
                None => "off".into(),
            }
        );
        let _ = writeln!(out, "clients:         {}", self.clients.len());
        for c in &self.clients {
            let limit = match c.rate_limit {
                Some(r) => format!("{} rps, burst {}", r.requests_per_second, r.burst),
                None => "no limit".into(),
            };
            let _ = writeln!(
                out,
                "  - {}: namespace {}, allowed {:?}, {}",
                c.name, c.namespace, c.allowed_namespaces, limit
            );
        }
        out
    }
}

/// Deserialises with the path of the failing key attached to the error.
fn parse(text: &str) -> Result<RawFile, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let line = inner
            .span()
            .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
        // toml's Display spans several lines with a snippet; keep one line.
        let mut message = inner.message().trim().replace('\n', " ");
        if let Some(line) = line {
            message = format!("{message} (line {line})");
        }
        let key = if path.is_empty() || path == "." {
            "config".to_string()
        } else {
            path
        };
        ConfigError::new(key, message)
    })
}

fn parse_sha256(key: &str, hex_digest: &str) -> Result<[u8; 32], ConfigError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest.trim(), &mut out).map_err(|_| {
        ConfigError::new(
            key,
            "must be 64 hex characters (printf %s \"$KEY\" | sha256sum)",
        )
    })?;
    Ok(out)
}

fn parse_base_url(raw: &str) -> Result<Uri, ConfigError> {
    const KEY: &str = "upstream.base_url";
    let uri: Uri = raw
        .trim_end_matches('/')
        .parse()
        .map_err(|e| ConfigError::new(KEY, format!("not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(ConfigError::new(KEY, "must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(ConfigError::new(KEY, "has no host"));
    }
    if uri.query().is_some() {
        return Err(ConfigError::new(KEY, "must not have a query"));
    }
    Ok(uri)
}

impl RawFile {
    fn validate(self, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let max_connections = self.server.max_connections;
        let mut server = self.server.validate()?;
        let upstream = self.upstream.validate(env)?;
        server.max_connections = match max_connections {
            None => default_max_connections(open_file_limit(), upstream.max_in_flight),
            Some(n) if (1..=MAX_CONNECTIONS).contains(&n) => n as usize,
            Some(_) => {
                return Err(ConfigError::new(
                    "server.max_connections",
                    format!(
                        "must be between 1 and {MAX_CONNECTIONS} (unset: from the open-file limit)"
                    ),
                ))
            }
        };
        if self.clients.is_empty() {
            return Err(ConfigError::new(
                "clients",
                "at least one [[clients]] table is required",
            ));
        }
        let mut clients: Vec<ClientConfig> = Vec::with_capacity(self.clients.len());
        for (i, raw) in self.clients.into_iter().enumerate() {
            let client = raw.validate(i)?;
            if client
                .max_in_flight
                .is_some_and(|n| n.get() > upstream.max_in_flight)
            {
                return Err(ConfigError::new(
                    format!("clients[{i}].max_in_flight"),
                    format!(
                        "must be at most upstream.max_in_flight ({})",
                        upstream.max_in_flight
                    ),
                ));
            }
            if clients.iter().any(|c| c.name == client.name) {
                return Err(ConfigError::new(
                    format!("clients[{i}].name"),
                    format!("duplicate client name {:?}", client.name),
                ));
            }
            if clients.iter().any(|c| c.key_sha256 == client.key_sha256) {
                return Err(ConfigError::new(
                    format!("clients[{i}].key_sha256"),
                    "the same key is already used by another client",
                ));
            }
            clients.push(client);
        }
        Ok(Config {
            server,
            upstream,
            clients,
            cache: self.cache.validate()?,
            coalesce: CoalesceConfig {
                list_ttl: Duration::from_millis(self.coalesce.list_ttl_ms),
            },
            log: LogConfig {
                format: self.log.format,
            },
            redis: self.redis.map(RawRedis::validate).transpose()?,
        })
    }
}

impl RawServer {
    fn validate(self) -> Result<ServerConfig, ConfigError> {
        let listen = self.listen.parse().map_err(|_| {
            ConfigError::new(
                "server.listen",
                format!("{:?} is not an IP:port address", self.listen),
            )
        })?;
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                "must be greater than 0",
            ));
        }
        let max_body_bytes = usize::try_from(self.max_body_bytes)
            .map_err(|_| ConfigError::new("server.max_body_bytes", "is too large"))?;
        let tls = match (self.tls_cert_file, self.tls_key_file) {
            (Some(cert_file), Some(key_file)) => Some(TlsFiles {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "server.tls_key_file",
                    "must be set when server.tls_cert_file is",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "server.tls_cert_file",
                    "must be set when server.tls_key_file is",
                ))
            }
        };
        if let Some(files) = &tls {
            // Fail at startup (and in check-config), not at the first handshake.
            crate::config::tls::server_config(&files.cert_file, &files.key_file)?;
        }
        let admin_key_sha256 = self
            .admin_key_sha256
            .map(|h| parse_sha256("server.admin_key_sha256", &h))
            .transpose()?;
        let auth_failures_per_minute =
            NonZeroU32::new(self.auth_failures_per_minute).ok_or_else(|| {
                ConfigError::new("server.auth_failures_per_minute", "must be greater than 0")
            })?;
        if !(MIN_IDLE_TIMEOUT_MS..=MAX_IDLE_TIMEOUT_MS).contains(&self.idle_timeout_ms) {
            return Err(ConfigError::new(
                "server.idle_timeout_ms",
                format!("must be between {MIN_IDLE_TIMEOUT_MS} and {MAX_IDLE_TIMEOUT_MS}"),
            ));
        }
        if !(MIN_IDLE_TIMEOUT_MS..=MAX_IDLE_TIMEOUT_MS).contains(&self.send_timeout_ms) {
            return Err(ConfigError::new(
                "server.send_timeout_ms",
                format!("must be between {MIN_IDLE_TIMEOUT_MS} and {MAX_IDLE_TIMEOUT_MS}"),
            ));
        }
        if self.workers > MAX_WORKERS {
            return Err(ConfigError::new(
                "server.workers",
                format!("must be at most {MAX_WORKERS} (0: one per CPU)"),
            ));
        }
        let workers = match usize::try_from(self.workers)
            .ok()
            .and_then(std::num::NonZeroUsize::new)
        {
            Some(workers) => workers,
            None => std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN),
        };
        Ok(ServerConfig {
            listen,
            max_body_bytes,
            tls,
            admin_key_sha256,
            workers,
            work_stealing: self.work_stealing,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            send_timeout: Duration::from_millis(self.send_timeout_ms),
            // Set by the file's validation, which knows the upstream's slots.
            max_connections: 0,
            auth_failures_per_minute,
        })
    }
}

impl RawUpstream {
    fn validate(self, env: impl Fn(&str) -> Option<String>) -> Result<UpstreamConfig, ConfigError> {
        let base_url = parse_base_url(&self.base_url)?;
        if self.api_key_env.is_empty() {
            return Err(ConfigError::new(
                "upstream.api_key_env",
                "must name an environment variable",
            ));
        }
        let key = env(&self.api_key_env).ok_or_else(|| {
            ConfigError::new(
                "upstream.api_key_env",
                format!("environment variable {} is not set", self.api_key_env),
            )
        })?;
        let api_key = ApiKey::new(key.trim()).map_err(|problem| {
            ConfigError::new(
                "upstream.api_key_env",
                format!("environment variable {} {problem}", self.api_key_env),
            )
        })?;
        if self.timeout_ms == 0 {
            return Err(ConfigError::new(
                "upstream.timeout_ms",
                "must be greater than 0",
            ));
        }
        if let Some(path) = &self.ca_file {
            crate::config::tls::load_certs(path, "upstream.ca_file")?;
        }
        let max_requests_per_second = self
            .max_requests_per_second
            .map(|rps| {
                NonZeroU32::new(rps).ok_or_else(|| {
                    ConfigError::new(
                        "upstream.max_requests_per_second",
                        "must be greater than 0 (leave it out for no limit)",
                    )
                })
            })
            .transpose()?;
        let queue_timeout = Duration::from_millis(self.queue_timeout_ms);
        if queue_timeout > MAX_QUEUE_TIMEOUT {
            return Err(ConfigError::new(
                "upstream.queue_timeout_ms",
                format!("must be at most {}", MAX_QUEUE_TIMEOUT.as_millis()),
            ));
        }
        let max_in_flight = usize::try_from(self.max_in_flight)
            .ok()
            .filter(|n| (1..=MAX_IN_FLIGHT).contains(n))
            .ok_or_else(|| {
                ConfigError::new(
                    "upstream.max_in_flight",
                    format!("must be between 1 and {MAX_IN_FLIGHT}"),
                )
            })?;
        Ok(UpstreamConfig {
            base_url,
            api_key_env: self.api_key_env,
            api_key,
            timeout: Duration::from_millis(self.timeout_ms),
            ca_file: self.ca_file,
            max_requests_per_second,
            queue_timeout,
            max_in_flight,
        })
    }
}

impl RawClient {
    fn validate(self, i: usize) -> Result<ClientConfig, ConfigError> {
        let key = |field: &str| format!("clients[{i}].{field}");
        if self.name.trim().is_empty() {
            return Err(ConfigError::new(key("name"), "must not be empty"));
        }
        let key_sha256 = parse_sha256(&key("key_sha256"), &self.key_sha256)?;
        if !valid_namespace(&self.namespace) {
            return Err(ConfigError::new(
                key("namespace"),
                "must be a non-empty namespace id or name",
            ));
        }
        let mut allowed = vec![self.namespace.clone()];
        for ns in self.allowed_namespaces.unwrap_or_default() {
            if !valid_namespace(&ns) {
                return Err(ConfigError::new(
                    key("allowed_namespaces"),
                    format!("{ns:?} is not a valid namespace"),
                ));
            }
            if !allowed.contains(&ns) {
                allowed.push(ns);
            }
        }
        let rate_limit = self
            .rate_limit
            .map(|r| {
                let rps = NonZeroU32::new(r.requests_per_second).ok_or_else(|| {
                    ConfigError::new(
                        key("rate_limit.requests_per_second"),
                        "must be greater than 0",
                    )
                })?;
                let burst = match r.burst {
                    None => rps,
                    Some(b) => NonZeroU32::new(b).ok_or_else(|| {
                        ConfigError::new(key("rate_limit.burst"), "must be greater than 0")
                    })?,
                };
                Ok(RateLimit {
                    requests_per_second: rps,
                    burst,
                })
            })
            .transpose()?;
        let max_in_flight = self
            .max_in_flight
            .map(|n| {
                usize::try_from(n)
                    .ok()
                    .and_then(std::num::NonZeroUsize::new)
                    .ok_or_else(|| ConfigError::new(key("max_in_flight"), "must be greater than 0"))
            })
            .transpose()?;
        Ok(ClientConfig {
            name: self.name,
            key_sha256,
            namespace: self.namespace,
            allowed_namespaces: allowed.into_iter().map(std::sync::Arc::from).collect(),
            rate_limit,
            max_in_flight,
        })
    }
}

/// A namespace must be something we can put in a header and a cache key.
fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty() && ns.len() <= 256 && ns.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

impl RawCache {
    fn validate(self) -> Result<CacheConfig, ConfigError> {
        if self.max_bytes == 0 {
            return Err(ConfigError::new(
                "cache.max_bytes",
                "must be greater than 0",
            ));
        }
        if self.ttl_seconds == 0 {
            return Err(ConfigError::new(
                "cache.ttl_seconds",
                "must be greater than 0",
            ));
        }
        if self.ttl_seconds > MAX_CACHE_TTL_SECONDS {
            return Err(ConfigError::new(
                "cache.ttl_seconds",
                "must be at most 31536000000 (1000 years)",
            ));
        }
        Ok(CacheConfig {
            max_bytes: self.max_bytes,
            ttl: Duration::from_secs(self.ttl_seconds),
            terminal_statuses: self
                .terminal_statuses
                .iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn env(name: &str) -> Option<String> {
        (name == "MIXPEEK_API_KEY").then(|| "sk_real".to_string())
    }

    fn minimal() -> String {
        format!("[[clients]]\nname = \"a\"\nkey_sha256 = \"{DIGEST}\"\nnamespace = \"ns_a\"\n")
    }

    #[test]
    fn defaults_apply() {
        let c = Config::from_toml(&minimal(), env).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.server.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(c.upstream.base_url.to_string(), "https://api.mixpeek.com/");
        assert_eq!(c.upstream.timeout, Duration::from_secs(30));
        assert_eq!(
            c.clients[0].allowed_namespaces,
            vec![std::sync::Arc::from("ns_a")]
        );
        assert_eq!(c.cache.terminal_statuses.len(), 5);
        assert_eq!(c.coalesce.list_ttl, Duration::ZERO);
        assert_eq!(c.server.auth_failures_per_minute.get(), 30);
        assert_eq!(c.upstream.max_requests_per_second, None);
        assert_eq!(c.upstream.queue_timeout, Duration::from_secs(2));
        assert_eq!(c.upstream.max_in_flight, 256);
    }

    #[test]
    fn limit_keys_parse_and_bad_values_name_the_key() {
        let text = format!(
            "[server]\nauth_failures_per_minute = 5\n[upstream]\nmax_requests_per_second = 2\n\
             queue_timeout_ms = 0\nmax_in_flight = 8\n{}",
            minimal()
        );
        let c = Config::from_toml(&text, env).unwrap();
        assert_eq!(c.server.auth_failures_per_minute.get(), 5);
        assert_eq!(c.upstream.max_requests_per_second.map(|n| n.get()), Some(2));
        assert_eq!(c.upstream.queue_timeout, Duration::ZERO);
        assert_eq!(c.upstream.max_in_flight, 8);
        for (table, line, key) in [
            (
                "server",
                "auth_failures_per_minute = 0",
                "server.auth_failures_per_minute",
            ),
            (
                "upstream",
                "max_requests_per_second = 0",
                "upstream.max_requests_per_second",
            ),
            ("upstream", "max_in_flight = 0", "upstream.max_in_flight"),
            (
                "upstream",
                "max_in_flight = 99999999",
                "upstream.max_in_flight",
            ),
            (
                "upstream",
                "queue_timeout_ms = 99999999999",
                "upstream.queue_timeout_ms",
            ),
            (
                "upstream",
                "queue_timeout_ms = -1",
                "upstream.queue_timeout_ms",
            ),
        ] {
            let text = format!("[{table}]\n{line}\n{}", minimal());
            let err = Config::from_toml(&text, env).unwrap_err();
            assert_eq!(err.key, key, "{line}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let text = format!("[server]\nlisten_on = \"x\"\n{}", minimal());
        let err = Config::from_toml(&text, env).unwrap_err();
        assert_eq!(err.key, "server.listen_on");
        assert!(err.message.contains("listen_on"), "{err}");
    }

    #[test]
    fn a_clients_max_in_flight_is_within_the_gateways() {
        let with = |n: &str| {
            format!(
                "[upstream]\nmax_in_flight = 4\n{}max_in_flight = {n}\n",
                minimal()
            )
        };
        let c = Config::from_toml(&with("4"), env).unwrap();
        assert_eq!(c.clients[0].max_in_flight.map(|n| n.get()), Some(4));
        for n in ["0", "5"] {
            let err = Config::from_toml(&with(n), env).unwrap_err();
            assert_eq!(err.key, "clients[0].max_in_flight", "{n}");
        }
        assert_eq!(
            Config::from_toml(&minimal(), env).unwrap().clients[0].max_in_flight,
            None
        );
    }

    #[test]
    fn max_connections_defaults_from_the_open_file_limit_and_is_bounded() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_open_file_limit(limits), Some(1024));
        assert_eq!(
            parse_open_file_limit(
                "Max open files            unlimited            unlimited            files"
            ),
            Some(u64::MAX)
        );
        assert_eq!(parse_open_file_limit("Max processes 10 10 processes"), None);
        // Room for every upstream slot and the reserve, else half the limit.
        assert_eq!(default_max_connections(1024, 256), 1024 - 256 - 64);
        assert_eq!(default_max_connections(65_536, 256), 65_536 - 320);
        assert_eq!(default_max_connections(1024, 1000), 512);
        assert_eq!(default_max_connections(1, 1), 1);
        assert_eq!(
            default_max_connections(u64::MAX, 256),
            MAX_CONNECTIONS as usize
        );
        let c = Config::from_toml(&minimal(), env).unwrap();
        assert_eq!(
            c.server.max_connections,
            default_max_connections(open_file_limit(), c.upstream.max_in_flight)
        );
        for n in [0, MAX_CONNECTIONS + 1] {
            let text = format!("[server]\nmax_connections = {n}\n{}", minimal());
            let err = Config::from_toml(&text, env).unwrap_err();
            assert_eq!(err.key, "server.max_connections", "{n}");
        }
        let text = format!("[server]\nmax_connections = 3\n{}", minimal());
        assert_eq!(
            Config::from_toml(&text, env)
                .unwrap()
                .server
                .max_connections,
            3
        );
    }

    #[test]
    fn send_timeout_defaults_and_is_bounded() {
        let c = Config::from_toml(&minimal(), env).unwrap();
        assert_eq!(c.server.send_timeout, Duration::from_secs(30));
        for ms in ["0", "29", "86400001"] {
            let text = format!("[server]\nsend_timeout_ms = {ms}\n{}", minimal());
            let err = Config::from_toml(&text, env).unwrap_err();
            assert_eq!(err.key, "server.send_timeout_ms", "{ms}");
        }
        let text = format!("[server]\nsend_timeout_ms = 250\n{}", minimal());
        let c = Config::from_toml(&text, env).unwrap();
        assert_eq!(c.server.send_timeout, Duration::from_millis(250));
    }

    #[test]
    fn cache_ttl_is_bounded() {
        for ttl in ["0", "31536000001", "9223372036854775807"] {
            let text = format!("{}[cache]\nttl_seconds = {ttl}\n", minimal());
            let err = Config::from_toml(&text, env).unwrap_err();
            assert_eq!(err.key, "cache.ttl_seconds", "{ttl}");
        }
        let text = format!("{}[cache]\nttl_seconds = 31536000000\n", minimal());
        let config = Config::from_toml(&text, env).unwrap();
        assert_eq!(config.cache.ttl.as_secs(), MAX_CACHE_TTL_SECONDS);
    }

    #[test]
    fn bad_value_names_key() {
        let text = format!("[server]\nmax_body_bytes = \"big\"\n{}", minimal());
        let err = Config::from_toml(&text, env).unwrap_err();
        assert_eq!(err.key, "server.max_body_bytes");
        let err = Config::from_toml(&format!("[server]\nlisten = \"nope\"\n{}", minimal()), env)
            .unwrap_err();
        assert_eq!(err.key, "server.listen");
    }

    #[test]
    fn redis_url_never_printed() {
        let text = format!(
            "{}[redis]\nurl = \"redis://:s3cret@127.0.0.1:6379\"\n",
            minimal()
        );
        let config = Config::from_toml(&text, env).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(!config.summary().contains("s3cret"));
        let bad = format!("{}[redis]\nurl = \"http://x\"\n", minimal());
        assert_eq!(Config::from_toml(&bad, env).unwrap_err().key, "redis.url");
    }

    #[test]
    fn log_format() {
        let text = format!("{}[log]\nformat = \"json\"\n", minimal());
        assert_eq!(
            Config::from_toml(&text, env).unwrap().log.format,
            LogFormat::Json
        );
        let bad = format!("{}[log]\nformat = \"xml\"\n", minimal());
        assert_eq!(Config::from_toml(&bad, env).unwrap_err().key, "log.format");
    }

    #[test]
    fn missing_env_var_is_named() {
        let err = Config::from_toml(&minimal(), |_| None).unwrap_err();
        assert_eq!(err.key, "upstream.api_key_env");
        assert!(err.message.contains("MIXPEEK_API_KEY"));
    }

    #[test]
    fn bad_digest_and_duplicates_rejected() {
        let text = minimal().replace(DIGEST, "abc");
        assert_eq!(
            Config::from_toml(&text, env).unwrap_err().key,
            "clients[0].key_sha256"
        );
        let twice = format!("{}{}", minimal(), minimal().replace("\"a\"", "\"b\""));
        assert_eq!(
            Config::from_toml(&twice, env).unwrap_err().key,
            "clients[1].key_sha256"
        );
        assert_eq!(Config::from_toml("", env).unwrap_err().key, "clients");
    }

    #[test]
    fn api_key_debug_is_redacted() {
        let c = Config::from_toml(&minimal(), env).unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("sk_real"));
    }
}
