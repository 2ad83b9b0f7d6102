//! Whether a request carries the simulator's API key as
//! `Authorization: Bearer <api_key>`.

use http::header::AUTHORIZATION;
use http::HeaderMap;

/// True when the first `Authorization` header is `Bearer <api_key>`
/// (scheme compared case-insensitively, as HTTP auth schemes are).
pub(crate) fn authorized(headers: &HeaderMap, api_key: &str) -> bool {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some(space) = value.iter().position(|b| *b == b' ') else {
        return false;
    };
    let (scheme, token) = (&value[..space], &value[space + 1..]);
    scheme.eq_ignore_ascii_case(b"bearer") && token.trim_ascii() == api_key.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn accepts_the_key() {
        assert!(authorized(&with("Bearer sk_real"), "sk_real"));
        assert!(authorized(&with("bearer sk_real"), "sk_real"));
    }

    #[test]
    fn rejects_anything_else() {
        assert!(!authorized(&HeaderMap::new(), "sk_real"));
        assert!(!authorized(&with("Bearer sk_other"), "sk_real"));
        assert!(!authorized(&with("Basic sk_real"), "sk_real"));
        assert!(!authorized(&with("sk_real"), "sk_real"));
        assert!(!authorized(&with("Bearer sk_real_longer"), "sk_real"));
        assert!(!authorized(&with("Bearer"), ""));
    }
}
