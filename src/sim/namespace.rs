//! Which namespace a request addresses: the `X-Namespace` header, else the
//! `?namespace=` query parameter, else `"default"` — the upstream's own
//! fallback order.

use http::HeaderMap;

/// The namespace used when a request names none.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// Decides the namespace of a request from its headers and raw query.
pub(crate) fn namespace(headers: &HeaderMap, query: Option<&str>) -> String {
    if let Some(value) = headers.get("x-namespace") {
        let value = String::from_utf8_lossy(value.as_bytes());
        if !value.is_empty() {
            return value.into_owned();
        }
    }
    query
        .and_then(|query| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(key, value)| key == "namespace" && !value.is_empty())
                .map(|(_, value)| value.into_owned())
        })
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(namespace: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-namespace", HeaderValue::from_static(namespace));
        headers
    }

    #[test]
    fn header_wins_over_query() {
        assert_eq!(namespace(&headers("ns_a"), Some("namespace=ns_b")), "ns_a");
    }

    #[test]
    fn query_is_the_fallback() {
        assert_eq!(
            namespace(&HeaderMap::new(), Some("limit=5&namespace=ns%20b")),
            "ns b"
        );
        assert_eq!(namespace(&headers(""), Some("namespace=ns_b")), "ns_b");
    }

    #[test]
    fn default_when_absent() {
        assert_eq!(namespace(&HeaderMap::new(), None), "default");
        assert_eq!(namespace(&HeaderMap::new(), Some("namespace=")), "default");
        assert_eq!(namespace(&HeaderMap::new(), Some("%zz&&=")), "default");
    }
}
