//! The access log: one line per request, off the request's path.
//!
//! Through `tracing`'s formatter every line cost a cache hit more than the
//! rest of its work (field visitors, a `String` per line, one `write(2)` to
//! standard error per request; benches/RESULTS.md). Here a request formats
//! its line by hand into its thread's buffer — a few hundred bytes
//! appended under a lock no other request takes — and goes on. One writer
//! thread (`access-log`) swaps each buffer for an empty one every
//! [`FLUSH_INTERVAL`], or as soon as one holds [`WAKE_AT`] bytes, and writes
//! it to standard error in one call: nginx's `access_log … buffer=`
//! `flush=`, per worker thread.
//!
//! A buffer never grows past [`MAX_BUFFER`]: when the writer cannot keep up
//! (standard error a pipe nobody drains) lines are dropped, never waited
//! for, and counted ([`dropped_lines`], exported as
//! `mixpeek_gateway_log_lines_dropped_total`). [`AccessLog`]'s guard, held
//! by `main`, writes out what is buffered on exit.
//!
//! The line is the one `tracing`'s formatter wrote for the `access`
//! target, without its terminal colours: text
//! `<time>  INFO access: request request_id="…" client="…" … completed=true`
//! or one JSON object (`"target":"access"`). Until [`install`] runs (the
//! library in tests, embedders) lines go through `tracing` as before.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// Longest a line waits in its buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// A buffer this full wakes the writer at once.
pub const WAKE_AT: usize = 64 * 1024;

/// A buffer this full drops further lines until the writer has taken it.
pub const MAX_BUFFER: usize = 1024 * 1024;

/// What one access line says.
#[derive(Debug, Clone, Copy)]
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub client: &'a str,
    pub method: &'a str,
    pub route: &'static str,
    pub status: u16,
    pub cache: &'static str,
    pub upstream_status: u16,
    pub upstream: Duration,
    pub latency: Duration,
    pub completed: bool,
}

/// Writes `record`'s line: into this thread's buffer once [`install`] has
/// run (nothing when `RUST_LOG` leaves the `access` target out), else
/// through `tracing`.
pub fn log(record: &AccessRecord<'_>) {
    match SINK.get() {
        Some(sink) => {
            if sink.enabled {
                sink.append(record);
            }
        }
        None => log_through_tracing(record),
    }
}

fn log_through_tracing(r: &AccessRecord<'_>) {
    tracing::info!(
        target: "access",
        request_id = r.request_id,
        client = r.client,
        method = r.method,
        route = r.route,
        status = r.status,
        cache = r.cache,
        upstream_status = r.upstream_status,
        upstream_ms = r.upstream.as_secs_f64() * 1000.0,
        latency_ms = r.latency.as_secs_f64() * 1000.0,
        completed = r.completed,
        "request"
    );
}

/// Access lines dropped so far because a buffer was full.
pub fn dropped_lines() -> u64 {
    SINK.get()
        .map_or(0, |sink| sink.dropped.load(Ordering::Relaxed))
}

static SINK: OnceLock<Arc<Sink>> = OnceLock::new();

thread_local! {
    /// This thread's buffer, registered with the sink on its first line.
    static LOCAL: RefCell<Option<Arc<Slot>>> = const { RefCell::new(None) };
}

/// Where lines go once installed.
#[derive(Debug)]
struct Sink {
    format: LogFormat,
    /// `RUST_LOG` enables the `access` target (read once, at install).
    enabled: bool,
    slots: Mutex<Vec<Arc<Slot>>>,
    dropped: AtomicU64,
    writer: OnceLock<std::thread::Thread>,
    stop: AtomicBool,
}

/// One thread's buffer.
#[derive(Debug, Default)]
struct Slot {
    buffer: Mutex<Buffer>,
}

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    /// The second `stamp` holds, and `YYYY-MM-DDTHH:MM:SS.` for it.
    second: u64,
    stamp: [u8; 20],
}

impl Sink {
    fn append(&self, record: &AccessRecord<'_>) {
        let crossed = LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let slot = local.get_or_insert_with(|| self.register());
            let mut buffer = slot.buffer.lock().unwrap_or_else(PoisonError::into_inner);
            if buffer.bytes.len() >= MAX_BUFFER {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            let before = buffer.bytes.len();
            buffer.push_line(self.format, record, SystemTime::now());
            before < WAKE_AT && buffer.bytes.len() >= WAKE_AT
        });
        if crossed {
            if let Some(writer) = self.writer.get() {
                writer.unpark();
            }
        }
    }

    fn register(&self) -> Arc<Slot> {
        let slot = Arc::new(Slot::default());
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot.clone());
        slot
    }

    /// Writes every buffer out; forgets those of threads that have ended.
    fn sweep(&self, spare: &mut Vec<u8>, out: &mut impl Write) {
        let slots: Vec<Arc<Slot>> = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.retain(|slot| {
                Arc::strong_count(slot) > 1
                    || !slot
                        .buffer
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .bytes
                        .is_empty()
            });
            slots.clone()
        };
        for slot in slots {
            {
                let mut buffer = slot.buffer.lock().unwrap_or_else(PoisonError::into_inner);
                if buffer.bytes.is_empty() {
                    continue;
                }
                std::mem::swap(&mut buffer.bytes, spare);
            }
            // A failed write (standard error closed) loses these lines, as
            // it would have lost them written one by one.
            let _ = out.write_all(spare);
            let _ = out.flush();
            spare.clear();
            // Keep the spare from holding a burst's worth for ever.
            spare.shrink_to(WAKE_AT * 2);
        }
    }

    fn run_writer(&self) {
        let mut spare = Vec::with_capacity(WAKE_AT * 2);
        loop {
            std::thread::park_timeout(FLUSH_INTERVAL);
            let stopping = self.stop.load(Ordering::Acquire);
            // Standard error is locked per write inside, never across the
            // sweep: other log lines wait for one buffer at most.
            self.sweep(&mut spare, &mut std::io::stderr());
            if stopping {
                return;
            }
        }
    }
}

