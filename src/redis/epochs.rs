//! Invalidation epochs and their pub/sub: a mutation or an admin clear on
//! one replica retires the shared entries of every replica (`e:` keys, one
//! per namespace and one for everything, stamped into each shared entry),
//! and the in-memory tier of every replica drops what it dropped (one
//! channel, `invalidations`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::Shared;

/// An invalidation one replica tells the others about, so that their
/// in-memory tier drops what it dropped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum Invalidation {
    /// One execution detail.
    Exact {
        /// Namespace.
        ns: String,
        /// Canonical path.
        path: String,
    },
    /// Everything at and below a path.
    Below {
        /// Namespace.
        ns: String,
        /// Canonical path.
        path: String,
    },
    /// Everything.
    All,
}

impl Shared {
    pub(super) fn channel(&self) -> String {
        format!("{}invalidations", self.prefix)
    }

    /// The invalidations the other replicas publish, heard from now on
    /// (one subscription for the life of the process, resubscribing after
    /// any disconnection); `None` after the first call (one consumer: the
    /// cache, as soon as it is built).
    pub fn take_invalidations(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Invalidation>> {
        if self.invalidations_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        let (invalidated, invalidations) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(listen_for_invalidations(
            self.client.clone(),
            self.channel(),
            invalidated,
            self.subscribed.clone(),
        ));
        Some(invalidations)
    }

    /// Tells every replica (this one included) about an invalidation.
    pub async fn broadcast(&self, invalidation: &Invalidation) {
        let Some(mut conn) = self.connection() else {
            self.missed_invalidation.store(true, Ordering::Release);
            return;
        };
        let Ok(message) = serde_json::to_string(invalidation) else {
            return;
        };
        let sent: Option<i64> = self
            .call(
                redis::cmd("PUBLISH")
                    .arg(self.channel())
                    .arg(message)
                    .query_async(&mut conn),
            )
            .await;
        if sent.is_none() {
            self.missed_invalidation.store(true, Ordering::Release);
        }
    }

    /// True while this replica hears the others' invalidations.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    pub(super) fn epoch_keys(&self, namespace: &str) -> (String, String) {
        let ns = hex::encode(Sha256::digest(namespace.as_bytes()));
        (
            format!("{}e:all", self.prefix),
            format!("{}e:{ns}", self.prefix),
        )
    }

    /// The invalidation epochs of a namespace now.
    pub async fn epochs(&self, namespace: &str) -> Option<(u64, u64)> {
        let mut conn = self.connection()?;
        let (all, ns) = self.epoch_keys(namespace);
        let (a, n): (Option<u64>, Option<u64>) = self
            .call(redis::cmd("MGET").arg(&all).arg(&ns).query_async(&mut conn))
            .await?;
        Some((a.unwrap_or(0), n.unwrap_or(0)))
    }

    /// Retires every shared entry of `namespace` (or of all namespaces).
    pub async fn bump_epoch(&self, namespace: Option<&str>) {
        let Some(mut conn) = self.connection() else {
            self.missed_invalidation.store(true, Ordering::Release);
            return;
        };
        let (all, ns) = self.epoch_keys(namespace.unwrap_or(""));
        let key = if namespace.is_some() { ns } else { all };
        let bumped: Option<u64> = self
            .call(redis::cmd("INCR").arg(&key).query_async(&mut conn))
            .await;
        if bumped.is_none() {
            self.missed_invalidation.store(true, Ordering::Release);
        }
    }
}

/// Subscribes to the invalidation channel for the life of the process,
/// resubscribing after any disconnection.
async fn listen_for_invalidations(
    client: redis::Client,
    channel: String,
    out: tokio::sync::mpsc::UnboundedSender<Invalidation>,
    subscribed: Arc<AtomicBool>,
) {
    use futures_util::StreamExt;
    let mut delay = Duration::from_millis(100);
    loop {
        if let Ok(mut pubsub) = client.get_async_pubsub().await {
            if pubsub.subscribe(&channel).await.is_ok() {
                delay = Duration::from_millis(100);
                subscribed.store(true, Ordering::Release);
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    if let Ok(invalidation) =
                        serde_json::from_slice::<Invalidation>(message.get_payload_bytes())
                    {
                        if out.send(invalidation).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        subscribed.store(false, Ordering::Release);
        if out.is_closed() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
