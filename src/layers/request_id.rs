//! Request ids: kept from the client when sane, generated otherwise.
//!
//! tower-http's `MakeRequestUuid` asks the OS for randomness on every request
//! (a `getrandom` syscall), which shows up in profiles of the cache-hit path.
//! [`MakeRequestIds`] draws one random seed per thread and mixes it with
//! that thread's counter: ids are unique (a 64-bit random prefix per
//! thread), unpredictable across threads and processes, and cost no syscall
//! and no atomic shared between cores. The observe layer assigns the id and
//! returns it on every response (see [`crate::layers::observe`]).

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use http::{HeaderMap, HeaderValue};

use crate::context::X_REQUEST_ID_NAME;

/// Generates request ids: 32 hex digits, a per-thread random prefix and
/// that thread's sequence number.
#[derive(Clone, Debug)]
pub struct MakeRequestIds(());

thread_local! {
    /// This thread's random seed, already in hex (8 bytes are exactly 16
    /// hex digits).
    static PREFIX: [u8; 16] = {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let mut prefix = [b'0'; 16];
        let _ = hex::encode_to_slice(seed.to_be_bytes(), &mut prefix);
        prefix
    };
    static SEQUENCE: Cell<u64> = const { Cell::new(0) };
}

impl MakeRequestIds {
    /// A generator.
    pub fn new() -> Self {
        Self(())
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
        let n = SEQUENCE.with(|sequence| {
            let n = sequence.get();
            sequence.set(n.wrapping_add(1));
            n
        });
        let mut text = [b'0'; 32];
        PREFIX.with(|prefix| text[..16].copy_from_slice(prefix));
        let _ = hex::encode_to_slice(n.to_be_bytes(), &mut text[16..]);
        // Owned by the `Bytes` (one allocation) so the clones for the
        // response, the log and the upstream request only count references.
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
            .unwrap_or_else(|_| HeaderValue::from_static("-"))
    }

    /// The request's id: the client's `X-Request-Id` when it is sane
    /// (`is_sane`) and stays on the request; otherwise a fresh one, and
    /// any insane header is removed. A fresh id is not written into the
    /// request here: only a request that goes upstream needs it there
    /// ([`crate::context::set_request_id_if_absent`]), a cache hit does not.
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

/// Whether a client's `X-Request-Id` is kept: a sane token (1 to 128 of
/// `A-Z a-z 0-9 - _ . :`), since the value ends up in logs and upstream
/// requests. Anything else (or more than one) is replaced.
fn is_sane(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::X_REQUEST_ID;

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
    fn threads_have_prefixes_of_their_own() {
        let here = MakeRequestIds::new().next();
        let there = std::thread::spawn(|| MakeRequestIds::new().next())
            .join()
            .unwrap();
        assert_ne!(here.as_bytes()[..16], there.as_bytes()[..16]);
        assert_ne!(here, there);
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
            crate::context::set_request_id_if_absent(&mut headers, &id);
            assert_eq!(
                headers.get_all(X_REQUEST_ID).iter().collect::<Vec<_>>(),
                [&id]
            );
        }
    }
}
