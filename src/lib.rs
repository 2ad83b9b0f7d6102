//! mixpeek-gateway: an authenticating, caching reverse proxy that internal
//! teams put in front of the Mixpeek API.
//!
//! # The path of a request
//!
//! The folders, top to bottom, in the order of [`stack`]'s chain. The
//! request checks in [`layers`] straddle two folders (observe, body limit
//! and guard come before [`admin`] and [`limits`] act, authentication and
//! namespace after), and it is listed below both because they import from
//! it (see *The rule*):
//!
//! 1. [`server`] accepts the connection, deals it to a worker thread
//!    ([`server::balance`]), keeps track of it ([`server::connections`])
//!    and serves it with the one stack;
//! 2. [`stack`] is that stack: one builder chain, a line of "why" above
//!    each layer;
//! 3. [`admin`] answers everything under `/_gateway/` — health and ready,
//!    metrics, the status page, reload, the admin cache API — right after
//!    the guard, before any key is looked at;
//! 4. [`limits`]: the failed-authentication guard (before authentication),
//!    each client's rate limit (after it) and the upstream quota guard
//!    (below the cache);
//! 5. [`layers`] holds the request checks, in chain order:
//!    [`layers::observe`] (request context, `X-Request-Id`, access log and
//!    metrics), [`layers::body_limit`], [`layers::guard`], then — after
//!    the `/_gateway/` routes and the failed-authentication guard —
//!    [`layers::auth`] (who is calling) and, after the client's rate
//!    limit, [`layers::namespace`] (where the namespace is decided);
//! 6. [`cache`] serves terminal execution details from memory (and the
//!    Redis tier) and coalesces identical calls; it owns `X-Cache`;
//! 7. [`upstream`] is the one place that builds and sends upstream
//!    requests;
//! 8. [`redis`] is every call to Redis: the connection and its circuit
//!    breaker, the shared tier, flight leases, invalidation epochs and
//!    shared rate limits.
//!
//! At the bottom, depended on by the layers and depending on none of them:
//! [`context`] (what the layers learn about a request), [`telemetry`]
//! (logging and the metrics registry), [`config`] (raw file, validation,
//! typed config, TLS files), [`error`] (the gateway's failures in
//! Mixpeek's error shape), [`body`], [`clock`] and [`striped`]. [`cli`]
//! and [`demo`] are the binary's commands; [`sim`] is a simulated Mixpeek
//! API for `demo`, the tests and the benchmarks.
//!
//! # The rule
//!
//! A module never imports one that sits above it in the list above (and
//! the bottom modules import none of the folders). Where a folder's parts
//! act at several points of the chain, the imports decide its place:
//! [`admin`] reads the client registry and the bearer-token parser of
//! [`layers::auth`], and [`limits`] uses [`layers::check`]'s adapter, never
//! the other way round, so both sit above [`layers`]. `tests/layout.rs`
//! holds the same order, reads the sources, and fails on an import
//! against it, on any import cycle (between folders or between the files
//! of one) and on a `crate::` path that names no module file, so the map
//! stays true as code is added.
//!
//! # Why `layers/` is a folder
//!
//! The checks a request passes before the cache are small, one concern
//! each, and only make sense in their order; a folder keeps them together
//! and in chain order in its docs, while the concerns that grew their own
//! parts — limits, cache, admin, redis — keep folders of their own at the
//! top, where a newcomer looks for them by name. The two that sit between
//! layers in the chain (the `/_gateway/` routes and the limits) are named
//! in [`layers`]' docs at their place.
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod context;
pub mod demo;
pub mod error;
pub mod layers;
pub mod limits;
pub mod redis;
pub mod server;
pub mod sim;
pub mod stack;
pub mod striped;
pub mod telemetry;
pub mod upstream;
