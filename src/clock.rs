//! A coarse clock for the hot path: whole seconds since the process
//! started, read with one atomic load instead of a `clock_gettime` call.
//!
//! A background thread advances it ten times a second (the technique hyper
//! uses for its cached `Date` header), so a reading is at most 100 ms
//! behind — plenty for `Age`, which is whole seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::HeaderValue;

static SECONDS: AtomicU64 = AtomicU64::new(0);
static STARTED: OnceLock<()> = OnceLock::new();

/// Seconds since the first call, at most 100 ms stale.
pub fn now_secs() -> u64 {
    STARTED.get_or_init(|| {
        let start = Instant::now();
        let spawned = std::thread::Builder::new()
            .name("coarse-clock".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(100));
                SECONDS.store(start.elapsed().as_secs(), Ordering::Relaxed);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "coarse clock thread not started; Age will read 0");
        }
    });
    SECONDS.load(Ordering::Relaxed)
}

/// An `Age` header value for `secs`, without allocating for the first hour.
pub fn age_header(secs: u64) -> HeaderValue {
    static AGES: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let ages = AGES.get_or_init(|| (0..3600u64).map(HeaderValue::from).collect());
    match usize::try_from(secs).ok().and_then(|i| ages.get(i)) {
        Some(value) => value.clone(),
        None => HeaderValue::from(secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_decimal_seconds() {
        assert_eq!(age_header(0), "0");
        assert_eq!(age_header(59), "59");
        assert_eq!(age_header(86_400), "86400");
    }

    #[test]
    fn clock_does_not_go_backwards() {
        let a = now_secs();
        let b = now_secs();
        assert!(b >= a);
    }
}
