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

/// What the cache does with a request. A path already in canonical form is
/// borrowed from the request, so a cache hit copies nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET` of an execution detail: served from cache once terminal.
    Detail {
        /// Canonical path.
        path: Cow<'a, str>,
    },
    /// `POST` of an execution list query: coalesced.
    List {
        /// Canonical path.
        path: Cow<'a, str>,
    },
    /// A mutation that may change what is cached at and below `path`.
    Invalidate {
        /// Canonical path; entries at it or below it are dropped.
        path: Cow<'a, str>,
        /// The path is exactly one execution detail (no prefix scan needed).
        exact_detail: bool,
    },
    /// Everything else: forwarded untouched.
    PassThrough,
}

/// Classifies a request by method and raw path.
pub fn classify<'a>(method: &Method, raw_path: &'a str) -> Route<'a> {
    let is_mutation = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if *method != Method::GET && !is_mutation {
        return Route::PassThrough;
    }
    // Everything cached lives under /v1/retrievers/; cheap early exit.
    if !raw_path.starts_with(PREFIX) {
        return Route::PassThrough;
    }
    // The common case: a path already in canonical form (nothing encoded,
    // nothing to encode) is matched and keyed as it is, without copying
    // its segments.
    if let Some(slashes) = canonical_slashes(raw_path) {
        let (slashes, count) = slashes;
        let bytes = raw_path.as_bytes();
        let mut segments = [&b""[..]; MAX_FAST_SEGMENTS];
        for (i, segment) in segments.iter_mut().enumerate().take(count) {
            let end = if i + 1 < count {
                slashes[i + 1]
            } else {
                bytes.len()
            };
            *segment = &bytes[slashes[i] + 1..end];
        }
        let prefix = |depth: usize| {
            let end = if depth < count {
                slashes[depth]
            } else {
                bytes.len()
            };
            Cow::Borrowed(&raw_path[..end])
        };
        return route_for(method, is_mutation, shape_of(&segments[..count]), prefix);
    }
    classify_decoded(method, is_mutation, raw_path)
}

/// The general way: decode every segment, match, re-encode.
fn classify_decoded(method: &Method, is_mutation: bool, raw_path: &str) -> Route<'static> {
    let segments = decode_segments(raw_path);
    let s: Vec<&[u8]> = segments.iter().map(|c| c.as_ref()).collect();
    route_for(method, is_mutation, shape_of(&s), |depth| {
        Cow::Owned(canonical_path(&segments[..depth.min(segments.len())]))
    })
}

/// The prefix every cached route shares: `/`, `v1`, `/`, `retrievers`, `/`.
const PREFIX: &str = "/v1/retrievers/";

/// More segments than any cached route has; longer paths take the slow way.
const MAX_FAST_SEGMENTS: usize = 8;

/// When `raw_path` is its own canonical form (it starts with [`PREFIX`] and
/// holds only `/` and unreserved bytes) and has at most
/// [`MAX_FAST_SEGMENTS`] segments: the offsets of its slashes and the
/// number of segments.
fn canonical_slashes(raw_path: &str) -> Option<([usize; MAX_FAST_SEGMENTS], usize)> {
    const fn table() -> [u8; 256] {
        // 1: unreserved, 2: slash, 0: anything else.
        let mut t = [0u8; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            if c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_' || c == b'~' {
                t[b] = 1;
            }
            b += 1;
        }
        t[b'/' as usize] = 2;
        t
    }
    static CLASS: [u8; 256] = table();
    // The caller matched the prefix: its three slashes are known and its
    // other bytes are unreserved.
    let rest = raw_path.as_bytes().strip_prefix(PREFIX.as_bytes())?;
    let mut slashes = [0usize; MAX_FAST_SEGMENTS];
    slashes[..3].copy_from_slice(&[0, 3, PREFIX.len() - 1]);
    let mut count = 3;
    for (i, &b) in rest.iter().enumerate() {
        match CLASS[usize::from(b)] {
            1 => {}
            2 => {
                if count == MAX_FAST_SEGMENTS {
                    return None;
                }
                slashes[count] = PREFIX.len() + i;
                count += 1;
            }
            _ => return None,
        }
    }
    Some((slashes, count))
}

