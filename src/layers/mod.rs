//! The request layers, in the order a request meets them in
//! [`crate::stack::app`]:
//!
//! 1. [`observe`]: the request context, the `X-Request-Id` ([`request_id`]),
//!    and the access-log line and metrics when the response body ends;
//! 2. [`body_limit`]: 413 for bodies over `server.max_body_bytes`;
//! 3. [`guard`]: 400 for ambiguous credentials, dot segments and targets
//!    that are not paths;
//! 4. (the `/_gateway/` routes: [`crate::admin`]; the failed-authentication
//!    guard: [`crate::limits::auth_failures`])
//! 5. [`auth`]: who is calling;
//! 6. (the client's rate limit: [`crate::limits::client`])
//! 7. [`namespace`]: which namespace the request acts in;
//!
//! then the cache ([`crate::cache`]); below it [`request_body`] reads
//! request bodies ahead of the upstream call, then the upstream quota guard
//! ([`crate::limits::upstream`]) and the upstream call ([`crate::upstream`]).
//!
//! [`check`] is how a check that only looks at a request (guard,
//! authentication, namespace) becomes a layer. What the layers learn about
//! a request travels in [`crate::context::RequestContext`].

pub mod auth;
pub mod body_limit;
pub mod check;
pub mod guard;
pub mod namespace;
pub mod observe;
pub mod request_body;
pub mod request_id;
