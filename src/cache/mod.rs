//! The execution-detail cache and list-query coalescing: why the gateway
//! exists. Each terminal execution is fetched from upstream once; each burst
//! of identical queries costs one upstream call.
//!
//! Split by the question each part answers, as pingora-cache does:
//! [`route`] (which requests, canonical paths), [`key`] (what identifies an
//! entry or a flight — always including the namespace), [`policy`] (may it
//! be stored or served), [`store`] (moka, bounded by bytes), [`flight`]
//! (single flight), [`metrics`] (counters), and [`service`] (the tower layer
//! tying them together).

pub mod flight;
pub mod key;
pub mod metrics;
pub mod policy;
pub mod route;
pub mod service;
pub mod status;
pub mod store;

pub use key::CacheKey;
pub use metrics::CacheMetrics;
pub use service::{CacheLayer, CacheService, CacheState, SHARE_LIMIT};
pub use store::{Entry, Store};
