//! `server.send_timeout_ms`: a client that accepts no bytes of a response
//! for that long loses its connection.
//!
//! A client that asks for a large body or a stream and never reads it
//! keeps its socket full; without a limit its response — and the upstream
//! slot and connection behind it — stays held for as long as the socket is
//! open. nginx's `send_timeout` and Envoy's stream idle timeout answer the
//! same: the time between two successful writes is bounded. Here the
//! connection's socket is wrapped: a write that cannot make progress arms
//! one timer, any progress disarms it, and when it fires the write fails,
//! so hyper ends the connection and drops the response (freeing its slot).
//! A stream that keeps flowing, however long, is never cut, and the timer
//! exists only while a socket is full: a fast client never pays for one.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

pin_project_lite::pin_project! {
    /// `I`, whose writes fail once none could progress for the timeout.
    #[derive(Debug)]
    pub struct SendTimeout<I> {
        #[pin]
        io: I,
        timeout: Duration,
        stalled: Option<Pin<Box<Sleep>>>,
    }
}

impl<I> SendTimeout<I> {
    /// Wraps `io`.
    pub fn new(io: I, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            stalled: None,
        }
    }
}

/// Disarms the timer on progress; on a stall, arms it (once) and fails the
/// write when it has fired.
fn watch<T>(
    polled: Poll<io::Result<T>>,
    stalled: &mut Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    if polled.is_ready() {
        *stalled = None;
        return polled;
    }
    let timer = stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
    match timer.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client accepted no bytes within server.send_timeout_ms",
        ))),
        Poll::Pending => Poll::Pending,
    }
}

impl<I: AsyncRead> AsyncRead for SendTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for SendTimeout<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write(cx, buf);
        watch(polled, this.stalled, *this.timeout, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write_vectored(cx, bufs);
        watch(polled, this.stalled, *this.timeout, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.io.poll_flush(cx);
        watch(polled, this.stalled, *this.timeout, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_that_cannot_progress_fails_after_the_timeout_and_progress_resets_it() {
        // A pipe that holds 8 bytes: the reader decides when writes progress.
        let (ours, mut theirs) = tokio::io::duplex(8);
        let mut io = SendTimeout::new(ours, Duration::from_millis(100));
        io.write_all(b"12345678").await.unwrap();
        // Full: a write waits; the reader frees room within the timeout.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(90)).await;
            let mut buf = [0u8; 8];
            theirs.read_exact(&mut buf).await.unwrap();
            theirs
        });
        io.write_all(b"abcdefgh").await.unwrap();
        let _theirs = reader.await.unwrap();
        // Nobody reads any more: the next stalled write fails at the timeout.
        let started = tokio::time::Instant::now();
        let error = io.write_all(b"more").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }
}