/// Held by `main`: on drop the writer writes what is buffered and ends.
#[derive(Debug)]
pub struct AccessLog {
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        if let Some(sink) = SINK.get() {
            sink.stop.store(true, Ordering::Release);
        }
        writer.thread().unpark();
        let _ = writer.join();
    }
}

/// Sends access lines through per-thread buffers and a writer thread from
/// now on, in `format`, when `enabled` (`RUST_LOG` includes the `access`
/// target at `info`). Only the first call installs; later ones return a
/// guard that does nothing.
pub fn install(format: LogFormat, enabled: bool) -> AccessLog {
    let sink = Arc::new(Sink {
        format,
        enabled,
        slots: Mutex::new(Vec::new()),
        dropped: AtomicU64::new(0),
        writer: OnceLock::new(),
        stop: AtomicBool::new(false),
    });
    if SINK.set(sink.clone()).is_err() || !enabled {
        return AccessLog { writer: None };
    }
    let spawned = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || sink.run_writer());
    match spawned {
        Ok(writer) => {
            if let Some(sink) = SINK.get() {
                let _ = sink.writer.set(writer.thread().clone());
            }
            AccessLog {
                writer: Some(writer),
            }
        }
        Err(error) => {
            // No writer: lines would only pile up, so none are kept.
            tracing::error!(%error, "cannot start the access-log writer; access lines are dropped");
            AccessLog { writer: None }
        }
    }
}

