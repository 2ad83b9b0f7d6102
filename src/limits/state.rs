//! Everything the limit layers share, built once at startup and reachable
//! from `AppState` for the metrics endpoint.

use std::sync::Arc;

use super::auth_failures::{AuthFailures, DEFAULT_CAPACITY};
use arc_swap::ArcSwap;

use super::client::{ClientLimits, SharedClientLimits};
use super::metrics::LimitMetrics;
use super::upstream::UpstreamGuard;
use crate::config::Config;

/// The limiters, the guards and their counters.
#[derive(Debug)]
pub struct Limits {
    /// Per-client rate limits, swapped on reload.
    pub clients: SharedClientLimits,
    /// Failed authentications per peer IP.
    pub auth_failures: Arc<AuthFailures>,
    /// The upstream quota guard and its pause.
    pub upstream: Arc<UpstreamGuard>,
    /// Refused requests by client and reason, queue wait, pauses.
    pub metrics: Arc<LimitMetrics>,
}

impl Limits {
    /// Builds every limiter from the config.
    pub fn new(config: &Config) -> Arc<Self> {
        let metrics = Arc::new(LimitMetrics::new(
            config.clients.iter().map(|c| c.name.as_str()),
        ));
        Arc::new(Self {
            clients: Arc::new(ArcSwap::from_pointee(ClientLimits::new(
                &config.clients,
                metrics.clone(),
            ))),
            auth_failures: Arc::new(AuthFailures::new(
                config.server.auth_failures_per_minute,
                DEFAULT_CAPACITY,
                metrics.clone(),
            )),
            upstream: Arc::new(UpstreamGuard::new(&config.upstream, metrics.clone())),
            metrics,
        })
    }
}
