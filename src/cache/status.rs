//! The `X-Cache` response header: how a response was produced.

use http::header::HeaderName;
use http::HeaderValue;

/// The `X-Cache` header name.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// `X-Cache-Tier: L2` marks a hit served from the shared (Redis) tier; a
/// hit without it came from this replica's memory.
pub static X_CACHE_TIER: HeaderName = HeaderName::from_static("x-cache-tier");

/// The values of `X-Cache` in the public interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from cache, no upstream call.
    Hit,
    /// This request made the upstream call.
    Miss,
    /// Shared the result of an identical in-flight upstream call.
    Coalesced,
    /// The route is not cacheable: plain pass-through.
    Bypass,
}

impl CacheStatus {
    /// The header value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    /// The value as written in the header.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Coalesced => "COALESCED",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}
