//! Everything under `/_gateway/`: answered by the gateway itself, never
//! forwarded.
//!
//! - [`endpoints`]: the layer that owns the prefix — `health`, `ready`, the
//!   admin-key check, the routing to the files below, and a 404 for
//!   anything else under it, however it is spelled;
//! - [`cache`]: `DELETE /_gateway/cache[/{namespace}/{path...}]`, the admin
//!   cache API;
//! - [`metrics`]: `GET /_gateway/metrics`, the Prometheus text;
//! - [`status`]: `GET /_gateway/status`, the operator's HTML page;
//! - [`reload`]: `POST /_gateway/reload` (and SIGHUP): the clients swapped
//!   in from the config file.
pub mod cache;
pub mod endpoints;
pub mod metrics;
pub mod reload;
pub mod status;
