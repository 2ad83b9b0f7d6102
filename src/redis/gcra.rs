//! Shared rate limits: one GCRA step per request, evaluated atomically in
//! Redis by a script on Redis's own clock, so every replica spends the same
//! budget.

use std::sync::LazyLock;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::Shared;

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
                GCRA.key(&key)
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

/// The script, hashed once (EVALSHA, then EVAL if Redis does not have it).
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA_SCRIPT));
