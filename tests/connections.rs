//! Connection lifetimes: idle keep-alive connections and clients that never
//! finish their request head are closed after `server.idle_timeout_ms`;
//! a response still streaming keeps its connection open.

mod support;

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use mixpeek_gateway::sim::SimConfig;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE: Duration = Duration::from_millis(300);

async fn harness(sim: SimConfig) -> Harness {
    Harness::with(sim, &format!("idle_timeout_ms = {}", IDLE.as_millis()), "").await
}

/// Reads until the gateway closes the connection; everything it sent.
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the gateway closed the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_request_head_never_finished_is_closed_even_while_it_dribbles() {
    let h = harness(SimConfig::new(REAL_KEY)).await;
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /v1/collections HTTP/1.1\r\nhost: a\r\n")
        .await
        .unwrap();
    // Slowloris: a header line now and then, never the blank line.
    let (mut read, mut write) = stream.into_split();
    let dribble = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(50));
        for i in 0..200 {
            ticks.tick().await;
            if write
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut out))
        .await
        .expect("the gateway closed the connection")
        .ok();
    assert!(
        started.elapsed() >= IDLE,
        "closed after {:?}",
        started.elapsed()
    );
    assert!(out.is_empty(), "no response to an unfinished head: {out:?}");
    dribble.abort();
    assert_eq!(h.sim.count("other"), 0);
    // The gateway keeps serving.
    assert_eq!(
        h.client.get("/v1/collections", SEARCH_KEY).await.status,
        200
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_last_response() {
    let h = harness(SimConfig::new(REAL_KEY)).await;
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    let request = format!(
        "GET /v1/collections HTTP/1.1\r\nhost: a\r\nauthorization: Bearer {SEARCH_KEY}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let answered = Instant::now();
    let out = until_closed(&mut stream).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        answered.elapsed() >= IDLE,
        "closed after {:?}",
        answered.elapsed()
    );
}

#[tokio::test]
async fn a_stream_longer_than_the_idle_timeout_is_not_cut() {
    let (sim, gate) = gated_sse_sim();
    let h = harness(sim).await;

    let response = h.client.send_streaming(h.client.sse_execute()).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("stage"));

    // An idle connection opened now is closed by the sweeps: once it is,
    // the stream has been quiet for longer than the idle timeout.
    let mut idle = TcpStream::connect(h.gateway.addr).await.unwrap();
    until_closed(&mut idle).await;

    gate.add_permits(16);
    let mut rest = String::from_utf8_lossy(&first).into_owned();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("the stream was not cut").into_data() {
            rest.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    assert!(rest.contains("event: complete"), "{rest}");
}

/// Connections opened in a burst land on whichever worker wakes first; the
/// accepting worker hands each to the worker serving the fewest, so two
/// workers end up with an even share, and every handed-off connection is
/// served.
#[tokio::test]
async fn a_burst_of_connections_is_spread_evenly_over_the_workers() {
    let h = Harness::with(SimConfig::new(REAL_KEY), "workers = 2", "").await;
    let mut streams = Vec::new();
    for _ in 0..16 {
        streams.push(TcpStream::connect(h.gateway.addr).await.unwrap());
    }
    for stream in &mut streams {
        ask_health(stream).await;
    }
    for stream in &mut streams {
        assert_health_answered(stream).await;
    }
    // The 16 are still open; the scrape's own connection is counted too.
    let reply = h.client.get("/_gateway/metrics", "").await;
    let text = String::from_utf8_lossy(&reply.body);
    let load = |text: &str, worker: &str| -> i64 {
        worker_connections(text)
            .into_iter()
            .find_map(|(label, value)| (label == worker).then_some(value))
            .unwrap_or_else(|| panic!("no worker_connections of worker {worker} in {text}"))
    };
    let (a, b) = (load(&text, "0"), load(&text, "1"));
    assert!(a + b >= 16, "{a} + {b}");
    assert!((a - b).abs() <= 1, "uneven: {a} and {b}");

    // Closed connections are counted off again (the scrapes' own
    // connection may stay open).
    drop(streams);
    let mut left = i64::MAX;
    for _ in 0..200 {
        let reply = h.client.get("/_gateway/metrics", "").await;
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        left = load(&text, "0") + load(&text, "1");
        if left <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(left <= 1, "{left} connections still counted");
}

/// Sends `GET /_gateway/health` with `Connection: close` on a new
/// connection; the whole answer (empty when the gateway closed it unread).
async fn health_on_new_connection(addr: std::net::SocketAddr) -> String {
    raw_exchange(
        addr,
        b"GET /_gateway/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
}

#[tokio::test]
async fn past_max_connections_a_new_connection_is_closed_at_once_and_counted() {
    let h = Harness::with(
        SimConfig::new(REAL_KEY),
        "max_connections = 3\nworkers = 1",
        "",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
        ask_health(&mut stream).await;
        assert_health_answered(&mut stream).await;
        held.push(stream);
    }
    // The fourth is accepted by the kernel and closed by the gateway before
    // it reads a byte: no answer, and well before any timeout.
    let started = Instant::now();
    let refused = health_on_new_connection(h.gateway.addr).await;
    assert_eq!(refused, "", "a connection past the limit is not served");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Once one closes, a new connection is served again.
    drop(held.pop());
    let mut answer = String::new();
    for _ in 0..500 {
        answer = health_on_new_connection(h.gateway.addr).await;
        if !answer.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = raw_exchange(
        h.gateway.addr,
        b"GET /_gateway/metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mixpeek_gateway_connections_refused_total "))
        .unwrap_or_else(|| panic!("no connections_refused_total in {metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(refused >= 1, "{refused}");
}
