//! A simulated Mixpeek API, for the `demo` and `sim` subcommands, the
//! end-to-end tests and the benchmarks.
//!
//! It models the routes the gateway treats specially, with bodies shaped
//! like the real API's:
//!
//! - `GET /v1/retrievers/executions/{id}` and
//!   `GET /v1/retrievers/{retriever_id}/executions/{id}`: execution details
//!   (ids starting `exec_` exist, others are 404) that go pending →
//!   processing → completed (or failed, for ids starting `exec_fail`) over
//!   [`SimConfig::complete_after`] from their first request;
//! - `POST /v1/retrievers/executions/list` and
//!   `POST /v1/retrievers/{retriever_id}/executions/list`: 25 executions per
//!   namespace, paginated and filtered, 422 for parameters or bodies the API
//!   rejects;
//! - `POST /v1/retrievers/execute` and
//!   `POST /v1/retrievers/{retriever_id}/execute`: a JSON result, or with
//!   `"stream": true` a Server-Sent Events stream sent event by event.
//!
//! Every other request is echoed back (body, content type, and `X-Echo-*`
//! headers for method, raw path, raw query and namespace). Every request
//! needs `Authorization: Bearer <api_key>`, else 401. A test can make the
//! next request answer 429 with `Retry-After` ([`Throttle`]). The namespace is the
//! `X-Namespace` header, else `?namespace=`, else `default`, and every body
//! differs per namespace.
//!
//! `GET /_sim/stats` (no key needed, not counted) returns the per-route
//! counters as JSON, for benchmark scripts that run the simulator as its own
//! process (`mixpeek-gateway sim`).
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use mixpeek_gateway::sim::{self, SimConfig};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let upstream = sim::spawn(SimConfig::new("sk_upstream"), listener).await?;
//! // ... point the gateway at upstream.base_url() ...
//! assert_eq!(upstream.count("GET /v1/retrievers/executions/{id}"), 0);
//! upstream.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod app;
mod auth;
mod config;
mod echo;
mod execute;
mod executions;
mod list;
mod namespace;
mod respond;
mod route;
mod server;
mod state;
mod stream;

pub use config::{SimConfig, Throttle};
pub use server::{run, spawn, SimHandle};
pub use state::SeenRequest;
