//! Which requests the cache looks at, and the canonical form of their path.
//!
//! Routes are matched on path segments the way the API's router matches
//! them. The canonical path percent-decodes each segment and re-encodes it
//! one fixed way, so `exec%5F1` and `exec_1` are one entry while an encoded
//! slash stays inside its segment and can never turn one route into another.

use std::borrow::Cow;

use http::Method;
use percent_encoding::{percent_decode_str, percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Bytes left unencoded in a canonical segment: RFC 3986 unreserved.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What the cache does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET` of an execution detail: served from cache once terminal.
    Detail {
        /// Canonical path.
        path: String,
    },
    /// `POST` of an execution list query: coalesced.
    List {
        /// Canonical path.
        path: String,
    },
    /// A mutation that may change what is cached at and below `path`.
    Invalidate {
        /// Canonical path; entries at it or below it are dropped.
        path: String,
        /// The path is exactly one execution detail (no prefix scan needed).
        exact_detail: bool,
    },
    /// Everything else: forwarded untouched.
    PassThrough,
}

/// Classifies a request by method and raw path.
pub fn classify(method: &Method, raw_path: &str) -> Route {
    let is_mutation = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if *method != Method::GET && !is_mutation {
        return Route::PassThrough;
    }
    // Everything cached lives under /v1/retrievers/; cheap early exit.
    if !raw_path.starts_with("/v1/retrievers/") {
        return Route::PassThrough;
    }
    let segments = decode_segments(raw_path);
    let s: Vec<&[u8]> = segments.iter().map(|c| c.as_ref()).collect();
    let shape = match s.as_slice() {
        [b"v1", b"retrievers", b"executions", b"list"] => Shape::List,
        [b"v1", b"retrievers", _, b"executions", b"list"] => Shape::List,
        [b"v1", b"retrievers", b"executions", id] if !id.is_empty() => Shape::Detail,
        [b"v1", b"retrievers", rid, b"executions", id] if !rid.is_empty() && !id.is_empty() => {
            Shape::Detail
        }
        // Below a detail: nothing is cached there, but the detail itself
        // is "at or above" it.
        [b"v1", b"retrievers", b"executions", id, _, ..] if !id.is_empty() => Shape::BelowDetail(4),
        [b"v1", b"retrievers", rid, b"executions", id, _, ..]
            if !rid.is_empty() && !id.is_empty() =>
        {
            Shape::BelowDetail(5)
        }
        // A retriever (or its execution collection) as a whole.
        [b"v1", b"retrievers", x] | [b"v1", b"retrievers", x, b"executions"]
            if !x.is_empty() && *x != b"execute" =>
        {
            Shape::Parent
        }
        _ => Shape::Other,
    };
    match shape {
        Shape::Detail if *method == Method::GET => Route::Detail {
            path: canonical_path(&segments),
        },
        Shape::List if *method == Method::POST => Route::List {
            path: canonical_path(&segments),
        },
        Shape::Detail if is_mutation => Route::Invalidate {
            path: canonical_path(&segments),
            exact_detail: true,
        },
        Shape::BelowDetail(depth) if is_mutation => Route::Invalidate {
            path: canonical_path(&segments[..depth]),
            exact_detail: true,
        },
        // Deleting a retriever may take its executions with it; updating
        // it does not change executions that already ran.
        Shape::Parent if *method == Method::DELETE => Route::Invalidate {
            path: canonical_path(&segments),
            exact_detail: false,
        },
        _ => Route::PassThrough,
    }
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Detail,
    List,
    /// A path below a detail; the number of segments of that detail.
    BelowDetail(usize),
    Parent,
    Other,
}

/// The path's segments after the leading `/`, percent-decoded to bytes
/// (not to UTF-8: `%FF` and `%FE` must stay different); borrowed when a
/// segment has nothing to decode.
fn decode_segments(raw_path: &str) -> Vec<Cow<'_, [u8]>> {
    raw_path
        .split('/')
        .skip(1)
        .map(|s| percent_decode_str(s).into())
        .collect()
}

/// Joins decoded segments, each re-encoded the one canonical way.
fn canonical_path(segments: &[Cow<'_, [u8]>]) -> String {
    let mut out = String::with_capacity(64);
    for segment in segments {
        out.push('/');
        out.extend(percent_encode(segment, SEGMENT));
    }
    out
}

/// Canonicalises any raw path (for the admin API's single-entry form).
pub fn canonicalize(raw_path: &str) -> String {
    canonical_path(&decode_segments(raw_path))
}

/// True when `path` is `prefix` or lies below it.
pub fn is_at_or_below(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(p: &str) -> Route {
        Route::Detail { path: p.into() }
    }

    #[test]
    fn detail_and_list_routes() {
        assert_eq!(
            classify(&Method::GET, "/v1/retrievers/executions/exec_1"),
            detail("/v1/retrievers/executions/exec_1")
        );
        assert_eq!(
            classify(&Method::GET, "/v1/retrievers/executions/exec%5F1"),
            detail("/v1/retrievers/executions/exec_1")
        );
        assert_eq!(
            classify(&Method::GET, "/v1/retrievers/ret_9/executions/exec_1"),
            detail("/v1/retrievers/ret_9/executions/exec_1")
        );
        assert_eq!(
            classify(&Method::POST, "/v1/retrievers/executions/list"),
            Route::List {
                path: "/v1/retrievers/executions/list".into()
            }
        );
        assert_eq!(
            classify(&Method::POST, "/v1/retrievers/ret_9/executions/list"),
            Route::List {
                path: "/v1/retrievers/ret_9/executions/list".into()
            }
        );
    }

    #[test]
    fn live_and_other_routes_pass_through() {
        for (m, p) in [
            (Method::GET, "/v1/retrievers/ret_9/executions/exec_1/status"),
            (Method::GET, "/v1/retrievers/executions/exec_1/"),
            (Method::GET, "/v1/clusters/executions/exec_1"),
            (Method::HEAD, "/v1/retrievers/executions/exec_1"),
            (Method::POST, "/v1/retrievers/execute"),
            (Method::POST, "/v1/retrievers/ret_9/execute"),
            (Method::POST, "/v1/collections"),
            (Method::GET, "/v1/retrievers"),
            // Creating or updating a retriever leaves past executions alone.
            (Method::POST, "/v1/retrievers"),
            (Method::POST, "/v1/retrievers/"),
            (Method::PATCH, "/v1/retrievers/ret_9"),
        ] {
            assert_eq!(classify(&m, p), Route::PassThrough, "{m} {p}");
        }
    }

    #[test]
    fn invalid_utf8_ids_stay_distinct() {
        assert_ne!(
            classify(&Method::GET, "/v1/retrievers/executions/%FF"),
            classify(&Method::GET, "/v1/retrievers/executions/%FE")
        );
    }

    #[test]
    fn encoded_slash_stays_in_its_segment() {
        assert_eq!(
            classify(&Method::GET, "/v1/retrievers/executions/a%2Fb"),
            detail("/v1/retrievers/executions/a%2Fb")
        );
        assert_ne!(
            classify(&Method::GET, "/v1/retrievers/ret%2Fexecutions/executions/x"),
            classify(&Method::GET, "/v1/retrievers/ret/executions/executions")
        );
    }

    #[test]
    fn mutations_invalidate_at_and_below() {
        assert_eq!(
            classify(&Method::PATCH, "/v1/retrievers/executions/exec_1"),
            Route::Invalidate {
                path: "/v1/retrievers/executions/exec_1".into(),
                exact_detail: true
            }
        );
        assert_eq!(
            classify(&Method::DELETE, "/v1/retrievers/ret_9"),
            Route::Invalidate {
                path: "/v1/retrievers/ret_9".into(),
                exact_detail: false
            }
        );
        assert_eq!(
            classify(&Method::POST, "/v1/retrievers/executions/exec_1/labels"),
            Route::Invalidate {
                path: "/v1/retrievers/executions/exec_1".into(),
                exact_detail: true
            }
        );
        assert_eq!(
            classify(
                &Method::DELETE,
                "/v1/retrievers/ret_9/executions/exec_1/x/y"
            ),
            Route::Invalidate {
                path: "/v1/retrievers/ret_9/executions/exec_1".into(),
                exact_detail: true
            }
        );
        assert!(is_at_or_below(
            "/v1/retrievers/ret_9/executions/e",
            "/v1/retrievers/ret_9"
        ));
        assert!(!is_at_or_below(
            "/v1/retrievers/ret_99/executions/e",
            "/v1/retrievers/ret_9"
        ));
    }
}
