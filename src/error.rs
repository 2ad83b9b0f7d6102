//! The gateway's own failures and the one place that turns them into HTTP
//! responses with Mixpeek's error body, so that the SDKs parse them:
//!
//! ```json
//! {"success": false, "status": 401,
//!  "error": {"message": "missing gateway key", "type": "unauthorized"}}
//! ```
//!
//! Layers fail with a [`GatewayError`] (or any error of the libraries below
//! them); [`into_response`] sits near the top of the stack and classifies
//! whatever reaches it. No message ever contains a key.

use std::fmt;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::LengthLimitError;

use crate::body::{self, Body, BoxError};

/// Mixpeek's error body: `success`, `status` and `error` with its
/// `message` and `type` — for [`GatewayError`] and for the answers the
/// server gives before a request reaches the stack.
pub fn error_body(status: StatusCode, kind: &str, message: &str) -> Bytes {
    let value = serde_json::json!({
        "success": false,
        "status": status.as_u16(),
        "error": { "message": message, "type": kind },
    });
    Bytes::from(value.to_string())
}

/// A failure the gateway answers itself, without (or instead of) upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// 400: the request is malformed.
    BadRequest(String),
    /// 401: no, malformed or unknown gateway key.
    Unauthorized(&'static str),
    /// 403: the client may not use the namespace it named.
    Forbidden(String),
    /// 404: an unknown `/_gateway/` route (or the admin API without a key).
    NotFound,
    /// 413: the request body is larger than `server.max_body_bytes`.
    PayloadTooLarge,
    /// 429: a rate limit or the upstream quota guard refused the request.
    RateLimited {
        /// The message, naming the client when one is known.
        message: String,
        /// `Retry-After` in whole seconds, at least 1.
        retry_after_secs: u64,
    },
    /// 502: upstream unreachable, reset, or answered garbage.
    BadGateway(String),
    /// 504: upstream slower than `upstream.timeout_ms`.
    GatewayTimeout,
    /// 500: a bug in the gateway; never a reason to drop the connection.
    Internal(&'static str),
}

impl GatewayError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            GatewayError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error.type` of the body.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::Unauthorized(_) => "unauthorized",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::NotFound => "not_found",
            GatewayError::PayloadTooLarge => "payload_too_large",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::BadGateway(_) => "bad_gateway",
            GatewayError::GatewayTimeout => "gateway_timeout",
            GatewayError::Internal(_) => "internal_error",
        }
    }

    /// Mixpeek's error body for this failure.
    pub fn body(&self) -> Bytes {
        error_body(self.status(), self.kind(), &self.to_string())
    }

    /// The complete response.
    pub fn into_response(&self) -> Response<Body> {
        let mut response = Response::new(body::full(self.body()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self {
            GatewayError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"mixpeek-gateway\""),
                );
            }
            GatewayError::RateLimited {
                retry_after_secs, ..
            } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from((*retry_after_secs).max(1)),
                );
            }
            _ => {}
        }
        response
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayError::BadRequest(why) => write!(f, "bad request: {why}"),
            GatewayError::Unauthorized(why) => f.write_str(why),
            GatewayError::Forbidden(why) => f.write_str(why),
            GatewayError::NotFound => f.write_str("not found"),
            GatewayError::PayloadTooLarge => f.write_str("request body too large"),
            GatewayError::RateLimited { message, .. } => f.write_str(message),
            GatewayError::BadGateway(why) => write!(f, "upstream unavailable: {why}"),
            GatewayError::GatewayTimeout => f.write_str("upstream timed out"),
            GatewayError::Internal(why) => write!(f, "internal gateway error: {why}"),
        }
    }
}

impl std::error::Error for GatewayError {}

/// Decides which [`GatewayError`] an error from anywhere in the stack is.
///
/// Errors of the libraries below are recognised by walking the source
/// chain: a body over the limit is 413 even when hyper reports it as a
/// failed upstream write; a timeout is 504; any other transport failure 502.
pub fn classify(error: &(dyn std::error::Error + 'static)) -> GatewayError {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = current {
        if let Some(gateway) = err.downcast_ref::<GatewayError>() {
            return gateway.clone();
        }
        if err.is::<tower::timeout::error::Elapsed>() {
            return GatewayError::GatewayTimeout;
        }
        if err.is::<LengthLimitError>() {
            return GatewayError::PayloadTooLarge;
        }
        current = err.source();
    }
    let why = match error.downcast_ref::<hyper_util::client::legacy::Error>() {
        Some(e) if e.is_connect() => "connection failed",
        Some(_) => "connection closed or reset",
        None => "request failed",
    };
    GatewayError::BadGateway(why.into())
}

/// The top of the stack: every error below becomes Mixpeek's error body
/// (responses pass through as they are, not re-boxed). It never returns
/// `Err`; the error type is kept only because tower's `MapResult` converts
/// readiness errors with it.
pub fn into_response(result: Result<Response<Body>, BoxError>) -> Result<Response<Body>, BoxError> {
    Ok(match result {
        Ok(response) => response,
        Err(error) => {
            let gateway = classify(error.as_ref());
            if gateway.status().is_server_error() {
                tracing::warn!(error = %error, status = gateway.status().as_u16(), "request failed");
            }
            gateway.into_response()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn body_has_mixpeek_shape() {
        let response = GatewayError::Forbidden("namespace x is not allowed".into()).into_response();
        assert_eq!(response.status(), 403);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["success"], false);
        assert_eq!(value["status"], 403);
        assert_eq!(value["error"]["type"], "forbidden");
        assert_eq!(value["error"]["message"], "namespace x is not allowed");
    }

    #[test]
    fn classifies_library_errors() {
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(classify(elapsed.as_ref()), GatewayError::GatewayTimeout);
        let own: BoxError = Box::new(GatewayError::NotFound);
        assert_eq!(classify(own.as_ref()), GatewayError::NotFound);
        let other: BoxError = "boom".into();
        assert!(matches!(
            classify(other.as_ref()),
            GatewayError::BadGateway(_)
        ));
    }

    #[tokio::test]
    async fn rate_limited_carries_retry_after_of_at_least_one_second() {
        let limited = |secs| GatewayError::RateLimited {
            message: "rate limit exceeded for client search-team".into(),
            retry_after_secs: secs,
        };
        let response = limited(3).into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["error"]["type"], "rate_limited");
        assert_eq!(
            value["error"]["message"],
            "rate limit exceeded for client search-team"
        );
        assert_eq!(limited(0).into_response().headers()["retry-after"], "1");
    }

    #[test]
    fn unauthorized_carries_www_authenticate() {
        let response = GatewayError::Unauthorized("missing gateway key").into_response();
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
