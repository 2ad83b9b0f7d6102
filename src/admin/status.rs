//! `GET /_gateway/status`: a small self-contained HTML page for operators —
//! no external assets, no JavaScript.

use std::fmt::Write;
use std::time::Duration;

use http::{header, HeaderValue, Response};

use crate::body::{self, Body};
use crate::cache::CacheState;
use crate::telemetry::metrics::{ClientLabel, Metrics};

/// The figures the page shows, read at request time.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusFigures {
    /// Time since start.
    pub uptime: Duration,
    /// Cache hits.
    pub hits: u64,
    /// Cacheable requests that made the upstream call.
    pub misses: u64,
    /// Requests that shared another's upstream call.
    pub coalesced: u64,
    /// Entries in the cache.
    pub entries: u64,
    /// Weighted bytes in the cache.
    pub bytes: u64,
    /// Per client: name, requests, hits, 429s.
    pub clients: Vec<(String, u64, u64, u64)>,
    /// Whether upstream calls are paused (an upstream 429), and for how long.
    pub upstream_paused: Option<Duration>,
}

impl StatusFigures {
    /// Reads the figures now.
    pub fn read(
        uptime: Duration,
        cache: &CacheState,
        metrics: &Metrics,
        clients: impl IntoIterator<Item = ClientLabel>,
        upstream_paused: Option<Duration>,
    ) -> Self {
        let get = crate::cache::CacheMetrics::get;
        Self {
            uptime,
            hits: get(&cache.metrics.hits),
            misses: get(&cache.metrics.misses),
            coalesced: get(&cache.metrics.coalesced),
            entries: cache.store.entry_count(),
            bytes: cache.store.weighted_bytes(),
            clients: clients
                .into_iter()
                .map(|label| {
                    let (requests, hits, limited) = metrics.client_figures(&label);
                    (label.name().to_string(), requests, hits, limited)
                })
                .collect(),
            upstream_paused,
        }
    }

    /// Hits over cacheable requests (hits, misses, coalesced), 0..1.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses + self.coalesced;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }

    /// Requests answered without an upstream call of their own.
    pub fn saved(&self) -> u64 {
        self.hits + self.coalesced
    }

    /// The page as the response to `GET /_gateway/status`: never cached,
    /// and a content security policy that allows nothing but its own
    /// inline style.
    pub fn response(&self) -> Response<Body> {
        let mut response = Response::new(body::full(self.html()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            "content-security-policy",
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
        );
        response
    }

    /// The page.
    pub fn html(&self) -> String {
        let mut out = String::with_capacity(4096);
        let secs = self.uptime.as_secs();
        let _ = write!(
            out,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>mixpeek-gateway status</title>\
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}\
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}th{{background:#f4f4f4}}\
td:first-child,th:first-child{{text-align:left}}</style></head><body>\
<h1>mixpeek-gateway</h1><table>\
<tr><th>uptime</th><td id=\"uptime\">{}d {:02}:{:02}:{:02}</td></tr>\
<tr><th>cache hit ratio</th><td id=\"hit-ratio\">{:.1}%</td></tr>\
<tr><th>upstream calls saved</th><td id=\"saved\">{}</td></tr>\
<tr><th>cache entries</th><td id=\"entries\">{}</td></tr>\
<tr><th>cache bytes</th><td id=\"bytes\">{}</td></tr>\
<tr><th>upstream</th><td id=\"upstream\">{}</td></tr>\
</table><h2>Clients</h2><table><tr><th>client</th><th>requests</th><th>cache hits</th><th>429s</th></tr>",
            secs / 86_400,
            secs / 3600 % 24,
            secs / 60 % 60,
            secs % 60,
            self.hit_ratio() * 100.0,
            self.saved(),
            self.entries,
            self.bytes,
            match self.upstream_paused {
                Some(left) => format!("paused by upstream 429, {} s left", left.as_secs().max(1)),
                None => "serving".to_string(),
            },
        );
        for (name, requests, hits, limited) in &self.clients {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{requests}</td><td>{hits}</td><td>{limited}</td></tr>",
                escape(name)
            );
        }
        out.push_str("</table></body></html>");
        out
    }
}

/// HTML-escapes text (client names come from the config).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_shows_figures_and_escapes_names() {
        let figures = StatusFigures {
            uptime: Duration::from_secs(90_061),
            hits: 3,
            misses: 1,
            coalesced: 0,
            entries: 2,
            bytes: 2048,
            clients: vec![("<team>".into(), 10, 3, 1)],
            upstream_paused: None,
        };
        let html = figures.html();
        assert!(html.contains("1d 01:01:01"));
        assert!(html.contains("75.0%"));
        assert!(html.contains("&lt;team&gt;"));
        assert!(!html.contains("<team>"));
        assert!(!html.contains("<script"));
    }
}
