//! Small load tools for the benchmark scripts in benches/load/.
//!
//! ```text
//! loadgen burst URL N [KEY] [POST_BODY]   N concurrent requests, each on its own
//!                                         connection; prints status counts and
//!                                         latency p50/p99/max in ms as JSON
//! loadgen fill BASE COUNT CONCURRENCY KEY GET BASE/v1/retrievers/executions/exec_fill_{i}
//!                                         for i < COUNT; prints bodies' total bytes
//! loadgen pair DIRECT DIRECT_KEY NAMESPACE VIA VIA_KEY N
//!                                         one request at a time, alternating
//!                                         DIRECT (the upstream, real key and
//!                                         namespace) and VIA (the gateway),
//!                                         N each on one keep-alive connection
//!                                         each; prints both medians and p99s in
//!                                         µs as JSON. Alternating makes both
//!                                         see the same machine noise.
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn request(url: &str, key: &str, post: Option<&str>) -> Request<Full<Bytes>> {
    let builder = Request::builder()
        .uri(url)
        .header("authorization", format!("Bearer {key}"));
    match post {
        Some(body) => builder
            .method("POST")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string()))),
        None => builder.body(Full::default()),
    }
    .expect("valid request")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn burst(url: String, n: usize, key: String, post: Option<String>) {
    // One connection per request: a fresh client each, all started together.
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (url, key, post, start) = (url.clone(), key.clone(), post.clone(), start.clone());
            tokio::spawn(async move {
                let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
                start.wait().await;
                let began = Instant::now();
                let result = tokio::time::timeout(
                    Duration::from_secs(30),
                    client.request(request(&url, &key, post.as_deref())),
                )
                .await;
                let status = match result {
                    Ok(Ok(response)) => {
                        let status = response.status().as_u16();
                        let _ = response.into_body().collect().await;
                        status
                    }
                    _ => 0,
                };
                (status, began.elapsed().as_secs_f64() * 1000.0)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(n);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for task in tasks {
        let (status, ms) = task.await.expect("task");
        *statuses.entry(status).or_default() += 1;
        latencies.push(ms);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "{{\"n\":{n},\"statuses\":{:?},\"p50_ms\":{:.1},\"p99_ms\":{:.1},\"max_ms\":{:.1}}}",
        statuses
            .iter()
            .map(|(s, c)| format!("{s}:{c}"))
            .collect::<Vec<_>>()
            .join(","),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
}

async fn fill(base: String, count: usize, concurrency: usize, key: String) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, base, key) = (client.clone(), base.clone(), key.clone());
            let (next, bytes, failures) = (next.clone(), bytes.clone(), failures.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let url = format!("{base}/v1/retrievers/executions/exec_fill_{i}");
                    match client.request(request(&url, &key, None)).await {
                        Ok(response) if response.status() == 200 => {
                            let body = response.into_body().collect().await.map(|b| b.to_bytes());
                            bytes.fetch_add(body.map_or(0, |b| b.len()) as u64, Ordering::Relaxed);
                        }
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    println!(
        "{{\"count\":{count},\"body_bytes\":{},\"failures\":{}}}",
        bytes.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );
}

async fn pair(
    direct: String,
    direct_key: String,
    namespace: String,
    via: String,
    via_key: String,
    n: usize,
) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 100 {
        for (url, key, times) in [(&direct, &direct_key, &mut a), (&via, &via_key, &mut b)] {
            let mut request = request(url, key, None);
            request
                .headers_mut()
                .insert("x-namespace", namespace.parse().expect("namespace"));
            let began = Instant::now();
            let response = client.request(request).await.expect("response");
            let status = response.status();
            response.into_body().collect().await.expect("body");
            assert!(status.is_success(), "{url}: {status}");
            // The first 100 of each only warm the connections.
            if i >= 100 {
                times.push(began.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    println!(
        "{{\"n\":{n},\"direct_p50_us\":{:.0},\"direct_p99_us\":{:.0},\"via_p50_us\":{:.0},\"via_p99_us\":{:.0},\"added_p50_us\":{:.0}}}",
        percentile(&a, 50.0),
        percentile(&a, 99.0),
        percentile(&b, 50.0),
        percentile(&b, 99.0),
        percentile(&b, 50.0) - percentile(&a, 50.0)
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "burst" => {
            let n = arg(2).parse().expect("N");
            let post = args.get(4).cloned();
            burst(arg(1), n, arg(3), post).await;
        }
        "fill" => {
            let count = arg(2).parse().expect("COUNT");
            let concurrency = arg(3).parse().expect("CONCURRENCY");
            fill(arg(1), count, concurrency, arg(4)).await;
        }
        "pair" => {
            let n = arg(6).parse().expect("N");
            pair(arg(1), arg(2), arg(3), arg(4), arg(5), n).await;
        }
        _ => {
            eprintln!("usage: loadgen burst URL N [KEY] [POST_BODY] | loadgen fill BASE COUNT CONCURRENCY KEY | loadgen pair DIRECT DIRECT_KEY NAMESPACE VIA VIA_KEY N");
            std::process::exit(2);
        }
    }
}
