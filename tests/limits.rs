//! Rate limits and the upstream quota guard, end to end: the real gateway
//! in front of the simulated API (or a raw socket), every claim checked by
//! counting calls where they arrive.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use mixpeek_gateway::config::RateLimit;
use mixpeek_gateway::limits::auth_failures::PeerKey;
use mixpeek_gateway::limits::{LimitMetrics, Reason};
use mixpeek_gateway::server;
use mixpeek_gateway::sim::SimConfig;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const DETAIL: &str = "GET /v1/retrievers/executions/{id}";
const OTHER: &str = "other";

fn rate_limit(requests_per_second: u32, burst: u32) -> Option<RateLimit> {
    Some(RateLimit {
        requests_per_second: NonZeroU32::new(requests_per_second).unwrap(),
        burst: NonZeroU32::new(burst).unwrap(),
    })
}

/// The search team limited to `rps`/`burst`; the ads team unlimited.
async fn search_limited(rps: u32, burst: u32) -> Harness {
    Harness::with_config(SimConfig::new(REAL_KEY), "", "", |config| {
        config.clients[0].rate_limit = rate_limit(rps, burst);
    })
    .await
}

fn retry_after(reply: &Reply) -> u64 {
    reply
        .header("retry-after")
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After in whole seconds: {:?}", reply.headers))
}

fn assert_rate_limit_headers(reply: &Reply, limit: &str) {
    assert!(
        reply
            .header("ratelimit-policy")
            .starts_with("\"client\";q="),
        "{:?}",
        reply.headers
    );
    assert!(reply.header("ratelimit").starts_with("\"client\";r="));
    assert_eq!(reply.header("x-ratelimit-limit"), limit);
    assert!(reply.header("x-ratelimit-remaining").parse::<u32>().is_ok());
    assert!(reply.header("x-ratelimit-reset").parse::<u64>().is_ok());
}

#[tokio::test]
async fn client_over_its_limit_gets_429s_while_another_client_is_served() {
    let h = search_limited(5, 5).await;
    h.client.warm(60).await;
    let path = "/v1/collections";
    let search = (0..30).map(|_| h.client.get(path, SEARCH_KEY));
    let ads = (0..30).map(|_| h.client.get(path, ADS_KEY));
    let (search, ads) = tokio::join!(join_all(search), join_all(ads));

    let limited: Vec<&Reply> = search.iter().filter(|r| r.status == 429).collect();
    let served = search.iter().filter(|r| r.status == 200).count();
    assert!(limited.len() >= 20, "only {} of 30 limited", limited.len());
    assert_eq!(limited.len() + served, 30);
    for reply in &search {
        assert_rate_limit_headers(reply, "5");
    }
    for reply in &limited {
        reply.assert_error(429, "rate_limited");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains("search-team"), "{message}");
        assert!(retry_after(reply) >= 1);
        assert_eq!(reply.header("x-ratelimit-remaining"), "0");
    }
    // The other team, at the same moment: every request served, unlimited.
    for reply in &ads {
        assert_eq!(reply.status, 200);
        assert!(reply.headers.get("x-ratelimit-limit").is_none());
    }
    // Nothing refused went upstream.
    assert_eq!(h.sim.count(OTHER), served as u64 + 30);
    let metrics = &h.gateway.state.limits.metrics;
    assert_eq!(
        metrics.limited(Some("search-team"), Reason::ClientLimit),
        limited.len() as u64
    );
    assert_eq!(metrics.limited(Some("ads-team"), Reason::ClientLimit), 0);

    // After Retry-After the client is served again.
    let wait = limited.iter().map(|r| retry_after(r)).max().unwrap();
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let again = h.client.get(path, SEARCH_KEY).await;
    assert_eq!(again.status, 200);
    assert_rate_limit_headers(&again, "5");
}

#[tokio::test]
async fn cache_hits_count_against_the_client_limit() {
    let h = search_limited(1, 3).await;
    let path = "/v1/retrievers/executions/exec_1";
    assert_eq!(
        h.client.get(path, SEARCH_KEY).await.header("x-cache"),
        "MISS"
    );
    assert_eq!(
        h.client.get(path, SEARCH_KEY).await.header("x-cache"),
        "HIT"
    );
    assert_eq!(
        h.client.get(path, SEARCH_KEY).await.header("x-cache"),
        "HIT"
    );
    let limited = h.client.get(path, SEARCH_KEY).await;
    limited.assert_error(429, "rate_limited");
    assert_eq!(h.sim.count(DETAIL), 1);
    // Unauthenticated traffic creates no limiter state.
    for _ in 0..5 {
        assert_eq!(h.client.get(path, "not-a-key").await.status, 401);
    }
    assert_eq!(h.gateway.state.limits.clients.load().len(), 1);
}

