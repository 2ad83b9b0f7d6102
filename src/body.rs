//! The body type every response of the gateway carries, and small
//! constructors for it.
//!
//! Upstream bodies are streamed through untouched and the gateway's own
//! answers (cache hits among them) are in-memory [`Bytes`]; both fit one
//! body type so that every layer of the stack shares one response type. An
//! in-memory body is held as it is, not boxed: a cache hit is one of them,
//! and boxing would cost an allocation and a virtual call per poll on every
//! hit.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt};

/// The error type of the stack and of streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of every service in the stack: in memory, or any
/// streamed body, boxed.
pub struct Body(Kind);

enum Kind {
    /// The whole body, until it is sent (`None` once sent, or when empty).
    Full(Option<Bytes>),
    Streamed(UnsyncBoxBody<Bytes, BoxError>),
}

/// A body held in memory; `Bytes` is reference counted, so this never copies.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    let bytes = bytes.into();
    Body(Kind::Full((!bytes.is_empty()).then_some(bytes)))
}

/// An empty body.
pub fn empty() -> Body {
    Body(Kind::Full(None))
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Body(Kind::Streamed(body.map_err(Into::into).boxed_unsync()))
}

/// What [`read_up_to`] read.
#[derive(Debug)]
pub enum Prefix {
    /// The whole body, within the limit.
    Whole(Bytes),
    /// Longer than the limit: the part read so far and the rest, as one
    /// streamed body.
    Longer(Body),
}

/// Reads `body` whole unless it grows past `limit` bytes, then hands back
/// what was read and the rest as one body. Trailers are not kept.
pub async fn read_up_to(mut body: Body, limit: usize) -> Result<Prefix, BoxError> {
    let mut chunks = VecDeque::new();
    let mut size = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        size += data.len();
        chunks.push_back(data);
        if size > limit {
            return Ok(Prefix::Longer(boxed(Prefixed { chunks, rest: body })));
        }
    }
    Ok(Prefix::Whole(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(size);
            for chunk in chunks {
                all.extend_from_slice(&chunk);
            }
            all.freeze()
        }
    }))
}

/// A body that replays already-read chunks, then continues with the rest.
struct Prefixed {
    chunks: VecDeque<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

impl Body {
    /// Whether the body is held in memory (the gateway's own), not a
    /// stream still arriving.
    pub fn is_in_memory(&self) -> bool {
        matches!(self.0, Kind::Full(_))
    }
}

/// Which kind and how long, never the bytes (cached API answers).
impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Full(bytes) => f
                .debug_struct("Body::Full")
                .field("len", &bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Streamed(_) => f.write_str("Body::Streamed"),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Kind::Streamed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Streamed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streamed(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    #[tokio::test]
    async fn in_memory_bodies_are_one_frame_of_known_length() {
        let body = full("hello");
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        let body = full(Bytes::new());
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(empty().is_end_stream());
        assert_eq!(format!("{:?}", full("secret")), "Body::Full { len: 6 }");
    }

    #[tokio::test]
    async fn streamed_bodies_keep_their_frames_and_errors() {
        let frames = futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::data(Bytes::from_static(b"b"))),
            Err::<Frame<Bytes>, BoxError>("cut".into()),
        ]);
        let body = boxed(http_body_util::StreamBody::new(frames));
        assert!(!body.is_end_stream());
        let error = body.collect().await.unwrap_err();
        assert_eq!(error.to_string(), "cut");
    }
}
