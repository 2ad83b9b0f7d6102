//! Single flight: at most one upstream call per key at a time; everyone else
//! asking for that key meanwhile waits for its outcome.
//!
//! The lessons of cloudflare/pingora #931 and nginx #1189 are built in:
//!
//! - the flight is owned by a [`Leader`] value that the caller moves into
//!   its own task, so a client that disconnects cannot cancel it;
//! - dropping a `Leader` without an outcome (a panic, a bug) closes the
//!   flight: waiters are woken with `None` at once instead of hanging, and
//!   the key is free for the next request;
//! - waiters are woken by the outcome itself (a `watch` channel), never by
//!   polling, and a waiter that goes away costs nothing.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// The in-flight table.
#[derive(Debug)]
pub struct Flights<K, V> {
    table: Mutex<HashMap<K, Flight<V>>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Flight<V> {
    id: u64,
    outcome: watch::Receiver<Option<V>>,
}

/// The result of [`Flights::join`].
#[derive(Debug)]
pub enum Joined<K: Eq + Hash, V> {
    /// No flight was running: the caller must run it and [`Leader::finish`] it.
    Leader(Leader<K, V>),
    /// A flight is running: wait for its outcome.
    Waiter(Waiter<V>),
}

impl<K: Eq + Hash + Clone, V: Clone> Flights<K, V> {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Joins the flight for `key`, or starts one.
    pub fn join(self: &Arc<Self>, key: &K) -> Joined<K, V> {
        // The lock is never held across an await: every use is this block
        // or the removal in `Leader::drop`.
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = table.get(key) {
            return Joined::Waiter(Waiter {
                outcome: flight.outcome.clone(),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = watch::channel(None);
        table.insert(
            key.clone(),
            Flight {
                id,
                outcome: receiver,
            },
        );
        Joined::Leader(Leader {
            flights: self.clone(),
            key: key.clone(),
            id,
            sender,
        })
    }

    /// Number of flights running.
    pub fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no flight runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The owner of a running flight.
#[derive(Debug)]
pub struct Leader<K: Eq + Hash, V> {
    flights: Arc<Flights<K, V>>,
    key: K,
    id: u64,
    sender: watch::Sender<Option<V>>,
}

impl<K: Eq + Hash, V> Leader<K, V> {
    /// A waiter on this flight, for the leader's own request.
    pub fn waiter(&self) -> Waiter<V> {
        Waiter {
            outcome: self.sender.subscribe(),
        }
    }

    /// Publishes the outcome to every waiter and ends the flight.
    pub fn finish(self, outcome: V) {
        self.sender.send_replace(Some(outcome));
        // Drop removes the table entry.
    }
}

impl<K: Eq + Hash, V> Drop for Leader<K, V> {
    fn drop(&mut self) {
        let mut table = self
            .flights
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only our own flight: the key may already belong to a newer one.
        if table.get(&self.key).is_some_and(|f| f.id == self.id) {
            table.remove(&self.key);
        }
    }
}

/// Waits for a flight's outcome.
#[derive(Debug)]
pub struct Waiter<V> {
    outcome: watch::Receiver<Option<V>>,
}

impl<V: Clone> Waiter<V> {
    /// The outcome, or `None` when the flight ended without one.
    pub async fn wait(mut self) -> Option<V> {
        let published = self
            .outcome
            .wait_for(Option::is_some)
            .await
            .map(|value| value.clone());
        // On error the sender is gone: if it published first, that stands.
        published.unwrap_or_else(|_| self.outcome.borrow().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_many_waiters() {
        let flights: Arc<Flights<&str, u32>> = Flights::new();
        let Joined::Leader(leader) = flights.join(&"k") else {
            panic!("first join leads")
        };
        let waiters: Vec<_> = (0..10)
            .map(|_| match flights.join(&"k") {
                Joined::Waiter(w) => tokio::spawn(w.wait()),
                Joined::Leader(_) => panic!("second join must wait"),
            })
            .collect();
        assert!(matches!(flights.join(&"other"), Joined::Leader(_)));
        leader.finish(7);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Some(7));
        }
        assert!(flights.is_empty());
        assert!(matches!(flights.join(&"k"), Joined::Leader(_)));
    }

    #[tokio::test]
    async fn dropped_leader_wakes_waiters_and_frees_the_key() {
        let flights: Arc<Flights<&str, u32>> = Flights::new();
        let Joined::Leader(leader) = flights.join(&"k") else {
            panic!()
        };
        let Joined::Waiter(waiter) = flights.join(&"k") else {
            panic!()
        };
        let waiting = tokio::spawn(waiter.wait());
        // A leader task that dies (panics, is aborted) drops its Leader.
        let task = tokio::spawn(async move {
            let _leader = leader;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        task.abort();
        assert_eq!(waiting.await.unwrap(), None);
        assert!(matches!(flights.join(&"k"), Joined::Leader(_)));
    }

    #[tokio::test]
    async fn dropped_waiter_costs_nothing() {
        let flights: Arc<Flights<&str, u32>> = Flights::new();
        let Joined::Leader(leader) = flights.join(&"k") else {
            panic!()
        };
        let Joined::Waiter(waiter) = flights.join(&"k") else {
            panic!()
        };
        drop(waiter);
        let own = leader.waiter();
        leader.finish(1);
        assert_eq!(own.wait().await, Some(1));
    }
}
