//! The failed-authentication guard: a peer IP that caused more than
//! `server.auth_failures_per_minute` 401s within a minute is answered 429
//! for the rest of that minute, before any key is looked at.
//!
//! Each IP's minute starts with its first failure (a fixed window per IP:
//! "N failures, then wait until a minute after the first"). IPv6 peers are
//! grouped by /64, the block one host usually owns, so that a single host
//! cannot walk through addresses; IPv4-mapped IPv6 counts as the IPv4.
//!
//! Memory is bounded under a flood of distinct IPs: the windows live in two
//! generations of at most `capacity / 2` entries each. The current
//! generation becomes the previous one every minute (or earlier, when it is
//! full) and the previous one is dropped, so an entry lives at least one
//! window unless more than `capacity / 2` distinct IPs failed since — then
//! the oldest are forgotten early, which only ever lets an IP through, never
//! blocks one wrongly. Every operation is O(1).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::Request;
use tokio::time::Instant;

use super::client::ceil_secs;
use super::metrics::{LimitMetrics, Reason};
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::layers::check::Check;

/// The window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Default bound on the number of IPs remembered.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// The key an IP is counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// An IPv4 address.
    V4(u32),
    /// The /64 prefix of an IPv6 address.
    V6(u64),
}

impl From<IpAddr> for PeerKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => PeerKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey::V4(u32::from(v4)),
                None => PeerKey::V6(prefix64(v6)),
            },
        }
    }
}

fn prefix64(ip: Ipv6Addr) -> u64 {
    (u128::from(ip) >> 64) as u64
}

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    failures: u32,
}

#[derive(Debug)]
struct Generations {
    current: HashMap<PeerKey, Window>,
    previous: HashMap<PeerKey, Window>,
    rotated: Instant,
}

/// Failed authentications per peer, bounded.
#[derive(Debug)]
pub struct AuthFailures {
    limit: u32,
    half_capacity: usize,
    generations: Mutex<Generations>,
    /// Entries in both generations, so that the common case — nobody
    /// failed lately — takes no lock.
    tracked: AtomicUsize,
    early_rotations: AtomicU64,
    metrics: Arc<LimitMetrics>,
}

