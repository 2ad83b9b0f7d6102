//! May a response be stored, and may a request be served from the cache?
//!
//! Cacheability is decided by the route and by the execution's own status,
//! on purpose: every upstream request carries `Authorization`, so the RFC
//! 9111 rule "don't store responses to authorised requests" (Varnish's
//! builtin VCL, pingora-cache) would cache nothing. A terminal execution
//! never changes, which is what makes it safe to keep.

use std::borrow::Cow;

use http::{header, HeaderMap, StatusCode};
use serde::Deserialize;

/// Only the field the decision needs; serde skips the rest of the body
/// without building a tree.
#[derive(Deserialize)]
struct StatusField<'a> {
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
}

/// True when `status` is 200 and the body's JSON `status` is one of
/// `terminal` (lower-case), compared case-insensitively.
pub fn is_terminal_detail(status: StatusCode, body: &[u8], terminal: &[String]) -> bool {
    if status != StatusCode::OK {
        return false;
    }
    match serde_json::from_slice::<StatusField<'_>>(body) {
        Ok(StatusField {
            status: Some(value),
        }) => terminal
            .iter()
            .any(|t| t.eq_ignore_ascii_case(value.trim())),
        _ => false,
    }
}

/// True when the request says `Cache-Control: no-cache` (or the HTTP/1.0
/// `Pragma: no-cache`): skip the lookup, go upstream, refresh the entry.
///
/// One pass over the request's few headers, comparing names, instead of two
/// hashed lookups: this runs on every cache hit.
pub fn request_skips_lookup(headers: &HeaderMap) -> bool {
    let says_no_cache = |value: &http::HeaderValue| {
        value.to_str().is_ok_and(|v| {
            v.split(',').any(|directive| {
                let directive = directive.trim();
                directive.eq_ignore_ascii_case("no-cache")
                    || directive
                        .split_once('=')
                        .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("no-cache"))
                    || directive.eq_ignore_ascii_case("max-age=0")
            })
        })
    };
    headers.iter().any(|(name, value)| {
        (name == header::CACHE_CONTROL || name == header::PRAGMA) && says_no_cache(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal() -> Vec<String> {
        ["completed", "failed", "canceled"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn terminal_statuses_case_insensitive() {
        let t = terminal();
        assert!(is_terminal_detail(
            StatusCode::OK,
            br#"{"execution_id":"e","status":"COMPLETED","x":[1,{"status":"pending"}]}"#,
            &t
        ));
        assert!(is_terminal_detail(
            StatusCode::OK,
            br#"{"status":"failed"}"#,
            &t
        ));
        assert!(!is_terminal_detail(
            StatusCode::OK,
            br#"{"status":"processing"}"#,
            &t
        ));
        assert!(!is_terminal_detail(
            StatusCode::OK,
            br#"{"status":"pending"}"#,
            &t
        ));
        assert!(!is_terminal_detail(
            StatusCode::OK,
            br#"{"execution_id":"e"}"#,
            &t
        ));
        assert!(!is_terminal_detail(StatusCode::OK, b"not json", &t));
        assert!(!is_terminal_detail(
            StatusCode::NOT_FOUND,
            br#"{"status":"completed"}"#,
            &t
        ));
        assert!(!is_terminal_detail(
            StatusCode::OK,
            br#"{"status":null}"#,
            &t
        ));
    }

    #[test]
    fn no_cache_directives() {
        let mut h = HeaderMap::new();
        assert!(!request_skips_lookup(&h));
        h.insert("cache-control", "max-stale, No-Cache".parse().unwrap());
        assert!(request_skips_lookup(&h));
        h.insert("cache-control", "no-store-ish".parse().unwrap());
        assert!(!request_skips_lookup(&h));
        h.insert("pragma", "no-cache".parse().unwrap());
        assert!(request_skips_lookup(&h));
    }
}