#[tokio::test]
async fn auth_failure_guard_trips_and_its_memory_stays_bounded() {
    let h = Harness::with(SimConfig::new(REAL_KEY), "auth_failures_per_minute = 3", "").await;
    let path = "/v1/collections";
    for _ in 0..3 {
        h.client
            .get(path, "wrong-key")
            .await
            .assert_error(401, "unauthorized");
    }
    // Now even a valid key from this address is refused, unchecked.
    let refused = h.client.get(path, SEARCH_KEY).await;
    refused.assert_error(429, "rate_limited");
    assert!((1..=60).contains(&retry_after(&refused)));
    assert_eq!(h.sim.total(), 0);
    // The gateway's own endpoints stay reachable.
    assert_eq!(h.client.get("/_gateway/health", "").await.status, 200);
    let limits = &h.gateway.state.limits;
    assert_eq!(limits.metrics.limited(None, Reason::AuthFailures), 1);

    // A flood of distinct addresses cannot grow the guard without bound.
    let failures = &limits.auth_failures;
    for n in 0..100_000u32 {
        failures.record_failure(PeerKey::from(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))));
    }
    assert!(failures.len() <= failures.capacity());
    assert!(failures.capacity() < 100_000);
}

#[tokio::test]
async fn upstream_rate_limit_caps_calls_while_cache_hits_are_unaffected() {
    let h = Harness::with(
        SimConfig::new(REAL_KEY),
        "",
        "max_requests_per_second = 2\nqueue_timeout_ms = 500",
    )
    .await;
    h.client.warm(21).await;
    let started = Instant::now();
    let cached = "/v1/retrievers/executions/exec_1";
    assert_eq!(
        h.client.get(cached, SEARCH_KEY).await.header("x-cache"),
        "MISS"
    );

    let run_for = Duration::from_secs(3);
    let callers = (0..20).map(|task| {
        let client = h.client.clone();
        tokio::spawn(async move {
            let (mut ok, mut limited) = (0u64, 0u64);
            let mut n = 0;
            while started.elapsed() < run_for {
                n += 1;
                let reply = client
                    .get(&format!("/v1/collections/c{task}_{n}"), SEARCH_KEY)
                    .await;
                match reply.status.as_u16() {
                    200 => ok += 1,
                    429 => {
                        reply.assert_error(429, "rate_limited");
                        assert!(retry_after(&reply) >= 1);
                        limited += 1;
                    }
                    other => panic!("unexpected {other}"),
                }
            }
            (ok, limited)
        })
    });
    let hits = {
        let client = h.client.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            let mut hits = 0;
            while started.elapsed() < run_for {
                ticks.tick().await;
                let reply = client.get(cached, SEARCH_KEY).await;
                assert_eq!(reply.status, 200);
                assert_eq!(reply.header("x-cache"), "HIT");
                hits += 1;
            }
            hits
        })
    };
    let results: Vec<(u64, u64)> = join_all(callers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let hits = hits.await.unwrap();
    let elapsed = started.elapsed();

    let ok: u64 = results.iter().map(|r| r.0).sum();
    let limited: u64 = results.iter().map(|r| r.1).sum();
    // GCRA at 2/s with a burst of 2, over the whole run (the warm-up call
    // included): never more than 2 + 2 per elapsed second.
    let allowed = 2 + (2.0 * elapsed.as_secs_f64()).ceil() as u64;
    let upstream_calls = h.sim.count(OTHER) + h.sim.count(DETAIL);
    assert!(
        upstream_calls <= allowed,
        "{upstream_calls} upstream calls in {elapsed:?}, GCRA allows {allowed}"
    );
    assert!(upstream_calls >= 4, "the guard let too little through");
    assert_eq!(h.sim.count(OTHER), ok);
    assert!(limited > 0);
    // Cache hits were neither refused nor counted as upstream calls.
    assert!(hits >= 10);
    assert_eq!(h.sim.count(DETAIL), 1);
    let metrics = &h.gateway.state.limits.metrics;
    assert_eq!(LimitMetrics::get(&metrics.admitted), upstream_calls);
    assert_eq!(
        metrics.limited(Some("search-team"), Reason::UpstreamGuard),
        limited
    );
    assert!(LimitMetrics::get(&metrics.queued) > 0);
}

