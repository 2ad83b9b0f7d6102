//! The shared cache tier: terminal execution details (`c:` keys), read
//! after a local miss and written with the same TTL as the local tier,
//! each stamped with the invalidation epochs it was fetched under.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode};

use super::{Shared, SharedKey};

/// A response shared through Redis: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEntry {
    /// Status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: Option<HeaderValue>,
    /// Body.
    pub body: Bytes,
}

impl Shared {
    /// The shared entry for a detail, if stored and not retired by an
    /// invalidation epoch.
    pub async fn get_entry(&self, key: &impl SharedKey) -> Option<SharedEntry> {
        let mut conn = self.connection()?;
        if self.missed_invalidation.load(Ordering::Acquire) {
            // An invalidation could not reach Redis while it was down:
            // retire every shared entry before trusting any of them again.
            let (all, _) = self.epoch_keys("");
            let _: u64 = self
                .call(redis::cmd("INCR").arg(&all).query_async(&mut conn))
                .await?;
            self.missed_invalidation.store(false, Ordering::Release);
        }
        let (all, ns) = self.epoch_keys(key.namespace());
        let entry_key = format!("{}c:{}", self.prefix, key.digest());
        let (value, epoch_all, epoch_ns): (Option<Vec<u8>>, Option<u64>, Option<u64>) = self
            .call(
                redis::cmd("MGET")
                    .arg(&entry_key)
                    .arg(&all)
                    .arg(&ns)
                    .query_async(&mut conn),
            )
            .await?;
        let (epochs, entry) = decode(&value?)?;
        (epochs == (epoch_all.unwrap_or(0), epoch_ns.unwrap_or(0))).then_some(entry)
    }

    /// Stores a detail for `ttl`, stamped with the epochs read before the
    /// upstream call started (`epochs`).
    pub async fn put_entry(
        &self,
        key: &impl SharedKey,
        entry: &SharedEntry,
        ttl: Duration,
        epochs: (u64, u64),
    ) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let entry_key = format!("{}c:{}", self.prefix, key.digest());
        let _: Option<()> = self
            .call(
                redis::cmd("SET")
                    .arg(&entry_key)
                    .arg(encode(epochs, entry).as_ref())
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut conn),
            )
            .await;
    }

    /// Deletes a shared detail.
    pub async fn delete_entry(&self, key: &impl SharedKey) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let entry_key = format!("{}c:{}", self.prefix, key.digest());
        let _: Option<i64> = self
            .call(redis::cmd("DEL").arg(&entry_key).query_async(&mut conn))
            .await;
    }
}

const FORMAT: u8 = 1;

pub(super) fn encode(epochs: (u64, u64), entry: &SharedEntry) -> Bytes {
    let content_type = entry
        .content_type
        .as_ref()
        .map_or(&[][..], HeaderValue::as_bytes);
    let mut out = BytesMut::with_capacity(21 + content_type.len() + entry.body.len());
    out.put_u8(FORMAT);
    out.put_u64(epochs.0);
    out.put_u64(epochs.1);
    out.put_u16(entry.status.as_u16());
    out.put_u16(u16::try_from(content_type.len()).unwrap_or(0));
    if content_type.len() <= usize::from(u16::MAX) {
        out.put_slice(content_type);
    }
    out.put_slice(&entry.body);
    out.freeze()
}

pub(super) fn decode(raw: &[u8]) -> Option<((u64, u64), SharedEntry)> {
    let mut buf = raw;
    if buf.len() < 21 || buf.get_u8() != FORMAT {
        return None;
    }
    let epochs = (buf.get_u64(), buf.get_u64());
    let status = StatusCode::from_u16(buf.get_u16()).ok()?;
    let ct_len = usize::from(buf.get_u16());
    if buf.len() < ct_len {
        return None;
    }
    let content_type = match ct_len {
        0 => None,
        n => Some(HeaderValue::from_bytes(&buf[..n]).ok()?),
    };
    buf.advance(ct_len);
    Some((
        epochs,
        SharedEntry {
            status,
            content_type,
            body: Bytes::copy_from_slice(buf),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trips_and_rejects_garbage() {
        let entry = SharedEntry {
            status: StatusCode::OK,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: Bytes::from_static(b"{\"status\":\"completed\"}"),
        };
        let raw = encode((3, 7), &entry);
        assert_eq!(decode(&raw), Some(((3, 7), entry)));
        assert_eq!(decode(b"short"), None);
        assert_eq!(decode(&[9; 40]), None);
    }
}
