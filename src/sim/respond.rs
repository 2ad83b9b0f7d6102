//! Building the simulator's responses: the body type, JSON answers and
//! errors in Mixpeek's `ErrorResponse` shape, all in one place.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde::Serialize;

/// Every simulator response body: a buffered body or an SSE stream.
pub(crate) type SimBody = UnsyncBoxBody<Bytes, Infallible>;

/// A buffered body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> SimBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// An `application/json` response.
pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> Response<SimBody> {
    match serde_json::to_vec(value) {
        Ok(body) => with_type(status, "application/json", full(body)),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Could not serialize response",
            "InternalServerError",
        ),
    }
}

/// A response with the given status, content type and body.
pub(crate) fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: SimBody,
) -> Response<SimBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    success: bool,
    status: u16,
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
}

/// An error in Mixpeek's shape:
/// `{"success":false,"status":N,"error":{"message":..,"type":..}}`.
pub(crate) fn error(status: StatusCode, message: &str, kind: &str) -> Response<SimBody> {
    let body = ErrorBody {
        success: false,
        status: status.as_u16(),
        error: ErrorDetail { message, kind },
    };
    // Serializing two strings and two scalars cannot fail.
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    with_type(status, "application/json", full(bytes))
}

/// 429 with `Retry-After`, as the API answers when the quota is spent.
pub(crate) fn too_many_requests(retry_after_secs: u64) -> Response<SimBody> {
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "Rate limit exceeded",
        "RateLimitError",
    );
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs),
    );
    response
}

/// 401 for a missing or wrong API key.
pub(crate) fn unauthorized() -> Response<SimBody> {
    error(
        StatusCode::UNAUTHORIZED,
        "Invalid or missing API key",
        "AuthenticationError",
    )
}

/// 404 for an unknown execution.
pub(crate) fn execution_not_found() -> Response<SimBody> {
    error(
        StatusCode::NOT_FOUND,
        "Execution not found",
        "NotFoundError",
    )
}

/// 422 for a request the API would reject as invalid.
pub(crate) fn validation(message: &str) -> Response<SimBody> {
    error(StatusCode::UNPROCESSABLE_ENTITY, message, "ValidationError")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response<SimBody>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn error_bodies_have_mixpeeks_shape() {
        let response = unauthorized();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            body_of(response).await,
            r#"{"success":false,"status":401,"error":{"message":"Invalid or missing API key","type":"AuthenticationError"}}"#
        );
        assert_eq!(
            body_of(execution_not_found()).await,
            r#"{"success":false,"status":404,"error":{"message":"Execution not found","type":"NotFoundError"}}"#
        );
    }
}
