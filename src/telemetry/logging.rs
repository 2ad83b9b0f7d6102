//! Logging setup: `tracing` to standard error, filtered by `RUST_LOG`
//! (default `info`), as text or one JSON object per line (`[log] format`).
//! The access log is the `access` target: one line per request.
//!
//! Lines are written by a thread of their own, not by the request that
//! logs them: a write to standard error per request is a system call (and
//! a wait, when stderr is a slow pipe) on the request path. The request
//! hands its formatted line to a bounded queue ([`BUFFERED_LINES`]) and
//! goes on; when the queue is full — the writer cannot keep up — the line
//! is dropped and counted (`mixpeek_gateway_log_lines_dropped_total`)
//! rather than slowing every request down, as tracing-appender's lossy
//! mode and nginx's buffered access log do. [`LogGuard`] writes out what is
//! queued when the process ends.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines that may wait for the writer thread; past that, lines are dropped.
pub const BUFFERED_LINES: usize = 16 * 1024;

/// Lines dropped by the process's log so far.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines the log dropped because its writer could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Installs the global subscriber; later calls install nothing. Keep the
/// guard until the process ends: dropping it writes out the queued lines.
#[must_use = "dropping the guard is the end of the process's log"]
pub fn init(format: LogFormat) -> LogGuard {
    let (writer, guard) = non_blocking(BUFFERED_LINES, io::stderr(), None);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    guard
}

/// What the writer thread is handed.
#[derive(Debug)]
enum Queued {
    /// A formatted line.
    Line(Vec<u8>),
    /// Everything before has been written and flushed: say so.
    Flushed(SyncSender<()>),
}

/// A writer that queues each line for the writer thread (see the module
/// docs).
#[derive(Clone, Debug)]
pub struct NonBlocking {
    lines: SyncSender<Queued>,
    /// Where drops are counted besides the process-wide count.
    dropped: Option<Arc<AtomicU64>>,
}

/// Writes out the queued lines when dropped (the process is ending).
#[derive(Debug)]
pub struct LogGuard {
    lines: SyncSender<Queued>,
}

/// Longest a [`LogGuard`] waits for the queued lines to be written.
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A [`NonBlocking`] writer queueing up to `capacity` lines for a thread
/// that writes them to `sink`; drops are also counted in `dropped`.
pub fn non_blocking(
    capacity: usize,
    sink: impl Write + Send + 'static,
    dropped: Option<Arc<AtomicU64>>,
) -> (NonBlocking, LogGuard) {
    let (lines, queue) = sync_channel(capacity);
    // Without a thread the queue's receiver is gone, and every line is
    // written where it is logged instead.
    let _ = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_out(queue, sink));
    let writer = NonBlocking {
        lines: lines.clone(),
        dropped,
    };
    (writer, LogGuard { lines })
}

/// The writer thread: everything queued, flushed whenever the queue runs
/// empty.
fn write_out(queue: Receiver<Queued>, sink: impl Write) {
    let mut out = io::BufWriter::new(sink);
    let mut next = queue.recv();
    while let Ok(queued) = next {
        match queued {
            Queued::Line(line) => {
                let _ = out.write_all(&line);
            }
            Queued::Flushed(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
        next = match queue.try_recv() {
            Ok(queued) => Ok(queued),
            Err(_) => {
                let _ = out.flush();
                queue.recv()
            }
        };
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let (done, flushed) = sync_channel(1);
        if self.lines.send(Queued::Flushed(done)).is_ok() {
            let _ = flushed.recv_timeout(FLUSH_WAIT);
        }
    }
}

impl Write for &NonBlocking {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        match self.lines.try_send(Queued::Line(line.to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                if let Some(dropped) = &self.dropped {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The writer thread is gone: write it here rather than lose it.
            Err(TrySendError::Disconnected(_)) => io::stderr().write_all(line)?,
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = &'a NonBlocking;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::Receiver;
    use std::sync::Mutex;

    use super::*;

    /// A sink that keeps what it is given; its first write reports itself
    /// and then waits for `gate` (a writer that cannot keep up).
    struct Sink {
        kept: Arc<Mutex<Vec<u8>>>,
        started: Option<SyncSender<()>>,
        gate: Option<Receiver<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(started) = self.started.take() {
                let _ = started.send(());
            }
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            self.kept.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn log(writer: &NonBlocking, line: &str) {
        writer.make_writer().write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn lines_are_written_in_order_by_the_thread_and_the_guard_flushes_them() {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink {
            kept: kept.clone(),
            started: None,
            gate: None,
        };
        let (writer, guard) = non_blocking(1024, sink, None);
        for i in 0..100 {
            log(&writer, &format!("line {i}\n"));
        }
        drop(guard);
        let text = String::from_utf8(kept.lock().unwrap().clone()).unwrap();
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn a_writer_that_cannot_keep_up_costs_dropped_lines_not_waits() {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let (started, has_started) = sync_channel(1);
        let (release, gate) = sync_channel(1);
        let sink = Sink {
            kept: kept.clone(),
            started: Some(started),
            gate: Some(gate),
        };
        let dropped = Arc::new(AtomicU64::new(0));
        let (writer, guard) = non_blocking(1, sink, Some(dropped.clone()));
        // The thread takes the first line and is stuck writing it.
        log(&writer, "first\n");
        has_started.recv().unwrap();
        // One line fits the queue; the next two are dropped at once.
        log(&writer, "second\n");
        log(&writer, "third\n");
        log(&writer, "fourth\n");
        assert_eq!(dropped.load(Ordering::Relaxed), 2);
        assert!(dropped_lines() >= 2);
        release.send(()).unwrap();
        drop(guard);
        assert_eq!(kept.lock().unwrap().as_slice(), b"first\nsecond\n");
    }
}
