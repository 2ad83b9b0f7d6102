//! Counters of the rate limits and the upstream quota guard, read by the
//! metrics endpoint: refused requests per client and reason, time spent
//! waiting for the upstream guard, and the upstream pause.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why a request was answered 429 by the gateway: a bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Over the client's own `rate_limit`.
    ClientLimit,
    /// The peer IP caused too many failed authentications.
    AuthFailures,
    /// The upstream quota guard (rate or in-flight limit) had no room in time.
    UpstreamGuard,
    /// Upstream answered 429 and upstream calls are paused.
    Upstream429,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 4] = [
        Reason::ClientLimit,
        Reason::AuthFailures,
        Reason::UpstreamGuard,
        Reason::Upstream429,
    ];

    /// The label value (`client_limit`, `auth_failures`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ClientLimit => "client_limit",
            Reason::AuthFailures => "auth_failures",
            Reason::UpstreamGuard => "upstream_guard",
            Reason::Upstream429 => "upstream_429",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

type PerReason = [AtomicU64; Reason::ALL.len()];

/// The counters. Clients are the configured ones, fixed at startup, so the
/// label set is bounded; requests without a known client (auth failures)
/// count under [`LimitMetrics::limited`] with `None`.
#[derive(Debug, Default)]
pub struct LimitMetrics {
    by_client: HashMap<String, PerReason>,
    anonymous: PerReason,
    /// Upstream calls admitted by the upstream guard.
    pub admitted: AtomicU64,
    /// Admitted calls that had to wait for the guard.
    pub queued: AtomicU64,
    /// Total time admitted calls waited for the guard, in microseconds.
    pub queue_wait_micros: AtomicU64,
    /// Times upstream answered 429 and a new pause began.
    pub pauses: AtomicU64,
    /// Upstream 429 answers seen (each extends or starts a pause).
    pub upstream_429s: AtomicU64,
}

impl LimitMetrics {
    /// Counters for these client names.
    pub fn new<'a>(clients: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            by_client: clients
                .into_iter()
                .map(|name| (name.to_string(), PerReason::default()))
                .collect(),
            ..Self::default()
        }
    }

    /// Counts one refused request.
    pub fn count(&self, client: Option<&str>, reason: Reason) {
        let counters = client
            .and_then(|name| self.by_client.get(name))
            .unwrap_or(&self.anonymous);
        counters[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Refused requests of `client` (`None`: without a known client) for
    /// `reason`.
    pub fn limited(&self, client: Option<&str>, reason: Reason) -> u64 {
        let counters = match client {
            Some(name) => match self.by_client.get(name) {
                Some(counters) => counters,
                None => return 0,
            },
            None => &self.anonymous,
        };
        counters[reason.index()].load(Ordering::Relaxed)
    }

    /// Every non-zero (client, reason, count), for the metrics endpoint.
    pub fn snapshot(&self) -> Vec<(Option<&str>, Reason, u64)> {
        let clients = self
            .by_client
            .iter()
            .map(|(name, counters)| (Some(name.as_str()), counters))
            .chain(std::iter::once((None, &self.anonymous)));
        let mut out = Vec::new();
        for (client, counters) in clients {
            for reason in Reason::ALL {
                let n = counters[reason.index()].load(Ordering::Relaxed);
                if n > 0 {
                    out.push((client, reason, n));
                }
            }
        }
        out
    }

    /// Records one admitted upstream call and how long it waited.
    pub fn admitted_after(&self, waited: Duration) {
        self.admitted.fetch_add(1, Ordering::Relaxed);
        if !waited.is_zero() {
            self.queued.fetch_add(1, Ordering::Relaxed);
            let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
            self.queue_wait_micros.fetch_add(micros, Ordering::Relaxed);
        }
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_client_and_reason_with_a_bounded_label_set() {
        let metrics = LimitMetrics::new(["a", "b"]);
        metrics.count(Some("a"), Reason::ClientLimit);
        metrics.count(Some("a"), Reason::ClientLimit);
        metrics.count(Some("b"), Reason::Upstream429);
        metrics.count(None, Reason::AuthFailures);
        // An unknown name never creates a label.
        metrics.count(Some("zz"), Reason::UpstreamGuard);
        assert_eq!(metrics.limited(Some("a"), Reason::ClientLimit), 2);
        assert_eq!(metrics.limited(Some("b"), Reason::Upstream429), 1);
        assert_eq!(metrics.limited(None, Reason::AuthFailures), 1);
        assert_eq!(metrics.limited(None, Reason::UpstreamGuard), 1);
        assert_eq!(metrics.limited(Some("zz"), Reason::UpstreamGuard), 0);
        assert_eq!(metrics.snapshot().len(), 4);
    }

    #[test]
    fn queue_wait_is_summed_for_calls_that_waited() {
        let metrics = LimitMetrics::default();
        metrics.admitted_after(Duration::ZERO);
        metrics.admitted_after(Duration::from_millis(3));
        assert_eq!(LimitMetrics::get(&metrics.admitted), 2);
        assert_eq!(LimitMetrics::get(&metrics.queued), 1);
        assert_eq!(LimitMetrics::get(&metrics.queue_wait_micros), 3000);
    }
}
