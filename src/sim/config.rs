//! How the simulated API behaves: its API key and its timing knobs.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Settings for one simulated Mixpeek API.
///
/// ```
/// use std::time::Duration;
/// use mixpeek_gateway::sim::SimConfig;
///
/// let mut config = SimConfig::new("sk_test");
/// config.complete_after = Duration::from_millis(300);
/// assert_eq!(config.sse_interval, Duration::from_millis(50));
/// ```
#[derive(Clone)]
pub struct SimConfig {
    /// The "real" Mixpeek key. Every request without
    /// `Authorization: Bearer <api_key>` is answered 401.
    pub api_key: String,
    /// Delay added before every response head.
    pub latency: Duration,
    /// How long an execution takes from the first time it is requested to a
    /// terminal status: "pending" for the first third, "processing" until
    /// then. Zero means terminal at once.
    pub complete_after: Duration,
    /// Pause between the events of a streamed (SSE) execution.
    pub sse_interval: Duration,
    /// If set, a streamed execution acquires (and forgets) one permit before
    /// each event after the first, so a test controls when the rest is sent.
    pub sse_gate: Option<Arc<Semaphore>>,
    /// Makes the simulator answer 429 on demand, like the real API when
    /// the organisation's quota is spent.
    pub throttle: Throttle,
}

/// A switch a test flips to make the simulator answer its next request
/// 429 with `Retry-After`. Clones share the switch.
#[derive(Clone, Debug, Default)]
pub struct Throttle(Arc<AtomicU64>);

impl Throttle {
    /// The next request (one only) is answered 429 with
    /// `Retry-After: <seconds>`.
    pub fn next_with_retry_after(&self, seconds: u64) {
        self.0.store(seconds.max(1), Ordering::Release);
    }

    /// Takes the pending 429, if any: its `Retry-After` seconds.
    pub(crate) fn take(&self) -> Option<u64> {
        match self.0.swap(0, Ordering::AcqRel) {
            0 => None,
            seconds => Some(seconds),
        }
    }
}

impl SimConfig {
    /// A config with the given API key, no latency, executions completed at
    /// once and 50 ms between SSE events.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            latency: Duration::ZERO,
            complete_after: Duration::ZERO,
            sse_interval: Duration::from_millis(50),
            sse_gate: None,
            throttle: Throttle::default(),
        }
    }
}

// Written by hand so the API key never reaches a log line.
impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("api_key", &"<redacted>")
            .field("latency", &self.latency)
            .field("complete_after", &self.complete_after)
            .field("sse_interval", &self.sse_interval)
            .field("sse_gate", &self.sse_gate.is_some())
            .field("throttle", &self.throttle)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let shown = format!("{:?}", SimConfig::new("sk_secret_value"));
        assert!(!shown.contains("sk_secret_value"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
