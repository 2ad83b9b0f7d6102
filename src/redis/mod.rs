//! Scale-out on Redis: what several replicas share.

pub mod connection;

pub use connection::*;