impl Buffer {
    fn push_line(&mut self, format: LogFormat, r: &AccessRecord<'_>, now: SystemTime) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.second != since.as_secs() || self.stamp[0] == 0 {
            self.second = since.as_secs();
            self.stamp = civil_stamp(self.second);
        }
        let micros = since.subsec_micros();
        let out = &mut self.bytes;
        let json = matches!(format, LogFormat::Json);
        // One field order for both formats; only the punctuation differs.
        let key = |out: &mut Vec<u8>, name: &[u8]| {
            if json {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name);
                out.extend_from_slice(b"\":");
            } else {
                out.push(b' ');
                out.extend_from_slice(name);
                out.push(b'=');
            }
        };
        if json {
            out.extend_from_slice(b"{\"timestamp\":\"");
        }
        out.extend_from_slice(&self.stamp);
        push_padded(out, u64::from(micros), 6);
        out.extend_from_slice(if json {
            b"Z\",\"level\":\"INFO\",\"message\":\"request\""
        } else {
            b"Z  INFO access: request"
        });
        key(out, b"request_id");
        push_quoted(out, r.request_id);
        key(out, b"client");
        push_quoted(out, r.client);
        key(out, b"method");
        push_quoted(out, r.method);
        key(out, b"route");
        push_quoted(out, r.route);
        key(out, b"status");
        push_u64(out, u64::from(r.status));
        key(out, b"cache");
        push_quoted(out, r.cache);
        key(out, b"upstream_status");
        push_u64(out, u64::from(r.upstream_status));
        key(out, b"upstream_ms");
        push_millis(out, r.upstream);
        key(out, b"latency_ms");
        push_millis(out, r.latency);
        key(out, b"completed");
        out.extend_from_slice(if r.completed { b"true" } else { b"false" });
        out.extend_from_slice(if json {
            b",\"target\":\"access\"}\n"
        } else {
            b"\n"
        });
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` (UTC) of a Unix second.
fn civil_stamp(unix_second: u64) -> [u8; 20] {
    let days = (unix_second / 86_400) as i64;
    let of_day = unix_second % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = Vec::with_capacity(20);
    push_padded(&mut out, year.clamp(0, 9999) as u64, 4);
    out.push(b'-');
    push_padded(&mut out, month as u64, 2);
    out.push(b'-');
    push_padded(&mut out, day as u64, 2);
    out.push(b'T');
    push_padded(&mut out, of_day / 3600, 2);
    out.push(b':');
    push_padded(&mut out, of_day / 60 % 60, 2);
    out.push(b':');
    push_padded(&mut out, of_day % 60, 2);
    out.push(b'.');
    let mut stamp = [0u8; 20];
    stamp.copy_from_slice(&out);
    stamp
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `n` with leading zeros to `width` digits.
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut rest = n;
    for i in (0..width.min(20)).rev() {
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    if rest > 0 {
        push_u64(out, n);
    } else {
        out.extend_from_slice(&digits[..width.min(20)]);
    }
}

/// Milliseconds to the microsecond: `3.825`, `0.000`.
fn push_millis(out: &mut Vec<u8>, duration: Duration) {
    let micros = duration.as_micros().min(u128::from(u64::MAX)) as u64;
    push_u64(out, micros / 1000);
    out.push(b'.');
    push_padded(out, micros % 1000, 3);
}

/// A JSON string (also what the text format shows): quotes, backslashes
/// and control characters escaped.
fn push_quoted(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    // Nearly always nothing to escape (ids, names, methods): one pass the
    // compiler vectorises (no early exit), then one copy.
    let plain = !bytes.iter().fold(false, |odd, &b| {
        odd | (b < 0x20) | (b == b'"') | (b == b'\\') | (b == 0x7f)
    });
    if plain {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escaped.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escaped);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord<'static> {
        AccessRecord {
            request_id: "abc123",
            client: "search-\"team\"\n",
            method: "GET",
            route: "detail",
            status: 200,
            cache: "HIT",
            upstream_status: 0,
            upstream: Duration::ZERO,
            latency: Duration::from_micros(3825),
            completed: true,
        }
    }

    fn line(format: LogFormat, at: SystemTime) -> String {
        let mut buffer = Buffer::default();
        buffer.push_line(format, &record(), at);
        String::from_utf8(buffer.bytes).unwrap()
    }

    #[test]
    fn text_lines_read_as_tracings_did_without_colours() {
        // 2026-12-07T20:44:59.592807Z
        let at = UNIX_EPOCH + Duration::from_micros(1_796_676_299_592_807);
        assert_eq!(
            line(LogFormat::Text, at),
            "2026-12-07T20:44:59.592807Z  INFO access: request request_id=\"abc123\" \
             client=\"search-\\\"team\\\"\\n\" method=\"GET\" route=\"detail\" status=200 \
             cache=\"HIT\" upstream_status=0 upstream_ms=0.000 latency_ms=3.825 completed=true\n"
        );
    }

    #[test]
    fn json_lines_are_one_object_each_with_tracings_fields() {
        let at = UNIX_EPOCH + Duration::from_micros(1_796_676_299_000_001);
        let text = line(LogFormat::Json, at);
        assert!(text.ends_with("}\n"));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["timestamp"], "2026-12-07T20:44:59.000001Z");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["target"], "access");
        assert_eq!(value["message"], "request");
        assert_eq!(value["client"], "search-\"team\"\n");
        assert_eq!(value["status"], 200);
        assert_eq!(value["latency_ms"], 3.825);
        assert_eq!(value["completed"], true);
    }

    #[test]
    fn civil_dates_match_known_days() {
        let stamp = |s| String::from_utf8(civil_stamp(s).to_vec()).unwrap();
        assert_eq!(stamp(0), "1970-01-01T00:00:00.");
        assert_eq!(stamp(951_782_400), "2000-02-29T00:00:00.");
        assert_eq!(stamp(1_798_761_599), "2026-12-31T23:59:59.");
        assert_eq!(stamp(4_107_542_400), "2100-03-01T00:00:00.");
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = Vec::new();
        push_quoted(&mut out, "a\u{1}b\\");
        assert_eq!(out, b"\"a\\u0001b\\\\\"");
    }

    #[test]
    fn a_sweep_writes_each_threads_lines_in_order_and_a_full_buffer_drops() {
        let sink = Sink {
            format: LogFormat::Text,
            enabled: true,
            slots: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            writer: OnceLock::new(),
            stop: AtomicBool::new(false),
        };
        let slot = sink.register();
        let at = SystemTime::now();
        for status in [200, 201, 202] {
            let r = AccessRecord { status, ..record() };
            slot.buffer.lock().unwrap().push_line(sink.format, &r, at);
        }
        let mut out = Vec::new();
        sink.sweep(&mut Vec::new(), &mut out);
        let text = String::from_utf8(out).unwrap();
        let statuses: Vec<&str> = text
            .lines()
            .map(|l| {
                l.split(" status=")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(statuses, ["200", "201", "202"]);
        assert!(slot.buffer.lock().unwrap().bytes.is_empty());

        // Full: the next line through `append` on this thread is dropped.
        let sink = Arc::new(sink);
        sink.append(&record());
        let own = sink.slots.lock().unwrap().last().unwrap().clone();
        own.buffer.lock().unwrap().bytes.resize(MAX_BUFFER, b'x');
        sink.append(&record());
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(own.buffer.lock().unwrap().bytes.len(), MAX_BUFFER);
    }
}
