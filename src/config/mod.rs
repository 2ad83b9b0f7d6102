//! The configuration: read once at startup (and on reload), validated
//! whole, then used typed — never re-parsed per request.

pub mod tls;
pub mod validate;

pub use validate::*;
