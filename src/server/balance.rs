//! Spreading connections evenly over the worker threads.
//!
//! Every worker accepts from the same listening socket, and whichever wakes
//! first takes everything waiting: a client that opens its connections in
//! a burst (a pool warming up, a load test) can land all of them on one
//! thread, which then serves on one core while the other idles. Measured
//! here with wrk opening 64 connections: all 64 on one of two workers in
//! half the tries, and 25–35 % fewer requests per second than when they
//! were split. nginx meets this with `accept_mutex`/`EPOLLEXCLUSIVE`,
//! Envoy with its exact connection balancer; this is the latter: the
//! worker that accepts a connection hands it to the worker serving the
//! fewest (itself on a tie), through a channel, before reading a byte of
//! it. Each connection then stays on its worker for its whole life.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The top bit, set in a retired worker's load: far above any real count,
/// so the comparisons in [`WorkerLoads::least_loaded`] pass it over, while
/// the connections it still serves count down in the bits below.
const RETIRED: usize = 1 << (usize::BITS - 1);

/// The number of connections each worker is serving.
#[derive(Debug)]
pub struct WorkerLoads {
    loads: Box<[AtomicUsize]>,
}

impl WorkerLoads {
    /// Loads for `workers` workers (at least one), all zero.
    pub fn new(workers: usize) -> Arc<Self> {
        Arc::new(Self {
            loads: (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect(),
        })
    }

    /// Takes `worker` out of the deal: it has stopped (draining, or its
    /// runtime failed), so no connection is handed to it any more.
    pub fn retire(&self, worker: usize) {
        if let Some(load) = self.loads.get(worker) {
            load.fetch_or(RETIRED, Ordering::Relaxed);
        }
    }

    /// The worker that should serve the next connection accepted by
    /// `accepting`: the one serving the fewest, `accepting` itself on a tie
    /// (no handoff when it need not). Retired workers are never chosen
    /// unless every worker is.
    pub fn least_loaded(&self, accepting: usize) -> usize {
        let mut best = accepting.min(self.loads.len() - 1);
        let mut fewest = self.loads[best].load(Ordering::Relaxed);
        for (worker, load) in self.loads.iter().enumerate() {
            let load = load.load(Ordering::Relaxed);
            if load < fewest {
                best = worker;
                fewest = load;
            }
        }
        best
    }

    /// Counts a connection on `worker` until the guard is dropped.
    pub fn enter(self: &Arc<Self>, worker: usize) -> Load {
        debug_assert!(worker < self.loads.len(), "worker {worker} out of range");
        let worker = worker.min(self.loads.len() - 1);
        self.loads[worker].fetch_add(1, Ordering::Relaxed);
        Load {
            loads: self.clone(),
            worker,
        }
    }

    /// Each worker's connections now.
    pub fn snapshot(&self) -> Vec<usize> {
        self.loads
            .iter()
            .map(|load| load.load(Ordering::Relaxed) & !RETIRED)
            .collect()
    }
}

/// One connection counted on a worker, from the moment it is assigned
/// (so that a burst of accepts sees its own assignments) until it closes.
#[derive(Debug)]
pub struct Load {
    loads: Arc<WorkerLoads>,
    worker: usize,
}

impl Load {
    /// The worker the connection is counted on.
    pub fn worker(&self) -> usize {
        self.worker
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.loads.loads[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection accepted by one worker for another to serve.
#[derive(Debug)]
pub struct Handoff {
    /// The accepted socket, not yet read from.
    pub stream: std::net::TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// Already counted on the receiving worker.
    pub load: Load,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_fewest_and_keeps_ties_local() {
        let loads = WorkerLoads::new(3);
        // All idle: whoever accepted serves.
        assert_eq!(loads.least_loaded(2), 2);
        let a = loads.enter(2);
        assert_eq!(loads.least_loaded(2), 0);
        let b = loads.enter(0);
        assert_eq!(loads.least_loaded(2), 1);
        let c = loads.enter(1);
        assert_eq!(loads.snapshot(), vec![1, 1, 1]);
        assert_eq!(loads.least_loaded(1), 1);
        drop(b);
        assert_eq!(loads.least_loaded(2), 0);
        assert_eq!(loads.snapshot(), vec![0, 1, 1]);
        drop((a, c));
        assert_eq!(loads.snapshot(), vec![0, 0, 0]);
    }

    #[test]
    fn a_burst_of_accepts_on_one_worker_is_spread_evenly() {
        let loads = WorkerLoads::new(4);
        let held: Vec<Load> = (0..64)
            .map(|_| {
                let target = loads.least_loaded(0);
                loads.enter(target)
            })
            .collect();
        assert_eq!(loads.snapshot(), vec![16, 16, 16, 16]);
        assert!(held.iter().all(|load| load.worker() < 4));
    }

    #[test]
    fn at_least_one_worker() {
        let loads = WorkerLoads::new(0);
        assert_eq!(loads.least_loaded(5), 0);
        let load = loads.enter(0);
        assert_eq!(load.worker(), 0);
        assert_eq!(loads.snapshot(), vec![1]);
    }

    #[test]
    fn retired_workers_are_passed_over_and_still_count_down() {
        let loads = WorkerLoads::new(2);
        let held = loads.enter(1);
        loads.retire(0);
        // Worker 0 serves nothing, yet gets nothing: it has stopped.
        assert_eq!(loads.least_loaded(1), 1);
        assert_eq!(loads.least_loaded(0), 1);
        assert_eq!(loads.snapshot(), vec![0, 1]);
        loads.retire(1);
        loads.retire(1);
        assert_eq!(loads.snapshot(), vec![0, 1]);
        drop(held);
        assert_eq!(loads.snapshot(), vec![0, 0]);
        // Every worker retired: whoever accepts keeps it.
        assert_eq!(loads.least_loaded(1), 1);
    }
}
