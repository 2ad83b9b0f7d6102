//! The file as written, before validation: serde types that mirror the
//! TOML of the public interface, with its defaults. Unknown keys are
//! errors (`deny_unknown_fields`), never ignored.

use std::path::PathBuf;

use super::{FailMode, LogFormat};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFile {
    pub(super) server: RawServer,
    pub(super) upstream: RawUpstream,
    pub(super) clients: Vec<RawClient>,
    pub(super) cache: RawCache,
    pub(super) coalesce: RawCoalesce,
    pub(super) log: RawLog,
    pub(super) redis: Option<RawRedis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    pub(super) url: String,
    #[serde(default = "default_redis_prefix")]
    pub(super) key_prefix: String,
    #[serde(default = "default_redis_timeout_ms")]
    pub(super) timeout_ms: u64,
    #[serde(default = "default_redis_lease_ms")]
    pub(super) lease_ms: u64,
    #[serde(default)]
    pub(super) rate_limit_fail_mode: FailMode,
}

pub(super) fn default_redis_prefix() -> String {
    "mixpeek-gateway:".into()
}

pub(super) fn default_redis_timeout_ms() -> u64 {
    100
}

pub(super) fn default_redis_lease_ms() -> u64 {
    5_000
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub(super) format: LogFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub(super) listen: String,
    pub(super) max_body_bytes: u64,
    pub(super) tls_cert_file: Option<PathBuf>,
    pub(super) tls_key_file: Option<PathBuf>,
    pub(super) admin_key_sha256: Option<String>,
    pub(super) shutdown_grace_ms: u64,
    pub(super) idle_timeout_ms: u64,
    pub(super) send_timeout_ms: u64,
    /// Unset: from the open-file limit.
    pub(super) max_connections: Option<u64>,
    /// 0: one per CPU.
    pub(super) workers: u64,
    pub(super) work_stealing: bool,
    pub(super) auth_failures_per_minute: u32,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 10 * 1024 * 1024,
            tls_cert_file: None,
            tls_key_file: None,
            admin_key_sha256: None,
            shutdown_grace_ms: 10_000,
            idle_timeout_ms: 30_000,
            send_timeout_ms: 30_000,
            max_connections: None,
            workers: 0,
            work_stealing: false,
            auth_failures_per_minute: 30,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUpstream {
    pub(super) base_url: String,
    pub(super) api_key_env: String,
    pub(super) timeout_ms: u64,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) max_requests_per_second: Option<u32>,
    pub(super) queue_timeout_ms: u64,
    pub(super) max_in_flight: u64,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            base_url: "https://api.mixpeek.com".into(),
            api_key_env: "MIXPEEK_API_KEY".into(),
            timeout_ms: 30_000,
            ca_file: None,
            max_requests_per_second: None,
            queue_timeout_ms: 2_000,
            max_in_flight: 256,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) name: String,
    pub(super) key_sha256: String,
    pub(super) namespace: String,
    #[serde(default)]
    pub(super) allowed_namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub(super) rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub(super) max_in_flight: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) requests_per_second: u32,
    pub(super) burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCache {
    pub(super) max_bytes: u64,
    pub(super) ttl_seconds: u64,
    pub(super) terminal_statuses: Vec<String>,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            ttl_seconds: 86_400,
            terminal_statuses: [
                "completed",
                "completed_with_errors",
                "failed",
                "canceled",
                "cancelled",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCoalesce {
    pub(super) list_ttl_ms: u64,
}