#[tokio::test]
async fn upstream_429_pauses_upstream_calls_while_cached_executions_are_served() {
    let sim = SimConfig::new(REAL_KEY);
    let throttle = sim.throttle.clone();
    let h = Harness::with(sim, "", "").await;
    let cached = "/v1/retrievers/executions/exec_1";
    assert_eq!(
        h.client.get(cached, SEARCH_KEY).await.header("x-cache"),
        "MISS"
    );

    throttle.next_with_retry_after(2);
    let upstream_429 = h.client.get("/v1/collections", SEARCH_KEY).await;
    let paused_at = Instant::now();
    assert_eq!(upstream_429.status, 429);
    assert_eq!(upstream_429.header("retry-after"), "2");
    assert_eq!(h.sim.count(OTHER), 1);

    let assert_paused = |reply: Reply| {
        reply.assert_error(429, "rate_limited");
        assert!((1..=2).contains(&retry_after(&reply)));
    };
    assert_paused(h.client.get("/v1/collections", ADS_KEY).await);
    assert_paused(
        h.client
            .get("/v1/retrievers/executions/exec_2", SEARCH_KEY)
            .await,
    );
    let hit = h.client.get(cached, SEARCH_KEY).await;
    assert_eq!((hit.status.as_u16(), hit.header("x-cache")), (200, "HIT"));

    // Half-way through the pause: still nothing goes upstream.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_paused(h.client.get("/v1/collections", SEARCH_KEY).await);
    assert_eq!(h.sim.count(OTHER), 1);
    assert_eq!(h.sim.count(DETAIL), 1);

    let limits = &h.gateway.state.limits;
    assert_eq!(LimitMetrics::get(&limits.metrics.pauses), 1);
    let left = limits.upstream.paused_for().expect("still paused");
    tokio::time::sleep(left + Duration::from_millis(20)).await;
    assert!(paused_at.elapsed() >= Duration::from_secs(2));
    let resumed = h.client.get("/v1/collections", SEARCH_KEY).await;
    assert_eq!(resumed.status, 200);
    assert_eq!(h.sim.count(OTHER), 2);
    assert_eq!(
        limits
            .metrics
            .limited(Some("ads-team"), Reason::Upstream429),
        1
    );
    assert_eq!(
        limits
            .metrics
            .limited(Some("search-team"), Reason::Upstream429),
        3
    );
}

/// An upstream on a raw socket that closes its first `drop_first`
/// connections as soon as the request has arrived, and answers the others
/// with a tiny 200. Returns its address and how many connections it saw.
async fn flaky_upstream(drop_first: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buf[..read]),
                    }
                }
                if n <= drop_first {
                    return; // closed before any response byte
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                          content-length: 2\r\nconnection: close\r\n\r\n{}",
                    )
                    .await;
            });
        }
    });
    (addr, accepted)
}

async fn gateway_in_front_of(addr: SocketAddr) -> (server::RunningGateway, TestClient) {
    let config = config(&config_toml(&format!("http://{addr}"), "", ""));
    let gateway = server::spawn(config).await.unwrap();
    let client = TestClient::new(gateway.url());
    (gateway, client)
}

#[tokio::test]
async fn get_is_retried_once_on_a_fresh_connection() {
    let (addr, accepted) = flaky_upstream(1).await;
    let (gateway, client) = gateway_in_front_of(addr).await;
    let reply = client.get("/v1/collections", SEARCH_KEY).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body, Bytes::from_static(b"{}"));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(gateway.state.upstream.retries(), 1);
}

#[tokio::test]
async fn get_is_retried_only_once() {
    let (addr, accepted) = flaky_upstream(usize::MAX).await;
    let (gateway, client) = gateway_in_front_of(addr).await;
    client
        .get("/v1/collections", SEARCH_KEY)
        .await
        .assert_error(502, "bad_gateway");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(gateway.state.upstream.retries(), 1);
}

