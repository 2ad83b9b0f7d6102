//! Per-entry memory of the cache store alone (no server, no fill traffic):
//! RSS growth after inserting N detail entries of a given body size.
//!
//! `cargo run --release --example store_mem -- 100000 916`

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use mixpeek_gateway::cache::store::{Entry, Store};
use mixpeek_gateway::cache::CacheKey;
use std::time::Duration;
// The gateway's allocator, so the figures are the server's.
#[path = "../src/server/alloc.rs"]
mod alloc;
#[global_allocator]
static GLOBAL: alloc::MiMalloc = alloc::MiMalloc;
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let size: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(916);
    let store = Store::new(u32::MAX as u64, Duration::from_secs(86400), None);
    let ns: std::sync::Arc<str> = "ns_bench".into();
    let before = rss();
    for i in 0..n {
        let key = CacheKey::detail(ns.clone(), format!("/v1/retrievers/executions/exec_{i:08}"));
        let ct = Some(HeaderValue::from_static("application/json"));
        let body = Bytes::copy_from_slice(&vec![b'x'; size]);
        store.insert(key, Entry::new(StatusCode::OK, ct, body));
    }
    store.run_pending_tasks();
    let after = rss();
    println!(
        "n={n} size={size} rss_delta={} KiB per_entry={} bytes overhead_per_entry={}",
        after - before,
        (after - before) * 1024 / n as u64,
        (after - before) * 1024 / n as u64 - size as u64
    );
}
