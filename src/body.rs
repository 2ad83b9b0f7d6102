//! The body type every response of the gateway carries, and small
//! constructors for it.
//!
//! Upstream bodies are streamed through untouched and the gateway's own
//! answers are in-memory [`Bytes`]; both fit one boxed body so that every
//! layer of the stack shares one response type.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// The error type of the stack and of streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of every service in the stack.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body held in memory; `Bytes` is reference counted, so this never copies.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}
