//! mixpeek-gateway: an authenticating, caching reverse proxy that internal
//! teams put in front of the Mixpeek API.
//!
//! A request reads top to bottom through these modules:
//! [`server`] accepts it (on the worker [`balance`] deals it to), [`stack`]
//! is the tower middleware chain, whose checks ([`check`]) borrow it:
//! [`guard`] rejects malformed requests, [`auth`] identifies the client,
//! [`limits`] applies rate limits, [`namespace`] decides the effective
//! namespace, and [`upstream`] forwards it. [`endpoints`] answers the reserved `/_gateway/` routes and [`error`]
//! turns every failure into Mixpeek's error body. [`sim`] is a simulated
//! Mixpeek API used by `demo`, the tests and the benchmarks.
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
