//! Cross-replica single flight: a short lease per key (`SET NX PX`, `l:`
//! keys), renewed while its holder's upstream call runs, whose holder
//! publishes the answer under a key named by its lease token (`f:` keys,
//! 10 s) for the other replicas' waiters — only when one has registered
//! (`w:` keys, for a lease's lifetime). A waiter that registers after the
//! holder has published and let go finds the lease gone and takes it, as a
//! request arriving just after the flight would.

use std::sync::atomic::Ordering;
use std::sync::LazyLock;
use std::time::Duration;

use super::tier::{decode, encode};
use super::{Shared, SharedEntry, SharedKey};

/// How long a published flight result stays for late waiters.
const RESULT_TTL: Duration = Duration::from_secs(10);
/// Waiters on another replica's flight look for its result this often.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// Deletes the lease if the token still holds it.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    )
});

/// Extends the lease if the token still holds it.
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
    )
});

/// Publishes the answer (`KEYS[2]`, for `ARGV[2]` ms) only if a waiter has
/// registered (`KEYS[1]`), and retires the registration.
static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]); redis.call('DEL', KEYS[1]); return 1 else return 0 end",
    )
});

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

impl Shared {
    fn token(&self) -> String {
        let n = self.token_counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:016x}", self.token_seed)
    }

    /// The Redis key of `key`'s flight lease (operators and tests can
    /// inspect or clear it).
    pub fn lease_key(&self, key: &impl SharedKey) -> String {
        format!("{}l:{}", self.prefix, key.digest())
    }

    /// Tries to take the flight lease for `key`.
    pub async fn try_lease(&self, key: &impl SharedKey) -> Lease {
        let Some(mut conn) = self.connection() else {
            return Lease::Unavailable;
        };
        let lease_key = format!("{}l:{}", self.prefix, key.digest());
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

    /// Publishes a flight's answer for the other replicas' waiters, if any
    /// registered: an answer nobody waits for is never written (a burst of
    /// distinct uncacheable calls would otherwise fill Redis with them).
    pub async fn publish(&self, key: &impl SharedKey, token: &str, entry: &SharedEntry) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let hash = key.digest();
        let _: Option<i64> = self
            .call(
                PUBLISH
                    .key(format!("{}w:{hash}:{token}", self.prefix))
                    .key(format!("{}f:{hash}:{token}", self.prefix))
                    .arg(encode((0, 0), entry).as_ref())
                    .arg(RESULT_TTL.as_millis() as u64)
                    .invoke_async(&mut conn),
            )
            .await;
    }

    /// Renews the lease every third of its lifetime while the holder's
    /// upstream call runs; never returns while the lease is ours (the
    /// caller races it against the call).
    pub async fn keep_lease(&self, key: &impl SharedKey, token: &str) {
        let lease_key = format!("{}l:{}", self.prefix, key.digest());
        loop {
            tokio::time::sleep(self.lease / 3).await;
            let Some(mut conn) = self.connection() else {
                continue;
            };
            let renewed: Option<i64> = self
                .call(
                    RENEW
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
    pub async fn release(&self, key: &impl SharedKey, token: &str) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let lease_key = format!("{}l:{}", self.prefix, key.digest());
        let _: Option<i64> = self
            .call(RELEASE.key(&lease_key).arg(token).invoke_async(&mut conn))
            .await;
    }

    /// Waits for the answer of the flight holding `token`, until `deadline`.
    pub async fn wait(
        &self,
        key: &impl SharedKey,
        token: &str,
        deadline: tokio::time::Instant,
    ) -> Waited {
        let hash = key.digest();
        let result_key = format!("{}f:{hash}:{token}", self.prefix);
        let lease_key = format!("{}l:{hash}", self.prefix);
        // Registered first, for as long as a lease lives, and renewed as
        // the holder renews its lease: the holder publishes only when
        // somebody waits, however long its call takes.
        let waiter_key = format!("{}w:{hash}:{token}", self.prefix);
        let mut registered_at: Option<tokio::time::Instant> = None;
        loop {
            let Some(mut conn) = self.connection() else {
                return Waited::Unavailable;
            };
            if registered_at.is_none_or(|at| at.elapsed() >= self.lease / 3) {
                let registered: Option<()> = self
                    .call(
                        redis::cmd("SET")
                            .arg(&waiter_key)
                            .arg(1)
                            .arg("PX")
                            .arg(self.lease.as_millis() as u64)
                            .query_async(&mut conn),
                    )
                    .await;
                if registered.is_none() {
                    return Waited::Unavailable;
                }
                registered_at = Some(tokio::time::Instant::now());
            }
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
