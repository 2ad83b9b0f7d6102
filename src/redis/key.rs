//! What identifies shared state: the cache decides what a key is
//! ([`crate::cache::key`]); Redis only needs its namespace (for the
//! invalidation epoch) and a fixed-length digest of the whole key, so that
//! Redis keys carry no ids in clear.

/// A key whose entry, lease or published answer is shared through Redis.
pub trait SharedKey: Sync {
    /// The effective namespace, whose invalidation epoch retires the entry.
    fn namespace(&self) -> &str;

    /// A digest (hex) of everything that identifies the key, the namespace
    /// included; two different keys must never share one.
    fn digest(&self) -> String;
}