impl AuthFailures {
    /// At most `limit` failures per peer per minute, remembering at most
    /// `capacity` peers.
    pub fn new(limit: NonZeroU32, capacity: usize, metrics: Arc<LimitMetrics>) -> Self {
        Self {
            limit: limit.get(),
            half_capacity: (capacity / 2).max(1),
            generations: Mutex::new(Generations {
                current: HashMap::new(),
                previous: HashMap::new(),
                rotated: Instant::now(),
            }),
            tracked: AtomicUsize::new(0),
            early_rotations: AtomicU64::new(0),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn update_tracked(&self, generations: &Generations) {
        self.tracked.store(
            generations.current.len() + generations.previous.len(),
            Ordering::Relaxed,
        );
    }

    /// How long `peer` stays blocked, if it is.
    pub fn blocked_for(&self, peer: PeerKey) -> Option<Duration> {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = Instant::now();
        let mut generations = self.lock();
        generations.rotate_if_due(now);
        self.update_tracked(&generations);
        let window = generations
            .current
            .get(&peer)
            .or_else(|| generations.previous.get(&peer))?;
        let ends = window.started + WINDOW;
        (window.failures >= self.limit && ends > now).then(|| ends - now)
    }

    /// Counts one failed authentication of `peer`.
    pub fn record_failure(&self, peer: PeerKey) {
        let now = Instant::now();
        let mut generations = self.lock();
        generations.rotate_if_due(now);
        let existing = match generations.current.get_mut(&peer) {
            Some(window) => Some(*window),
            None => generations.previous.remove(&peer),
        };
        let mut window = match existing {
            Some(window) if window.started + WINDOW > now => window,
            _ => Window {
                started: now,
                failures: 0,
            },
        };
        window.failures = window.failures.saturating_add(1);
        if !generations.current.contains_key(&peer)
            && generations.current.len() >= self.half_capacity
        {
            generations.rotate(now);
            self.early_rotations.fetch_add(1, Ordering::Relaxed);
        }
        generations.current.insert(peer, window);
        self.update_tracked(&generations);
    }

    /// Peers remembered right now.
    pub fn len(&self) -> usize {
        let generations = self.lock();
        generations.current.len() + generations.previous.len()
    }

    /// True when no peer is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most peers ever remembered at once.
    pub fn capacity(&self) -> usize {
        self.half_capacity * 2
    }

    /// Times a flood of distinct peers made the guard forget early.
    pub fn early_rotations(&self) -> u64 {
        self.early_rotations.load(Ordering::Relaxed)
    }
}

impl Generations {
    fn rotate_if_due(&mut self, now: Instant) {
        let since = now.saturating_duration_since(self.rotated);
        if since >= WINDOW * 2 {
            self.current = HashMap::new();
            self.previous = HashMap::new();
            self.rotated = now;
        } else if since >= WINDOW {
            self.rotate(now);
        }
    }

    fn rotate(&mut self, now: Instant) {
        // Dropping the old map (not clearing it) gives its memory back.
        self.previous = std::mem::take(&mut self.current);
        self.rotated = now;
    }
}

/// Guards the authentication [`Check`] `C`: a peer that failed it too often
/// is refused with 429 before `C` looks at its key, and each refusal of `C`
/// (a 401) counts against the peer. Requests without a peer address in
/// their [`RequestContext`] (in-process callers) are not guarded.
///
/// A check of its own rather than a layer above the authentication: the
/// two always run together, and one check costs a hit no extra future, no
/// response inspection and no shared reference count.
#[derive(Clone, Debug)]
pub struct AuthFailureGuard<C> {
    failures: Arc<AuthFailures>,
    inner: C,
}

impl<C> AuthFailureGuard<C> {
    /// Guards `inner` with `failures`.
    pub fn new(failures: Arc<AuthFailures>, inner: C) -> Self {
        Self { failures, inner }
    }
}

impl<C: Check> Check for AuthFailureGuard<C> {
    fn check<B>(&self, request: &mut Request<B>) -> Result<(), GatewayError> {
        let peer = RequestContext::of(request.extensions()).and_then(RequestContext::peer);
        let Some(peer) = peer else {
            return self.inner.check(request);
        };
        let key = PeerKey::from(peer.ip());
        if let Some(remaining) = self.failures.blocked_for(key) {
            self.failures.metrics.count(None, Reason::AuthFailures);
            return Err(GatewayError::RateLimited {
                message: "too many failed authentication attempts from this address".into(),
                retry_after_secs: ceil_secs(remaining).max(1),
            });
        }
        let result = self.inner.check(request);
        if let Err(GatewayError::Unauthorized(_)) = result {
            self.failures.record_failure(key);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    fn guard(limit: u32, capacity: usize) -> Arc<AuthFailures> {
        Arc::new(AuthFailures::new(
            NonZeroU32::new(limit).unwrap(),
            capacity,
            Arc::new(LimitMetrics::default()),
        ))
    }

    fn v4(n: u32) -> PeerKey {
        PeerKey::from(IpAddr::V4(Ipv4Addr::from(n)))
    }

    #[tokio::test(start_paused = true)]
    async fn trips_after_the_limit_and_clears_after_the_window() {
        let failures = guard(3, 100);
        let peer = v4(1);
        for _ in 0..3 {
            assert_eq!(failures.blocked_for(peer), None);
            failures.record_failure(peer);
        }
        let blocked = failures.blocked_for(peer).unwrap();
        assert!(blocked <= WINDOW && blocked > Duration::from_secs(59));
        // Another peer is unaffected.
        assert_eq!(failures.blocked_for(v4(2)), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(failures.blocked_for(peer).unwrap() <= Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(failures.blocked_for(peer), None);
        // A new window starts from zero.
        failures.record_failure(peer);
        assert_eq!(failures.blocked_for(peer), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_survives_a_rotation() {
        let failures = guard(2, 100);
        tokio::time::advance(Duration::from_secs(50)).await;
        failures.record_failure(v4(9));
        failures.record_failure(v4(9));
        // The generation rotates at 60 s; the window (50 s..110 s) stays.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(failures.blocked_for(v4(9)).is_some());
        tokio::time::advance(Duration::from_secs(41)).await;
        assert_eq!(failures.blocked_for(v4(9)), None);
    }

    #[test]
    fn memory_stays_bounded_under_100_000_distinct_peers() {
        let failures = guard(30, DEFAULT_CAPACITY);
        for n in 0..100_000u32 {
            failures.record_failure(v4(n));
            assert!(failures.len() <= failures.capacity());
        }
        assert!(failures.len() <= DEFAULT_CAPACITY);
        assert!(failures.early_rotations() >= 1);
        // The latest peers are still counted.
        for _ in 0..29 {
            failures.record_failure(v4(99_999));
        }
        assert!(failures.blocked_for(v4(99_999)).is_some());
    }

    #[test]
    fn ipv6_counts_by_64_prefix_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(PeerKey::from(a), PeerKey::from(b));
        assert_ne!(PeerKey::from(a), PeerKey::from(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let plain: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(PeerKey::from(mapped), PeerKey::from(plain));
    }

    /// An authentication check that refuses everyone, counting its calls.
    #[derive(Default)]
    struct RefuseAll(AtomicU64);

    impl Check for RefuseAll {
        fn check<B>(&self, _: &mut Request<B>) -> Result<(), GatewayError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Err(GatewayError::Unauthorized("invalid gateway key"))
        }
    }

    #[test]
    fn counts_401s_and_then_refuses_without_checking_the_key() {
        let failures = guard(2, 100);
        let guarded = AuthFailureGuard::new(failures.clone(), RefuseAll::default());
        let request = || {
            let mut request = Request::new(());
            request
                .extensions_mut()
                .insert(RequestContext::with_peer(SocketAddr::from((
                    [192, 0, 2, 7],
                    5000,
                ))));
            request
        };
        for _ in 0..2 {
            assert!(matches!(
                guarded.check(&mut request()),
                Err(GatewayError::Unauthorized(_))
            ));
        }
        let Err(GatewayError::RateLimited {
            retry_after_secs, ..
        }) = guarded.check(&mut request())
        else {
            panic!("expected 429")
        };
        assert!((1..=60).contains(&retry_after_secs));
        assert_eq!(guarded.inner.0.load(Ordering::Relaxed), 2);
        // Without a peer address (in-process callers) nothing is guarded.
        assert!(guarded.check(&mut Request::new(())).is_err());
        assert_eq!(guarded.inner.0.load(Ordering::Relaxed), 3);
    }
}
