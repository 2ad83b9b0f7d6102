//! Scale-out on Redis: what several replicas share.
//!
//! - a second cache tier for terminal execution details (`c:` keys), read
//!   after a local miss and written with the same TTL as the local tier;
//! - cross-replica single flight: a short lease per key (`SET NX PX`), whose
//!   holder publishes the answer under a key named by its lease token
//!   (`f:` keys) for the other replicas' waiters;
//! - invalidation epochs per namespace and for everything (`e:` keys), so a
//!   mutation or an admin clear on one replica retires the shared entries
//!   of every replica.
//!
//! Redis is optional and never on the critical path of availability: every
//! call is bounded by `redis.timeout_ms`; a failure opens a one-second
//! circuit during which the replica works alone (local tier, local flights,
//! local limits), logged once per state change and counted, and the next
//! call after it probes Redis again. The connection manager reconnects by
//! itself. All keys are hashed (SHA-256 of namespace, path, query and body
//! key), so they are fixed-length and carry no ids in clear.
//!
//! Split by the question each part answers: [`connection`] (the connection
//! and its circuit breaker), [`tier`] (the shared cache tier), [`lease`]
//! (cross-replica single flight), [`epochs`] (invalidation epochs and
//! pub/sub), [`gcra`] (shared rate limits) and [`key`] (what identifies
//! shared state).

pub mod connection;
pub mod epochs;
pub mod gcra;
pub mod key;
pub mod lease;
pub mod tier;

pub use connection::{Shared, SharedMetrics};
pub use epochs::Invalidation;
pub use gcra::{Bucket, GcraStep};
pub use key::SharedKey;
pub use lease::{Lease, Waited};
pub use tier::SharedEntry;
