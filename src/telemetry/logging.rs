//! Logging setup: `tracing` to standard error, filtered by `RUST_LOG`
//! (default `info`), as text or one JSON object per line (`[log] format`).
//! The access log is the `access` target: one line per request, written
//! through [`crate::telemetry::access`]'s buffers rather than `tracing`'s
//! formatter.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::telemetry::access::{self, AccessLog};

/// Installs the global subscriber and the access log's writer; later calls
/// do nothing. Hold the guard until the process ends: dropping it writes
/// out the buffered access lines.
pub fn init(format: LogFormat) -> AccessLog {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours for a terminal only: a file or a log shipper gets text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    let enabled = tracing::enabled!(target: "access", tracing::Level::INFO);
    access::install(format, enabled)
}
