//! What identifies a cache entry or an in-flight call.
//!
//! Every key carries the effective namespace as its own field: the same
//! execution id in two namespaces is two executions, and one team must never
//! be served another's data (BerriAI/litellm #29955). Keys do not carry the
//! client: two teams on one namespace share entries (Kong/kong #5887).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use http::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::redis::SharedKey;

/// A cache or flight key.
///
/// Kept small: every cached entry holds one (40 bytes; the list-only parts
/// sit behind a box that execution details, nearly all entries, leave
/// empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// The effective namespace (shared with the client's config).
    pub namespace: Arc<str>,
    /// The canonical path.
    pub path: Box<str>,
    /// Query and body of a list query; `None` for an execution detail.
    list: Option<Box<ListKey>>,
}

/// The parts of a key only list queries have.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ListKey {
    /// Query parameters, decoded, sorted and re-encoded.
    query: Box<str>,
    /// The request body (never [`BodyKey::Detail`]).
    body: BodyKey,
}

/// The part of a key that comes from the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyKey {
    /// An execution detail (`GET`): no body.
    Detail,
    /// A list query sent without a body. The API documents the body as
    /// optional but not that "absent" means `{}`, so the two stay apart.
    Absent,
    /// SHA-256 of the media type and the canonical JSON body.
    Json([u8; 32]),
}

/// Hashed field by field the way [`DetailKey`] hashes, so a detail is found
/// by its borrowed parts.
impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_parts(&self.namespace, &self.path, state);
        match &self.list {
            None => state.write_u8(0),
            Some(list) => {
                state.write_u8(1);
                list.hash(state);
            }
        }
    }
}

fn hash_parts<H: Hasher>(namespace: &str, path: &str, state: &mut H) {
    namespace.hash(state);
    path.hash(state);
}

/// An execution detail's key borrowed from the request: a cache hit is
/// looked up without copying the path or touching the namespace's shared
/// reference count.
#[derive(Debug, Clone, Copy)]
pub struct DetailKey<'a> {
    /// The effective namespace.
    pub namespace: &'a str,
    /// The canonical path.
    pub path: &'a str,
}

impl Hash for DetailKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_parts(self.namespace, self.path, state);
        state.write_u8(0);
    }
}

impl moka::Equivalent<CacheKey> for DetailKey<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        key.list.is_none() && *key.namespace == *self.namespace && *key.path == *self.path
    }
}

impl CacheKey {
    /// The key of an execution detail: namespace and path. The detail
    /// routes take no query parameters (`namespace` is the key's own
    /// field), so the query is not part of it.
    pub fn detail(namespace: impl Into<Arc<str>>, path: String) -> Self {
        Self {
            namespace: namespace.into(),
            path: path.into_boxed_str(),
            list: None,
        }
    }

