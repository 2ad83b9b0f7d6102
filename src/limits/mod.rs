//! Rate limits and the upstream quota guard: no team can starve the others,
//! and the gateway never spends more of the organisation's quota than it is
//! told to.
//!
//! - [`client`]: each client's `rate_limit` (GCRA), on every authenticated
//!   request, with the rate-limit response headers;
//! - [`auth_failures`]: 429 for a peer IP after too many 401s, in bounded
//!   memory;
//! - [`upstream`]: the gateway-wide limit on calls that actually go
//!   upstream (rate, in-flight, bounded wait) and the pause after an
//!   upstream 429;
//! - [`metrics`]: what they refused and why.
//!
//! ```text
//! auth failures → authentication → client limit → namespace → cache → upstream guard → upstream
//! ```

pub mod auth_failures;
pub mod client;
pub mod metrics;
pub mod state;
pub mod upstream;

pub use auth_failures::{AuthFailureGuard, AuthFailures};
pub use client::{ClientLimitLayer, ClientLimits, SharedClientLimits};
pub use metrics::{LimitMetrics, Reason};
pub use state::Limits;
pub use upstream::{UpstreamGuard, UpstreamGuardLayer};
