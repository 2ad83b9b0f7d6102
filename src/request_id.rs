//! Request ids: kept from the client when sane, generated otherwise.
//!
//! tower-http's `MakeRequestUuid` asks the OS for randomness on every request
//! (a `getrandom` syscall), which shows up in profiles of the cache-hit path.
//! [`MakeRequestIds`] draws one random seed at startup and mixes it with a
//! counter: ids are unique within the process, unpredictable across
//! processes, and cost no syscall. The observe layer assigns the id and
//! returns it on every response (see [`crate::observe`]).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

/// Generates request ids: 32 hex digits, a per-process random prefix and a
/// sequence number.
#[derive(Clone, Debug)]
pub struct MakeRequestIds {
    /// The random seed, already in hex.
    prefix: [u8; 16],
    counter: Arc<AtomicU64>,
}

impl MakeRequestIds {
    /// A generator with a fresh random seed.
    pub fn new() -> Self {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let mut prefix = [b'0'; 16];
        // 8 bytes are exactly 16 hex digits.
        let _ = hex::encode_to_slice(seed.to_be_bytes(), &mut prefix);
        Self {
            prefix,
            counter: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Default for MakeRequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl MakeRequestIds {
    /// A fresh id.
    pub fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut text = [b'0'; 32];
        text[..16].copy_from_slice(&self.prefix);
        let _ = hex::encode_to_slice(n.to_be_bytes(), &mut text[16..]);
        HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }

    /// The request's id: the client's `X-Request-Id` when it is sane
    /// ([`is_sane`]) and stays on the request; otherwise a fresh one, and
    /// any insane header is removed. A fresh id is not written into the
    /// request here: only a request that goes upstream needs it there
    /// ([`set_if_absent`]), a cache hit does not.
    pub fn assign(&self, headers: &mut HeaderMap) -> HeaderValue {
        let mut values = headers.get_all(&X_REQUEST_ID_NAME).iter();
        match (values.next(), values.next()) {
            (Some(value), None) if is_sane(value.as_bytes()) => return value.clone(),
            (None, _) => {}
            _ => {
                headers.remove(&X_REQUEST_ID_NAME);
            }
        }
        self.next()
    }
}

/// Sets `id` as the `X-Request-Id` of `headers` unless they have one.
pub fn set_if_absent(headers: &mut HeaderMap, id: &HeaderValue) {
    if !headers.contains_key(&X_REQUEST_ID_NAME) {
        headers.insert(X_REQUEST_ID_NAME, id.clone());
    }
}

/// Whether a client's `X-Request-Id` is kept: a sane token (1 to 128 of
/// `A-Z a-z 0-9 - _ . :`), since the value ends up in logs and upstream
/// requests. Anything else (or more than one) is replaced.
fn is_sane(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The `X-Request-Id` header.
pub const X_REQUEST_ID: &str = "x-request-id";

/// The `X-Request-Id` header name, parsed once.
pub const X_REQUEST_ID_NAME: HeaderName = HeaderName::from_static(X_REQUEST_ID);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insane_ids_are_not_kept() {
        assert!(is_sane(b"abc-123_x.y:z"));
        assert!(!is_sane(b"has space"));
        assert!(!is_sane(b"quote\"inject"));
        assert!(!is_sane("x".repeat(129).as_bytes()));
        assert!(!is_sane(b""));
    }

    #[test]
    fn ids_are_unique_hex() {
        let make = MakeRequestIds::new();
        let a = make.next();
        let b = make.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn assign_keeps_a_sane_id_and_replaces_others() {
        let make = MakeRequestIds::new();
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("trace-1"));
        assert_eq!(make.assign(&mut headers), "trace-1");
        assert_eq!(headers[X_REQUEST_ID], "trace-1");
        for bad in [&["bad id"][..], &["a", "b"], &[]] {
            let mut headers = HeaderMap::new();
            for value in bad {
                headers.append(X_REQUEST_ID, HeaderValue::from_static(value));
            }
            let id = make.assign(&mut headers);
            assert_eq!(id.len(), 32);
            // Nothing of the client's is left; the fresh id goes on when
            // the request goes upstream.
            assert!(!headers.contains_key(X_REQUEST_ID));
            set_if_absent(&mut headers, &id);
            assert_eq!(
                headers.get_all(X_REQUEST_ID).iter().collect::<Vec<_>>(),
                [&id]
            );
        }
    }
}