/// What a request with this shape is; `path(depth)` is the canonical path
/// of its first `depth` segments.
fn route_for<'a>(
    method: &Method,
    is_mutation: bool,
    shape: Shape,
    path: impl Fn(usize) -> Cow<'a, str>,
) -> Route<'a> {
    match shape {
        Shape::Detail(depth) if *method == Method::GET => Route::Detail { path: path(depth) },
        Shape::List(depth) if *method == Method::POST => Route::List { path: path(depth) },
        Shape::Detail(depth) if is_mutation => Route::Invalidate {
            path: path(depth),
            exact_detail: true,
        },
        Shape::BelowDetail(depth) if is_mutation => Route::Invalidate {
            path: path(depth),
            exact_detail: true,
        },
        // Deleting a retriever may take its executions with it; updating
        // it does not change executions that already ran.
        Shape::Parent(depth) if *method == Method::DELETE => Route::Invalidate {
            path: path(depth),
            exact_detail: false,
        },
        _ => Route::PassThrough,
    }
}

/// The shape of a path, from its decoded segments.
fn shape_of(s: &[&[u8]]) -> Shape {
    let depth = s.len();
    match s {
        [b"v1", b"retrievers", b"executions", b"list"] => Shape::List(depth),
        [b"v1", b"retrievers", _, b"executions", b"list"] => Shape::List(depth),
        [b"v1", b"retrievers", b"executions", id] if !id.is_empty() => Shape::Detail(depth),
        [b"v1", b"retrievers", rid, b"executions", id] if !rid.is_empty() && !id.is_empty() => {
            Shape::Detail(depth)
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
            Shape::Parent(depth)
        }
        _ => Shape::Other,
    }
}

/// A route's shape; each carries the number of segments its canonical path keeps.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Detail(usize),
    List(usize),
    /// A path below a detail; the number of segments of that detail.
    BelowDetail(usize),
    Parent(usize),
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

    fn detail(p: &str) -> Route<'_> {
        Route::Detail { path: p.into() }
    }

    proptest::proptest! {
        /// The copy-free way for canonical paths agrees with the general one.
        #[test]
        fn fast_path_agrees_with_decoding(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "v1", "retrievers", "executions", "list", "execute", "x", "ret_1", "", "a.b-c~d_e",
                ]),
                0..10,
            ),
            method in proptest::sample::select(vec![
                Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::HEAD,
            ]),
            prefixed in proptest::bool::ANY,
        ) {
            let tail = parts.join("/");
            let path = if prefixed { format!("/v1/retrievers/{tail}") } else { format!("/{tail}") };
            let is_mutation = matches!(method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
            let expected = if method == Method::GET || is_mutation {
                classify_decoded(&method, is_mutation, &path)
            } else {
                Route::PassThrough
            };
            let expected = if path.starts_with("/v1/retrievers/") { expected } else { Route::PassThrough };
            proptest::prop_assert_eq!(classify(&method, &path), expected);
        }
    }

    #[test]
    fn canonical_paths_are_borrowed_and_encoded_ones_rebuilt() {
        let path_of = |raw| match classify(&Method::GET, raw) {
            Route::Detail { path } => path,
            other => panic!("{raw}: {other:?}"),
        };
        assert!(matches!(
            path_of("/v1/retrievers/executions/exec_1"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            path_of("/v1/retrievers/r/executions/e.1~"),
            Cow::Borrowed(_)
        ));
        let rebuilt = path_of("/v1/retrievers/executions/exec%5F1");
        assert!(matches!(rebuilt, Cow::Owned(_)));
        assert_eq!(rebuilt, "/v1/retrievers/executions/exec_1");
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
