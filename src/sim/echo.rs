//! The answer to every route the simulator does not model: the request
//! echoed back, so tests can see exactly what the gateway forwarded.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Response, StatusCode, Uri};
use percent_encoding::{utf8_percent_encode, CONTROLS};

use super::respond::{full, SimBody};

/// 200 with the request body byte-for-byte, its `Content-Type` (or
/// `application/octet-stream`) and `X-Echo-Method`, `X-Echo-Path` (raw),
/// `X-Echo-Query` (raw, or empty) and `X-Echo-Namespace` headers.
pub(crate) fn respond(
    method: &Method,
    uri: &Uri,
    content_type: Option<&HeaderValue>,
    namespace: &str,
    body: Bytes,
) -> Response<SimBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        content_type
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert("x-echo-method", header_value(method.as_str()));
    headers.insert("x-echo-path", header_value(uri.path()));
    headers.insert("x-echo-query", header_value(uri.query().unwrap_or("")));
    headers.insert("x-echo-namespace", header_value(namespace));
    response
}

/// The text as a header value, as-is when allowed, else with control
/// characters percent-encoded (a namespace decoded from the query may hold
/// them).
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text)
        .or_else(|_| HeaderValue::from_bytes(text.as_bytes()))
        .or_else(|_| HeaderValue::from_str(&utf8_percent_encode(text, CONTROLS).to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn echoes_everything() {
        let uri: Uri = "/v1/collections/a%2Fb?x=%20y&z".parse().unwrap();
        let content_type = HeaderValue::from_static("text/plain; charset=utf-8");
        let response = respond(
            &Method::PATCH,
            &uri,
            Some(&content_type),
            "ns_a",
            Bytes::from_static(b"\x00\xffbody"),
        );
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(headers["x-echo-method"], "PATCH");
        assert_eq!(headers["x-echo-path"], "/v1/collections/a%2Fb");
        assert_eq!(headers["x-echo-query"], "x=%20y&z");
        assert_eq!(headers["x-echo-namespace"], "ns_a");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, &b"\x00\xffbody"[..]);
    }

    #[test]
    fn defaults_and_odd_values() {
        let response = respond(
            &Method::GET,
            &Uri::from_static("/"),
            None,
            "a\nb",
            Bytes::new(),
        );
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "application/octet-stream");
        assert_eq!(headers["x-echo-query"], "");
        assert_eq!(headers["x-echo-namespace"], "a%0Ab");
    }
}
