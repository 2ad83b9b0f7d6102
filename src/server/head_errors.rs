//! Mixpeek's error body on the answers hyper gives a malformed request head.
//!
//! A request head hyper cannot parse (a bad method or header, a URI over
//! its limit, headers over its buffer) never reaches the stack: hyper
//! answers it itself — 400, 414 or 431 — with an empty body, and closes the
//! connection. SDKs that parse every error body then fail on an empty one.
//! hyper has no hook for that answer, so the connection's stream is
//! wrapped (above TLS, where the bytes are HTTP) and the answer rewritten
//! on its way out.
//!
//! hyper's answer is always the same head: the status line, then
//! `connection: close`, `content-length: 0` and `date`, and nothing after
//! it. No response head of the stack looks like that — every one carries
//! its `x-request-id` and the stack's own headers — but a body could hold
//! those bytes. So only a write that is exactly that head and is the first
//! write since bytes were last read is held back (a body always comes
//! after its own head, written after its request was read), and it is
//! rewritten only when hyper then shuts the stream down without reading
//! again; a read or a write first sends it as it was. Where hyper's answer
//! shares a write with earlier responses (pipelining, a full socket) it is
//! left as hyper wrote it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// hyper's answers to a malformed head: status line, `error.message`.
const ANSWERS: [(&[u8], &str); 3] = [
    (
        b"HTTP/1.1 400 Bad Request\r\n",
        "malformed request: the request line or a header could not be parsed",
    ),
    (b"HTTP/1.1 414 URI Too Long\r\n", "request URI too long"),
    (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        "request header fields too large",
    ),
];

/// What follows the status line in hyper's answer, up to the date's value.
const HEADERS: &[u8] = b"connection: close\r\ncontent-length: 0\r\ndate: ";

/// An IMF-fixdate (`Mon, 07 Dec 2026 20:41:19 GMT`) and the blank line.
const DATE_AND_END: usize = 29 + 4;

/// Where hyper's answer to a malformed head starts in `buf`, when `buf`
/// ends with one; and which of [`ANSWERS`] it is.
fn hypers_answer(buf: &[u8]) -> Option<(usize, usize)> {
    // Cheap for every other write: a body rarely ends like a head, and a
    // head-only write fails at the status line's length check below.
    if !buf.ends_with(b" GMT\r\n\r\n") {
        return None;
    }
    ANSWERS.iter().enumerate().find_map(|(which, (line, _))| {
        let len = line.len() + HEADERS.len() + DATE_AND_END;
        let start = buf.len().checked_sub(len)?;
        let head = &buf[start..];
        (head.starts_with(line) && head[line.len()..].starts_with(HEADERS))
            .then_some((start, which))
    })
}

/// The answer in Mixpeek's shape, keeping hyper's status and date.
fn rewritten(held: &[u8], which: usize) -> Vec<u8> {
    let (line, message) = ANSWERS[which];
    let status =
        http::StatusCode::from_bytes(&line[9..12]).unwrap_or(http::StatusCode::BAD_REQUEST);
    let body = crate::error::error_body(status, "bad_request", message);
    let date = &held[held.len() - DATE_AND_END..held.len() - 4];
    let mut out = Vec::with_capacity(line.len() + 128 + body.len());
    out.extend_from_slice(line);
    out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\ndate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
    out
}

/// Bytes on their way out before anything else is written or read.
#[derive(Debug)]
struct Outgoing {
    bytes: Vec<u8>,
    written: usize,
}

pin_project_lite::pin_project! {
    /// `I`, with hyper's empty answers to malformed heads given a body.
    #[derive(Debug)]
    pub struct HeadErrorBodies<I> {
        #[pin]
        io: I,
        // A write that ended like hyper's answer, and which one.
        held: Option<(Vec<u8>, usize)>,
        out: Option<Outgoing>,
        // Something was written since the last read that brought bytes.
        wrote: bool,
    }
}

impl<I> HeadErrorBodies<I> {
    /// Wraps `io`.
    pub fn new(io: I) -> Self {
        Self {
            io,
            held: None,
            out: None,
            wrote: false,
        }
    }
}

/// Writes `out` to the end (`Ready(Ok)` once it is gone or there is none).
fn drain<I: AsyncWrite>(
    mut io: Pin<&mut I>,
    out: &mut Option<Outgoing>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while let Some(pending) = out {
        if pending.written == pending.bytes.len() {
            *out = None;
            break;
        }
        let n = ready!(io
            .as_mut()
            .poll_write(cx, &pending.bytes[pending.written..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        pending.written += n;
    }
    Poll::Ready(Ok(()))
}

impl<I: AsyncWrite> HeadErrorBodies<I> {
    /// Sends what is held as it was (it was not hyper's answer), and
    /// whatever else is on its way out.
    fn release(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Some((bytes, _)) = this.held.take() {
            *this.out = Some(Outgoing { bytes, written: 0 });
        }
        drain(this.io, this.out, cx)
    }
}

impl<I: AsyncRead + AsyncWrite> AsyncRead for HeadErrorBodies<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // hyper reads no more after its own answer: this was not one.
        if self.held.is_some() || self.out.is_some() {
            ready!(self.as_mut().release(cx))?;
        }
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            *this.wrote = false;
        }
        polled
    }
}