    /// The key of a list query, or `None` when the body is not JSON (such a
    /// request is forwarded alone).
    pub fn list(
        namespace: impl Into<Arc<str>>,
        path: String,
        raw_query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<Self> {
        let body = list_body_key(headers, body)?;
        Some(Self {
            namespace: namespace.into(),
            path: path.into_boxed_str(),
            list: Some(Box::new(ListKey {
                query: canonical_query(raw_query).into_boxed_str(),
                body,
            })),
        })
    }

    /// The canonical query (empty for an execution detail).
    pub fn query(&self) -> &str {
        self.list.as_ref().map_or("", |list| &list.query)
    }

    /// The body part: [`BodyKey::Detail`] for an execution detail.
    pub fn body(&self) -> BodyKey {
        self.list.as_ref().map_or(BodyKey::Detail, |list| list.body)
    }

    /// Approximate bytes the key occupies, for the cache weigher.
    pub fn weight(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.namespace.len()
            + self.path.len()
            + self
                .list
                .as_ref()
                .map_or(0, |list| std::mem::size_of::<ListKey>() + list.query.len())
    }
}

/// Decodes the query pairs, sorts them by name and re-encodes them one way,
/// so parameter order and equivalent encodings do not matter. The sort is
/// stable: repeated values of one name keep their order, because the API
/// reads the last one. `namespace` is left out: the key's namespace field
/// already holds the namespace the API will use.
pub fn canonical_query(raw: Option<&str>) -> String {
    let Some(raw) = raw.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .filter(|(k, _)| k != "namespace")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The body part of a list key: media type plus canonical JSON (object keys
/// sorted, no insignificant whitespace). `None` for a body that is not JSON.
pub fn list_body_key(headers: &HeaderMap, body: &[u8]) -> Option<BodyKey> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(BodyKey::Absent).filter(|_| body.is_empty());
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    let mut hasher = Sha256::new();
    let media_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    hasher.update(media_type.as_bytes());
    hasher.update([0]);
    // serde_json's map is ordered by key, so this prints it canonically.
    hasher.update(value.to_string().as_bytes());
    Some(BodyKey::Json(hasher.finalize().into()))
}

/// The Redis tier stores entries, leases and answers under a digest of
/// the whole key; the namespace picks the invalidation epoch.
impl SharedKey for CacheKey {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    /// SHA-256 over length-prefixed namespace, path and query, and the
    /// body key: fixed-length, and no id in clear.
    fn digest(&self) -> String {
        let mut h = Sha256::new();
        for part in [&*self.namespace, &*self.path, self.query()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        match self.body() {
            BodyKey::Detail => h.update([0]),
            BodyKey::Absent => h.update([1]),
            BodyKey::Json(digest) => {
                h.update([2]);
                h.update(digest);
            }
        }
        hex::encode(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shared_digests_separate_namespaces_and_kinds() {
        let a = CacheKey::detail("ns_a", "/v1/retrievers/executions/e".into());
        let b = CacheKey::detail("ns_b", "/v1/retrievers/executions/e".into());
        assert_ne!(a.digest(), b.digest());
        // Length-prefixed parts: moving a byte between fields changes the hash.
        let c = CacheKey::detail("ns_a/", "v1/retrievers/executions/e".into());
        assert_ne!(a.digest(), c.digest());
        assert_eq!(a.digest().len(), 64);
    }

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h
    }

    fn key(body: &str, query: Option<&str>) -> Option<CacheKey> {
        CacheKey::list(
            "ns",
            "/v1/retrievers/executions/list".into(),
            query,
            &json_headers(),
            body.as_bytes(),
        )
    }

    #[test]
    fn order_whitespace_and_query_order_do_not_matter() {
        let a = key(
            r#"{"status":"completed","count_only":false}"#,
            Some("limit=5&offset=10"),
        );
        let b = key(
            "{ \"count_only\" : false,\n \"status\": \"completed\" }",
            Some("offset=10&limit=5"),
        );
        assert_eq!(a, b);
        assert!(a.is_some());
    }

    #[test]
    fn different_values_namespaces_and_absent_bodies_differ() {
        assert_ne!(
            key(r#"{"status":"completed"}"#, None),
            key(r#"{"status":"failed"}"#, None)
        );
        assert_ne!(key(r#"{"limit":1}"#, None), key(r#"{"limit":1.0}"#, None));
        assert_ne!(key("", None), key("{}", None));
        assert_ne!(key("{}", Some("limit=1")), key("{}", Some("limit=2")));
        assert_eq!(
            key("{}", Some("namespace=x&limit=1")),
            key("{}", Some("limit=1"))
        );
        // Repeated names keep their order: the API reads the last value.
        assert_ne!(
            key("{}", Some("limit=1&limit=2")),
            key("{}", Some("limit=2&limit=1"))
        );
        let other_ns = CacheKey::list(
            "ns2",
            "/v1/retrievers/executions/list".into(),
            None,
            &json_headers(),
            b"{}",
        );
        assert_ne!(key("{}", None), other_ns);
    }

    #[test]
    fn detail_keys_stay_small_and_distinct_from_lists() {
        // Every cached entry holds a key: list-only parts are boxed away.
        assert_eq!(std::mem::size_of::<CacheKey>(), 40);
        let detail = CacheKey::detail("ns", "/v1/retrievers/executions/list".into());
        assert_eq!(detail.body(), BodyKey::Detail);
        assert_eq!(detail.query(), "");
        let list = key("", None).unwrap();
        assert_eq!(list.body(), BodyKey::Absent);
        assert_ne!(detail, list);
        assert_eq!(key("{}", Some("b=1&a=2")).unwrap().query(), "a=2&b=1");
    }

    #[test]
    fn a_borrowed_detail_key_hashes_and_compares_as_the_owned_one() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        let owned = CacheKey::detail("ns", "/v1/retrievers/executions/exec_1".into());
        let borrowed = DetailKey {
            namespace: "ns",
            path: "/v1/retrievers/executions/exec_1",
        };
        assert_eq!(hasher.hash_one(&owned), hasher.hash_one(borrowed));
        assert!(moka::Equivalent::equivalent(&borrowed, &owned));
        // The boundary between namespace and path is part of the hash.
        let shifted = DetailKey {
            namespace: "ns/v1",
            path: "/retrievers/executions/exec_1",
        };
        assert!(!moka::Equivalent::equivalent(&shifted, &owned));
        assert_ne!(hasher.hash_one(&owned), hasher.hash_one(shifted));
        let list = key("", None).unwrap();
        let same_path = DetailKey {
            namespace: &list.namespace,
            path: &list.path,
        };
        assert!(!moka::Equivalent::equivalent(&same_path, &list));
    }

    #[test]
    fn invalid_json_has_no_key() {
        assert_eq!(key("{not json", None), None);
        assert_eq!(key("   ", None), None);
    }

    #[test]
    fn media_type_parameters_do_not_matter_but_type_does() {
        let mut with_charset = HeaderMap::new();
        with_charset.insert(
            "content-type",
            "Application/JSON; charset=utf-8".parse().unwrap(),
        );
        let a = list_body_key(&json_headers(), b"{}");
        assert_eq!(a, list_body_key(&with_charset, b"{}"));
        assert_ne!(a, list_body_key(&HeaderMap::new(), b"{}"));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            "[a-z0-9 ]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,6}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Writes `value` with object keys in reverse order and extra whitespace.
    fn scrambled(value: &Value) -> String {
        match value {
            Value::Object(map) => {
                let parts: Vec<String> = map
                    .iter()
                    .rev()
                    .map(|(k, v)| format!(" \n{} :\t{} ", Value::String(k.clone()), scrambled(v)))
                    .collect();
                format!("{{ {} }}", parts.join(","))
            }
            Value::Array(items) => {
                format!(
                    "[ {} ]",
                    items.iter().map(scrambled).collect::<Vec<_>>().join(" , ")
                )
            }
            other => other.to_string(),
        }
    }

    proptest! {
        #[test]
        fn permutations_and_whitespace_map_to_one_key(value in json_value()) {
            let plain = list_body_key(&json_headers(), value.to_string().as_bytes());
            let messy = list_body_key(&json_headers(), scrambled(&value).as_bytes());
            prop_assert!(plain.is_some());
            prop_assert_eq!(plain, messy);
        }

        #[test]
        fn different_values_map_to_different_keys(a in json_value(), b in json_value()) {
            prop_assume!(a != b);
            prop_assert_ne!(
                list_body_key(&json_headers(), a.to_string().as_bytes()),
                list_body_key(&json_headers(), b.to_string().as_bytes())
            );
        }

        #[test]
        fn query_order_does_not_matter(map in prop::collection::btree_map("[a-z]{1,4}", "[a-z0-9 %&=]{0,4}", 0..6)) {
            let mut pairs: Vec<(String, String)> = map.into_iter().collect();
            let encode = |pairs: &[(String, String)]| form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
            let forward = canonical_query(Some(&encode(&pairs)));
            pairs.reverse();
            prop_assert_eq!(forward, canonical_query(Some(&encode(&pairs))));
        }
    }
}
