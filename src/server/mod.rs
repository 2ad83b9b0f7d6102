//! The server: accepting connections, dealing them to worker threads,
//! keeping track of each connection's life, and shutting down gracefully.
//!
//! - [`serve`](mod@serve): the accept loops, the workers (one runtime each, or one
//!   work-stealing runtime), TLS handshakes, graceful shutdown, and
//!   [`spawn()`] for tests and the demo;
//! - [`balance`]: which worker serves a new connection;
//! - [`connections`]: the open connections, closing idle ones and draining
//!   them all on shutdown;
//! - [`send_timeout`]: closing a connection whose client stops reading;
//! - [`head_errors`]: Mixpeek's error body on hyper's own answers to a
//!   malformed request head (400, 414, 431);
//! - `alloc.rs`: the process's allocator (mimalloc), included by the binary
//!   and the benchmarks, not by the library (which forbids `unsafe`).
//!
//! Each connection is served by the one stack that [`crate::stack::app`]
//! builds; the server knows nothing about what the layers do.

pub mod balance;
pub mod connections;
pub mod head_errors;
pub mod send_timeout;
pub mod serve;

pub use serve::{reload_on_sighup, serve, shutdown_signal, spawn, spawn_from_file, RunningGateway};
