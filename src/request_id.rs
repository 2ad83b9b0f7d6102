//! Request ids: kept from the client when sane, generated otherwise.
//!
//! tower-http's `MakeRequestUuid` asks the OS for randomness on every request
//! (a `getrandom` syscall), which shows up in profiles of the cache-hit path.
//! [`MakeRequestIds`] draws one random seed at startup and mixes it with a
//! counter: ids are unique within the process, unpredictable across
//! processes, and cost no syscall.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

/// Generates request ids: 32 hex digits, a per-process random prefix and a
/// sequence number.
#[derive(Clone, Debug)]
pub struct MakeRequestIds {
    seed: u64,
    counter: Arc<AtomicU64>,
}

impl MakeRequestIds {
    /// A generator with a fresh random seed.
    pub fn new() -> Self {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            seed,
            counter: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Default for MakeRequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl MakeRequestId for MakeRequestIds {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut text = [0u8; 32];
        hex::encode_to_slice(self.seed.to_be_bytes(), &mut text[..16]).ok()?;
        hex::encode_to_slice(n.to_be_bytes(), &mut text[16..]).ok()?;
        HeaderValue::from_bytes(&text).ok().map(RequestId::new)
    }
}

/// Drops a client's `X-Request-Id` unless it is a sane token (1 to 128 of
/// `A-Z a-z 0-9 - _ . :`), so that a fresh one is generated instead: the
/// value ends up in logs and upstream requests.
pub fn keep_if_sane<B>(mut request: Request<B>) -> Request<B> {
    let headers = request.headers_mut();
    let mut values = headers.get_all(X_REQUEST_ID).iter();
    let sane = match (values.next(), values.next()) {
        (Some(value), None) => is_sane(value.as_bytes()),
        (None, _) => true,
        (Some(_), Some(_)) => false,
    };
    if !sane {
        headers.remove(X_REQUEST_ID);
    }
    request
}

fn is_sane(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The `X-Request-Id` header.
pub const X_REQUEST_ID: &str = "x-request-id";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insane_ids_are_dropped() {
        let keep = |v: &str| {
            let request = Request::builder().header(X_REQUEST_ID, v).body(()).unwrap();
            keep_if_sane(request).headers().contains_key(X_REQUEST_ID)
        };
        assert!(keep("abc-123_x.y:z"));
        assert!(!keep("has space"));
        assert!(!keep("quote\"inject"));
        assert!(!keep(&"x".repeat(129)));
        let two = Request::builder()
            .header(X_REQUEST_ID, "a")
            .header(X_REQUEST_ID, "b")
            .body(())
            .unwrap();
        assert!(!keep_if_sane(two).headers().contains_key(X_REQUEST_ID));
    }

    #[test]
    fn ids_are_unique_hex() {
        let mut make = MakeRequestIds::new();
        let request = Request::new(());
        let a = make.make_request_id(&request).unwrap();
        let b = make.make_request_id(&request).unwrap();
        assert_ne!(a.header_value(), b.header_value());
        assert_eq!(a.header_value().len(), 32);
        assert!(a
            .header_value()
            .to_str()
            .unwrap()
            .bytes()
            .all(|c| c.is_ascii_hexdigit()));
    }
}
