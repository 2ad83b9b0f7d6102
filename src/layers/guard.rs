//! Rejects requests that must never be forwarded, before anything else
//! looks at them: ambiguous credentials, paths that could escape the route
//! they name once upstream normalises them, and request targets that are not
//! a plain path.
//!
//! Used as a [`Check`]; a rejection is a
//! [`GatewayError::BadRequest`]. It also marks the client's `Authorization`
//! sensitive (never printed by `Debug`, never HPACK-indexed), in the same
//! look at the header that refuses two of them: tower-http's
//! `SetSensitiveRequestHeaders` did it as a layer of its own, on every
//! request. Only the observe, error-mapping and body-limit layers, none of
//! which prints a header, see the request before this.

use http::{header, Method, Request};
use percent_encoding::percent_decode_str;

use crate::error::GatewayError;
use crate::layers::check::Check;

/// The request guard.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestGuard;

impl Check for RequestGuard {
    fn check<B>(&self, request: &mut Request<B>) -> Result<(), GatewayError> {
        check(request)
    }
}

fn check<B>(request: &mut Request<B>) -> Result<(), GatewayError> {
    if request.method() == Method::CONNECT {
        return Err(GatewayError::BadRequest("CONNECT is not supported".into()));
    }
    let path = request.uri().path();
    if !path.starts_with('/') {
        return Err(GatewayError::BadRequest(
            "request target must be a path".into(),
        ));
    }
    if has_dot_segment(path) {
        return Err(GatewayError::BadRequest(
            "path must not contain '.' or '..' segments".into(),
        ));
    }
    if let header::Entry::Occupied(mut credentials) =
        request.headers_mut().entry(header::AUTHORIZATION)
    {
        if credentials.iter().nth(1).is_some() {
            return Err(GatewayError::BadRequest(
                "more than one Authorization header".into(),
            ));
        }
        credentials.get_mut().set_sensitive(true);
    }
    Ok(())
}

/// True when the path, raw or percent-decoded, has a `.` or `..` segment.
///
/// Decoding first also catches `%2e%2e` and segments hidden behind an encoded
/// slash (`a%2F..%2Fb`), which some servers decode before routing; a
/// backslash counts as a separator for the same reason.
pub fn has_dot_segment(path: &str) -> bool {
    // Nearly every path has neither: no decoding, no allocation (and a
    // vectorised search: this runs on every request).
    if memchr::memchr3(b'.', b'%', b'\\', path.as_bytes()).is_none() {
        return false;
    }
    let decoded = percent_decode_str(path).collect::<Vec<u8>>();
    decoded
        .split(|b| *b == b'/' || *b == b'\\')
        .any(|segment| segment == b"." || segment == b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_raw_and_encoded() {
        for path in [
            "/v1/../admin",
            "/v1/./x",
            "/v1/%2e%2e/x",
            "/v1/%2E%2e/x",
            "/v1/.%2e",
            "/v1/a%2F..%2Fb",
            "/v1/%2e",
            "/..",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in [
            "/v1/retrievers/executions/exec_1",
            "/v1/a..b",
            "/v1/.well",
            "/",
        ] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn two_authorization_headers_rejected() {
        let request = Request::builder()
            .uri("/v1/x")
            .header("authorization", "Bearer a")
            .header("authorization", "Bearer b")
            .body(())
            .unwrap();
        assert!(matches!(
            check(&mut request.clone()),
            Err(GatewayError::BadRequest(_))
        ));
        let mut request = Request::builder().uri("/v1/x").body(()).unwrap();
        assert!(check(&mut request).is_ok());
    }

    #[test]
    fn the_clients_credentials_are_marked_sensitive() {
        let mut request = Request::builder()
            .uri("/v1/x")
            .header("authorization", "Bearer secret-gateway-key")
            .body(())
            .unwrap();
        assert!(!request.headers()[header::AUTHORIZATION].is_sensitive());
        check(&mut request).unwrap();
        let value = &request.headers()[header::AUTHORIZATION];
        assert!(value.is_sensitive());
        assert!(!format!("{:?}", request.headers()).contains("secret"));
    }
}