impl<I: AsyncWrite> AsyncWrite for HeadErrorBodies<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.held.is_some() || self.out.is_some() {
            ready!(self.as_mut().release(cx))?;
        }
        let this = self.project();
        // hyper's answer is the first thing written after the bad head was
        // read, and the whole write. A body's bytes come after their own
        // head, written after the request was read: never held.
        let candidate = if *this.wrote {
            None
        } else {
            hypers_answer(buf)
        };
        *this.wrote = true;
        match candidate {
            Some((0, which)) => {
                *this.held = Some((buf.to_vec(), which));
                Poll::Ready(Ok(buf.len()))
            }
            _ => this.io.poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let last = bufs.iter().rev().find(|b| !b.is_empty());
        let suspect = last.is_some_and(|b| b.ends_with(b" GMT\r\n\r\n"));
        if suspect || self.held.is_some() || self.out.is_some() {
            // One slice at a time, each looked at (a vectored write may
            // write less than all of them anyway).
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, first);
        }
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What is held stays held until hyper's next step tells what it is.
        let mut this = self.project();
        ready!(drain(this.io.as_mut(), this.out, cx))?;
        this.io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        // Flushed, then shut down without a read: hyper's own answer.
        if let Some((held, which)) = this.held.take() {
            *this.out = Some(Outgoing {
                bytes: rewritten(&held, which),
                written: 0,
            });
        }
        ready!(drain(this.io.as_mut(), this.out, cx))?;
        ready!(this.io.as_mut().poll_flush(cx))?;
        this.io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DATE: &str = "Mon, 07 Dec 2026 20:41:19 GMT";

    fn hyper_answer(status_line: &str) -> Vec<u8> {
        format!("{status_line}\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n")
            .into_bytes()
    }

    /// Everything the peer receives after `write` and a shutdown.
    async fn sent_then_shut(writes: &[&[u8]]) -> String {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let mut io = HeadErrorBodies::new(ours);
        for write in writes {
            io.write_all(write).await.unwrap();
            io.flush().await.unwrap();
        }
        io.shutdown().await.unwrap();
        let mut out = String::new();
        theirs.read_to_string(&mut out).await.unwrap();
        out
    }

    fn body_of(answer: &str) -> serde_json::Value {
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len(), "{answer}");
        serde_json::from_str(body).unwrap()
    }

    #[tokio::test]
    async fn hypers_empty_answers_get_mixpeeks_error_body() {
        for (line, status) in [
            ("HTTP/1.1 400 Bad Request", 400),
            ("HTTP/1.1 414 URI Too Long", 414),
            ("HTTP/1.1 431 Request Header Fields Too Large", 431),
        ] {
            let answer = sent_then_shut(&[&hyper_answer(line)]).await;
            assert!(answer.starts_with(&format!("{line}\r\n")), "{answer}");
            assert!(answer.contains("content-type: application/json\r\n"));
            assert!(answer.contains("connection: close\r\n"));
            assert!(answer.contains(&format!("date: {DATE}\r\n")));
            let body = body_of(&answer);
            assert_eq!(body["success"], false);
            assert_eq!(body["status"], status);
            assert_eq!(body["error"]["type"], "bad_request");
            assert!(body["error"]["message"].as_str().unwrap().len() > 10);
        }
    }

    #[tokio::test]
    async fn a_look_alike_after_other_bytes_is_never_rewritten() {
        // A response whose body ends in hyper's answer, then a shutdown
        // (Connection: close): its head came first, so nothing is held.
        let earlier = "HTTP/1.1 200 OK\r\nx-request-id: a\r\ncontent-length: 97\r\n\r\n";
        let mut write = earlier.as_bytes().to_vec();
        write.extend_from_slice(&hyper_answer("HTTP/1.1 400 Bad Request"));
        let answer = sent_then_shut(&[&write]).await;
        assert_eq!(answer.as_bytes(), &write[..]);
        // Head and body in two writes: the body is not the first write.
        let look_alike = hyper_answer("HTTP/1.1 400 Bad Request");
        let answer = sent_then_shut(&[earlier.as_bytes(), &look_alike]).await;
        assert_eq!(
            answer.as_bytes(),
            [earlier.as_bytes(), &look_alike[..]].concat()
        );
    }

    #[tokio::test]
    async fn look_alike_bytes_followed_by_a_read_or_a_write_go_out_as_they_were() {
        let look_alike = hyper_answer("HTTP/1.1 400 Bad Request");
        // (First writes on a fresh stream, so they are candidates.)
        // Followed by more bytes, then a shutdown of a normal response.
        let answer = sent_then_shut(&[&look_alike, b"tail"]).await;
        assert_eq!(answer.as_bytes(), [&look_alike[..], b"tail"].concat());

        // Followed by a read: hyper waiting for the next request.
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let mut io = HeadErrorBodies::new(ours);
        io.write_all(&look_alike).await.unwrap();
        io.flush().await.unwrap();
        theirs.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await.unwrap();
        let mut got = vec![0u8; look_alike.len()];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(got, look_alike);
    }

    #[tokio::test]
    async fn other_writes_pass_untouched() {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n");
        let body: &[u8] = b"{\"status\":\"ok\"}";
        let answer = sent_then_shut(&[head.as_bytes(), body]).await;
        assert_eq!(answer.as_bytes(), [head.as_bytes(), body].concat());
        assert_eq!(hypers_answer(head.as_bytes()), None);
    }
}
