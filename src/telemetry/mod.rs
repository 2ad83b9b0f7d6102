//! What the gateway reports about itself: the log and the metrics registry.
//!
//! - [`logging`]: `tracing` to standard error (text or JSON), filtered by
//!   `RUST_LOG`;
//! - [`access`]: the access log's lines, formatted into per-thread buffers
//!   that a writer thread writes out;
//! - [`metrics`]: the Prometheus registry every request is counted in.
//!
//! The access-log line and the per-request metrics are written by the
//! observe layer ([`crate::layers::observe`]); `/_gateway/metrics` is
//! served by [`crate::admin`].

pub mod access;
pub mod logging;
pub mod metrics;

pub use logging::init;
