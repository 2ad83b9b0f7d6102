//! Live reload of the clients: on SIGHUP or `POST /_gateway/reload` (admin
//! key) the config file is read and validated again, and the clients —
//! their keys, namespaces and rate limits — are swapped in atomically.
//! Connections stay open and the cache is kept. A file that fails
//! validation is refused and the running clients stay. Keys that cannot
//! change without a restart (listen address, TLS, upstream, cache sizes)
//! are reported, not applied.

use std::path::PathBuf;
use std::sync::Arc;

use http::{header, HeaderValue, Response};

use crate::body::{self, Body};
use crate::config::{Config, ConfigError};
use crate::error::GatewayError;
use crate::layers::auth::{ClientRegistry, Clients};
use crate::limits::SharedClientLimits;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Number of clients now in force.
    pub clients: usize,
    /// Changed keys that only a restart applies.
    pub restart_required: Vec<&'static str>,
}

/// Reloads the clients from the config file the gateway started with.
#[derive(Debug)]
pub struct Reloader {
    /// One reload at a time (SIGHUP and the endpoint may race).
    lock: std::sync::Mutex<()>,
    path: Option<PathBuf>,
    running: Arc<Config>,
    clients: Clients,
    limits: SharedClientLimits,
}

impl Reloader {
    /// `POST /_gateway/reload`: reloads and answers what changed, in JSON;
    /// a refused file is a 400 naming the key, and the running clients stay.
    pub fn respond(&self) -> Response<Body> {
        match self.reload() {
            Ok(report) => {
                let body = serde_json::json!({
                    "status": "reloaded",
                    "clients": report.clients,
                    "restart_required": report.restart_required,
                });
                let mut response = Response::new(body::full(body.to_string()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(error) => {
                tracing::error!(%error, "config reload refused; the running clients stay");
                GatewayError::BadRequest(format!("config reload refused: {error}")).into_response()
            }
        }
    }

    /// `path` is `None` when the config did not come from a file (demo,
    /// tests): reloading is then refused.
    pub fn new(
        path: Option<PathBuf>,
        running: Arc<Config>,
        clients: Clients,
        limits: SharedClientLimits,
    ) -> Self {
        Self {
            lock: std::sync::Mutex::new(()),
            path,
            running,
            clients,
            limits,
        }
    }

    /// Reads, validates and applies the file.
    pub fn reload(&self) -> Result<ReloadReport, ConfigError> {
        let path = self.path.as_ref().ok_or_else(|| {
            ConfigError::new("config", "this gateway was not started from a config file")
        })?;
        let _one_at_a_time = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = Config::load(path)?;
        let report = ReloadReport {
            clients: fresh.clients.len(),
            restart_required: restart_required(&self.running, &fresh),
        };
        // Limits first: a new client is never let through unlimited.
        self.limits
            .store(Arc::new(self.limits.load().reloaded(&fresh.clients)));
        self.clients
            .store(Arc::new(ClientRegistry::new(fresh.clients.iter().cloned())));
        tracing::info!(
            clients = report.clients,
            restart_required = ?report.restart_required,
            "config reloaded: clients swapped"
        );
        Ok(report)
    }

    /// Reloads and logs the outcome; for the SIGHUP handler.
    pub fn reload_logged(&self) {
        if let Err(error) = self.reload() {
            tracing::error!(%error, "config reload refused; the running clients stay");
        }
    }
}

/// Keys whose change a live reload cannot apply.
fn restart_required(running: &Config, fresh: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let (a, b) = (&running.server, &fresh.server);
    if a.listen != b.listen {
        keys.push("server.listen");
    }
    let tls = |c: &Config| {
        c.server
            .tls
            .as_ref()
            .map(|t| (t.cert_file.clone(), t.key_file.clone()))
    };
    if tls(running) != tls(fresh) {
        keys.push("server.tls_cert_file");
    }
    if a.max_body_bytes != b.max_body_bytes {
        keys.push("server.max_body_bytes");
    }
    if a.admin_key_sha256 != b.admin_key_sha256 {
        keys.push("server.admin_key_sha256");
    }
    let (u, v) = (&running.upstream, &fresh.upstream);
    if u.base_url != v.base_url || u.timeout != v.timeout || u.ca_file != v.ca_file {
        keys.push("upstream");
    }
    if u.api_key.authorization() != v.api_key.authorization() {
        keys.push("upstream.api_key_env");
    }
    let (c, d) = (&running.cache, &fresh.cache);
    if c.max_bytes != d.max_bytes || c.ttl != d.ttl || c.terminal_statuses != d.terminal_statuses {
        keys.push("cache");
    }
    if running.coalesce.list_ttl != fresh.coalesce.list_ttl {
        keys.push("coalesce");
    }
    if a.shutdown_grace != b.shutdown_grace {
        keys.push("server.shutdown_grace_ms");
    }
    if a.idle_timeout != b.idle_timeout {
        keys.push("server.idle_timeout_ms");
    }
    if a.workers != b.workers {
        keys.push("server.workers");
    }
    if a.work_stealing != b.work_stealing {
        keys.push("server.work_stealing");
    }
    if a.auth_failures_per_minute != b.auth_failures_per_minute {
        keys.push("server.auth_failures_per_minute");
    }
    if u.max_requests_per_second != v.max_requests_per_second
        || u.queue_timeout != v.queue_timeout
        || u.max_in_flight != v.max_in_flight
    {
        keys.push("upstream (quota guard)");
    }
    if running.log.format != fresh.log.format {
        keys.push("log.format");
    }
    let redis = |c: &Config| {
        c.redis.as_ref().map(|r| {
            (
                r.url.clone(),
                r.key_prefix.clone(),
                r.timeout,
                r.lease,
                r.rate_limit_fail_mode,
            )
        })
    };
    if redis(running) != redis(fresh) {
        keys.push("redis");
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn config(server: &str) -> Config {
        let toml = format!(
            "[server]\n{server}\n[[clients]]\nname = \"a\"\nkey_sha256 = \"{DIGEST}\"\nnamespace = \"ns_a\"\n"
        );
        Config::from_toml(&toml, |name| {
            (name == "MIXPEEK_API_KEY").then(|| "sk_real".to_string())
        })
        .unwrap()
    }

    #[test]
    fn the_serving_threads_model_needs_a_restart() {
        let running = config("workers = 2");
        assert!(restart_required(&running, &config("workers = 2")).is_empty());
        assert_eq!(
            restart_required(&running, &config("workers = 2\nwork_stealing = true")),
            ["server.work_stealing"]
        );
        assert_eq!(
            restart_required(&running, &config("workers = 3")),
            ["server.workers"]
        );
    }
}
