//! The admin cache API: `DELETE /_gateway/cache` clears the whole cache,
//! `DELETE /_gateway/cache/{namespace}/{path...}` drops one execution
//! detail (in every replica, with Redis). Only with the admin key; the
//! endpoints layer ([`super::endpoints`]) checks it and routes here.

use percent_encoding::percent_decode_str;

use crate::body::BoxError;
use crate::cache::route::canonicalize;
use crate::cache::CacheState;
use crate::error::GatewayError;

/// Clears what `rest` (what follows `/_gateway/cache/`; `None` for the
/// whole cache) names, and says what it did, in JSON; an incomplete path
/// is a 404.
pub async fn clear(cache: &CacheState, rest: Option<String>) -> Result<&'static str, BoxError> {
    let Some(rest) = rest else {
        cache.clear().await;
        tracing::info!("admin: cache cleared");
        return Ok(r#"{"status":"ok","cleared":"all"}"#);
    };
    let (namespace, path) = rest.split_once('/').ok_or(GatewayError::NotFound)?;
    if namespace.is_empty() || path.is_empty() {
        return Err(GatewayError::NotFound.into());
    }
    let namespace = percent_decode_str(namespace).decode_utf8_lossy();
    let path = canonicalize(&format!("/{path}"));
    let removed = cache.drop_detail(&namespace, &path).await;
    tracing::info!(namespace = %namespace, path = %path, removed, "admin: cache entry dropped");
    Ok(if removed {
        r#"{"status":"ok","removed":true}"#
    } else {
        r#"{"status":"ok","removed":false}"#
    })
}
