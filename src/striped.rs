//! Counters striped across cache lines, one stripe per worker thread.
//!
//! Every request bumps a dozen counters (in-flight requests, the client's
//! requests and hits, the outcome, the latency histogram). With one atomic
//! per counter, both cores write the same cache lines on every request and
//! each write waits for the line to come back from the other core. Here
//! each thread adds to its own stripe, a cache line of its own, and a scrape
//! sums the stripes: Envoy's per-thread stats and nginx's per-worker
//! counters do the same. Reads are rare (a scrape, a status page); writes
//! are on every request.
//!
//! The server gives its worker threads stripes 0, 1, … ([`set_thread_stripe`]);
//! any other thread takes the next stripe round-robin. Two threads sharing a
//! stripe is only slower, never wrong: every stripe is an atomic.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// One counter cell on a cache line of its own (128 bytes: x86's adjacent
/// line prefetcher pulls lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// Stripes per counter: the cores, rounded up to a power of two, at most
/// 16 (a counter then takes at most 2 KiB; beyond 16 cores, workers share
/// stripes, which is only slower).
fn stripes() -> usize {
    static STRIPES: OnceLock<usize> = OnceLock::new();
    *STRIPES.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, 16)
            .next_power_of_two()
    })
}

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Gives the calling thread stripe `index` (modulo the stripe count); the
/// server calls it once per worker thread, so workers never share one.
pub fn set_thread_stripe(index: usize) {
    STRIPE.with(|stripe| stripe.set(index));
}

/// The calling thread's stripe, out of `len`.
fn stripe(len: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    STRIPE.with(|stripe| {
        let mut index = stripe.get();
        if index == usize::MAX {
            index = NEXT.fetch_add(1, Ordering::Relaxed);
            stripe.set(index);
        }
        index & (len - 1)
    })
}

/// A striped `u64` sum.
#[derive(Debug)]
pub struct StripedU64(Box<[Padded<AtomicU64>]>);

impl Default for StripedU64 {
    fn default() -> Self {
        Self((0..stripes()).map(|_| Padded::default()).collect())
    }
}

impl StripedU64 {
    /// Adds `n` on the calling thread's stripe.
    pub fn add(&self, n: u64) {
        self.0[stripe(self.0.len())]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The sum of every stripe.
    pub fn sum(&self) -> u64 {
        self.0.iter().fold(0, |sum, cell| {
            sum.wrapping_add(cell.0.load(Ordering::Relaxed))
        })
    }
}

impl prometheus_client::metrics::counter::Atomic<u64> for StripedU64 {
    fn inc(&self) -> u64 {
        self.inc_by(1)
    }

    /// Returns 0, not the previous total: that would read every stripe.
    fn inc_by(&self, v: u64) -> u64 {
        self.add(v);
        0
    }

    fn get(&self) -> u64 {
        self.sum()
    }
}

/// The same stripes as a signed gauge (requests in flight: a request may
/// end on another thread than it started on). The adds wrap, so two's
/// complement makes the sum of `u64` stripes the right `i64`. The gauge
/// operations return 0 rather than the previous value (which would read
/// every stripe); `set` is for gauges nothing adds to meanwhile.
impl prometheus_client::metrics::gauge::Atomic<i64> for StripedU64 {
    fn inc(&self) -> i64 {
        self.inc_by(1)
    }

    fn inc_by(&self, v: i64) -> i64 {
        self.add(v as u64);
        0
    }

    fn dec(&self) -> i64 {
        self.dec_by(1)
    }

    fn dec_by(&self, v: i64) -> i64 {
        self.add(v.wrapping_neg() as u64);
        0
    }

    fn set(&self, v: i64) -> i64 {
        for (i, cell) in self.0.iter().enumerate() {
            cell.0
                .store(if i == 0 { v as u64 } else { 0 }, Ordering::Relaxed);
        }
        0
    }

    fn get(&self) -> i64 {
        self.sum() as i64
    }
}

/// Cells per cache line.
const PER_LINE: usize = 128 / std::mem::size_of::<AtomicU64>();

/// Striped cells for a histogram: `width` counts per stripe, each stripe on
/// whole cache lines of its own, summed per index on read.
#[derive(Debug)]
pub struct StripedCells {
    width: usize,
    /// Cache lines per stripe.
    stride: usize,
    /// Number of stripes (a power of two).
    stripes: usize,
    lines: Box<[Padded<[AtomicU64; PER_LINE]>]>,
}

impl StripedCells {
    /// `width` cells, all zero.
    pub fn new(width: usize) -> Self {
        let stride = width.div_ceil(PER_LINE).max(1);
        Self {
            width,
            stride,
            stripes: stripes(),
            lines: (0..stride * stripes())
                .map(|_| Padded(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    /// Adds `n` to cell `index` (below the width) on the calling thread's stripe.
    pub fn add(&self, index: usize, n: u64) {
        debug_assert!(index < self.width);
        let line = stripe(self.stripes) * self.stride + index / PER_LINE;
        self.lines[line].0[index % PER_LINE].fetch_add(n, Ordering::Relaxed);
    }

    /// Cell `index` summed over every stripe.
    pub fn sum(&self, index: usize) -> u64 {
        self.lines
            .iter()
            .skip(index / PER_LINE)
            .step_by(self.stride)
            .fold(0, |sum, line| {
                sum.wrapping_add(line.0[index % PER_LINE].load(Ordering::Relaxed))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::gauge::Atomic as Gauge;
    use std::sync::Arc;

    #[test]
    fn sums_see_every_threads_adds() {
        let counter = Arc::new(StripedU64::default());
        let gauge = Arc::new(StripedU64::default());
        let cells = Arc::new(StripedCells::new(21));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (counter, gauge, cells) = (counter.clone(), gauge.clone(), cells.clone());
                std::thread::spawn(move || {
                    set_thread_stripe(t);
                    for i in 0..1000 {
                        counter.add(1);
                        Gauge::<i64>::inc(&*gauge);
                        cells.add(i % 21, 1);
                    }
                    for _ in 0..400 {
                        Gauge::<i64>::dec(&*gauge);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(counter.sum(), 8000);
        assert_eq!(Gauge::<i64>::get(&*gauge), 8 * 600);
        let total: u64 = (0..21).map(|i| cells.sum(i)).sum();
        assert_eq!(total, 8000);
        // 1000 adds over 21 cells: cells 0..=12 get 48, the rest 47, per thread.
        assert_eq!(cells.sum(0), 8 * 48);
        assert_eq!(cells.sum(20), 8 * 47);
    }

    #[test]
    fn a_gauge_may_end_on_another_thread_than_it_started() {
        let gauge = Arc::new(StripedU64::default());
        set_thread_stripe(0);
        Gauge::<i64>::inc(&*gauge);
        let other = gauge.clone();
        std::thread::spawn(move || {
            set_thread_stripe(1);
            Gauge::<i64>::dec(&*other);
        })
        .join()
        .unwrap();
        assert_eq!(Gauge::<i64>::get(&*gauge), 0);
    }

    #[test]
    fn stripes_live_on_cache_lines_of_their_own() {
        assert_eq!(std::mem::align_of::<Padded<AtomicU64>>(), 128);
        let cells = StripedCells::new(21);
        assert_eq!(cells.stride, 2);
        assert_eq!(cells.lines.len(), 2 * stripes());
        assert_eq!(std::mem::size_of_val(&cells.lines[0]), 128);
    }
}
