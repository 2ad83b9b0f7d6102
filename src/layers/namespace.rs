//! The effective namespace: which tenant of the Mixpeek API a request acts in.
//!
//! The API reads the `X-Namespace` header and falls back to a `?namespace=`
//! query parameter. The gateway resolves the namespace the same way — header
//! first, then query, then the client's configured `namespace` — and refuses
//! (403) any value, in either place, outside the client's
//! `allowed_namespaces`. The result is recorded in the request's
//! [`RequestContext`] as its [`EffectiveNamespace`]; the upstream request
//! always carries it as `X-Namespace`, and every cache and flight key
//! includes it.

use http::Request;

use crate::context::{AuthenticatedClient, EffectiveNamespace, RequestContext, X_NAMESPACE};
use crate::error::GatewayError;
use crate::layers::check::Check;

/// The namespace [`Check`], below authentication.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResolveNamespace;

impl Check for ResolveNamespace {
    fn check<B>(&self, request: &mut Request<B>) -> Result<(), GatewayError> {
        let namespace = resolve(request)?;
        RequestContext::attach(request).set_namespace(namespace);
        Ok(())
    }
}

fn resolve<B>(request: &Request<B>) -> Result<EffectiveNamespace, GatewayError> {
    let client = AuthenticatedClient::of(request)
        .ok_or(GatewayError::Internal(
            "namespace resolved before authentication",
        ))?
        .0
        .clone();
    let position = |ns: &str| {
        client
            .allowed_namespaces
            .iter()
            .position(|allowed| **allowed == *ns)
            .ok_or_else(|| {
                GatewayError::Forbidden(format!(
                    "namespace {:?} is not allowed for client {}",
                    truncate(ns),
                    client.name
                ))
            })
    };

    let mut headers = request.headers().get_all(&X_NAMESPACE).iter();
    let from_header = match (headers.next(), headers.next()) {
        (Some(_), Some(_)) => {
            return Err(GatewayError::BadRequest(
                "more than one X-Namespace header".into(),
            ))
        }
        (Some(value), None) => {
            let ns = value.to_str().map_err(|_| {
                GatewayError::BadRequest("X-Namespace is not a visible ASCII string".into())
            })?;
            Some(position(ns.trim())?)
        }
        (None, _) => None,
    };

    let mut from_query = None;
    if let Some(query) = request.uri().query() {
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key != "namespace" {
                continue;
            }
            let index = position(&value)?;
            if from_query.is_some_and(|seen| seen != index) {
                return Err(GatewayError::BadRequest(
                    "conflicting namespace query parameters".into(),
                ));
            }
            from_query = Some(index);
        }
    }

    // Index 0 is the client's configured `namespace`.
    let index = from_header.or(from_query).unwrap_or(0);
    EffectiveNamespace::new(client, index)
        .ok_or(GatewayError::Internal("the client has no namespace"))
}

/// Keeps error messages short whatever a client sends.
fn truncate(value: &str) -> &str {
    match value.char_indices().nth(64) {
        Some((end, _)) => &value[..end],
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientConfig;
    use std::sync::Arc;

    fn client() -> AuthenticatedClient {
        AuthenticatedClient(Arc::new(ClientConfig {
            name: "search-team".into(),
            key_sha256: [0; 32],
            namespace: "ns_search".into(),
            allowed_namespaces: vec!["ns_search".into(), "staging".into()],
            rate_limit: None,
            max_in_flight: None,
        }))
    }

    fn resolve_for(uri: &str, headers: &[&str]) -> Result<String, GatewayError> {
        let mut builder = Request::builder().uri(uri);
        for h in headers {
            builder = builder.header("x-namespace", *h);
        }
        let mut request = builder.body(()).unwrap();
        client().attach_to(&mut request);
        resolve(&request).map(|ns| ns.as_str().to_string())
    }

    #[test]
    fn default_header_and_query() {
        assert_eq!(resolve_for("/v1/x", &[]).unwrap(), "ns_search");
        assert_eq!(resolve_for("/v1/x", &["staging"]).unwrap(), "staging");
        assert_eq!(
            resolve_for("/v1/x?namespace=staging", &[]).unwrap(),
            "staging"
        );
        assert_eq!(
            resolve_for("/v1/x?namespace=st%61ging&namespace=staging", &[]).unwrap(),
            "staging"
        );
        // The header wins, as it does at the API, but the query is still checked.
        assert_eq!(
            resolve_for("/v1/x?namespace=staging", &["ns_search"]).unwrap(),
            "ns_search"
        );
    }

    #[test]
    fn outside_allowed_is_forbidden() {
        assert!(matches!(
            resolve_for("/v1/x", &["ns_other"]),
            Err(GatewayError::Forbidden(_))
        ));
        assert!(matches!(
            resolve_for("/v1/x?namespace=ns_other", &[]),
            Err(GatewayError::Forbidden(_))
        ));
        assert!(matches!(
            resolve_for("/v1/x?namespace=ns_other", &["staging"]),
            Err(GatewayError::Forbidden(_))
        ));
    }

    #[test]
    fn ambiguity_is_bad_request() {
        assert!(matches!(
            resolve_for("/v1/x", &["staging", "ns_search"]),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(
            resolve_for("/v1/x?namespace=staging&namespace=ns_search", &[]),
            Err(GatewayError::BadRequest(_))
        ));
    }

    #[test]
    fn message_names_client_not_key() {
        let err = resolve_for("/v1/x", &["ns_other"]).unwrap_err();
        assert!(err.to_string().contains("search-team"));
    }
}