#[tokio::test]
async fn post_is_never_retried() {
    let (addr, accepted) = flaky_upstream(usize::MAX).await;
    let (gateway, client) = gateway_in_front_of(addr).await;
    client
        .post("/v1/collections", SEARCH_KEY, r#"{"name":"x"}"#)
        .await
        .assert_error(502, "bad_gateway");
    // A bodiless POST is not retried either.
    client
        .post("/v1/collections", SEARCH_KEY, "")
        .await
        .assert_error(502, "bad_gateway");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(gateway.state.upstream.retries(), 0);
}

/// Scrapes `/_gateway/metrics` once.
async fn scrape(client: &TestClient) -> String {
    String::from_utf8(client.get("/_gateway/metrics", "").await.body.to_vec()).unwrap()
}

#[tokio::test]
async fn limits_show_in_metrics_and_on_the_status_page() {
    let h = search_limited(1, 1).await;
    assert_eq!(
        h.client.get("/v1/collections", SEARCH_KEY).await.status,
        200
    );
    assert_eq!(
        h.client.get("/v1/collections", SEARCH_KEY).await.status,
        429
    );
    h.client
        .get("/v1/collections", "wrong")
        .await
        .assert_error(401, "unauthorized");
    let text = scrape(&h.client).await;
    assert!(
        text.contains(
            r#"mixpeek_gateway_rate_limited_total{client="search-team",reason="client_limit"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("mixpeek_gateway_upstream_paused_seconds 0"),
        "{text}"
    );
    // Scraping twice does not count twice.
    let again = scrape(&h.client).await;
    assert!(again.contains(
        r#"mixpeek_gateway_rate_limited_total{client="search-team",reason="client_limit"} 1"#
    ));
}

#[tokio::test]
async fn status_page_and_metrics_show_an_upstream_pause() {
    let sim = SimConfig::new(REAL_KEY);
    let throttle = sim.throttle.clone();
    let h = Harness::with(sim, "", "").await;
    throttle.next_with_retry_after(30);
    assert_eq!(
        h.client.get("/v1/collections", SEARCH_KEY).await.status,
        429
    );
    let page = String::from_utf8(h.client.get("/_gateway/status", "").await.body.to_vec()).unwrap();
    assert!(page.contains("paused by upstream 429"), "{page}");
    let text = scrape(&h.client).await;
    let paused: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("mixpeek_gateway_upstream_paused_seconds "))
        .and_then(|v| v.parse().ok())
        .expect("pause gauge");
    assert!((1..=30).contains(&paused), "{paused}");
    assert!(
        text.contains("mixpeek_gateway_upstream_pauses_total 1"),
        "{text}"
    );
}

/// A client that asks for 32 MiB echoed back and reads only the response
/// head: its socket fills and its response holds an upstream slot. The
/// returned halves keep the connection open.
async fn stall_on_a_large_echo(
    gateway: SocketAddr,
    key: &str,
) -> (
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let size = 32 * 1024 * 1024;
    let mut stalled = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let head = format!(
        "POST /v1/collections HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {key}\r\ncontent-length: {size}\r\n\r\n"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stalled.into_split();
    let upload = tokio::spawn(async move {
        let chunk = vec![b'x'; 1024 * 1024];
        for _ in 0..32 {
            writer.write_all(&chunk).await.unwrap();
        }
        writer
    });
    let mut answer = Vec::new();
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 1024];
        let n = reader.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the response head");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    (reader, upload.await.unwrap())
}

#[tokio::test]
async fn a_client_that_stops_reading_cannot_hold_the_upstream_slot() {
    use tokio::io::AsyncReadExt;
    // One upstream slot; a caller may wait 10 s for it.
    let h = Harness::with(
        SimConfig::new(REAL_KEY),
        "send_timeout_ms = 300\nmax_body_bytes = 67108864",
        "max_in_flight = 1\nqueue_timeout_ms = 10000",
    )
    .await;
    let (mut reader, _writer) = stall_on_a_large_echo(h.gateway.addr, SEARCH_KEY).await;
    // Another team's pass-through gets the slot once the stalled
    // connection is closed (send_timeout_ms), long before its own wait
    // (queue_timeout_ms) would run out.
    let reply = h.client.get("/v1/collections", ADS_KEY).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // The stalled connection was closed.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the stalled connection is still open");
}

#[tokio::test]
async fn one_client_cannot_take_every_upstream_slot() {
    // Two slots, the default share is one each; nobody's socket times out.
    let h = Harness::with(
        SimConfig::new(REAL_KEY),
        "max_body_bytes = 67108864",
        "max_in_flight = 2\nqueue_timeout_ms = 300",
    )
    .await;
    let _stalled = stall_on_a_large_echo(h.gateway.addr, SEARCH_KEY).await;
    // The same team's next call waits for its share, then is refused...
    h.client
        .get("/v1/collections", SEARCH_KEY)
        .await
        .assert_error(429, "rate_limited");
    // ...while another team's goes through on the slot that is left.
    let reply = h.client.get("/v1/collections", ADS_KEY).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}
