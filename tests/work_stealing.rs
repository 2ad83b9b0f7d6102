//! `server.work_stealing`: the gateway serves on one work-stealing runtime
//! of `server.workers` threads with one accept loop, instead of one
//! runtime per thread.
//!
//! The only test in its binary: it counts the process's serving threads by
//! name, which another gateway in the same process would add to.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use mixpeek_gateway::sim::SimConfig;
use support::*;
use tokio::net::TcpStream;

const DETAIL: &str = "GET /v1/retrievers/executions/{id}";
const WORKERS: usize = 3;

/// Threads of this process named `name` (Linux: `/proc/self/task`).
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[tokio::test]
async fn one_work_stealing_runtime_serves_every_connection_and_stops_with_the_gateway() {
    let mut sim = SimConfig::new(REAL_KEY);
    sim.latency = Duration::from_millis(100);
    let h = Harness::with(
        sim,
        &format!("workers = {WORKERS}\nwork_stealing = true"),
        "",
    )
    .await;
    // Requests from many connections at once, served by whichever thread
    // is free: coalesced into one upstream call, then hits.
    h.client.warm(20).await;
    let replies = join_all((0..20).map(|_| {
        h.client
            .get("/v1/retrievers/executions/exec_ws", SEARCH_KEY)
    }))
    .await;
    for reply in &replies {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, replies[0].body);
    }
    assert_eq!(h.sim.count(DETAIL), 1);
    // Answers came, so the runtime is up: exactly `workers` serving
    // threads (the sim is an IP address, so no DNS lookup adds a blocking
    // thread of the same name), none of the per-thread model's
    // `gateway-worker-N` (cut to 15 bytes by the kernel: `gateway-worker-`).
    assert_eq!(threads_named("gateway-worker"), WORKERS);
    assert_eq!(threads_named("gateway-worker-"), 0);
    let hit = h
        .client
        .get("/v1/retrievers/executions/exec_ws", SEARCH_KEY)
        .await;
    assert_eq!(hit.header("x-cache"), "HIT");
    assert_eq!(hit.body, replies[0].body);
    // Pass-through calls go upstream from any thread.
    let listed = h.client.get("/v1/collections", SEARCH_KEY).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    assert_eq!(h.sim.count("other"), 1);

    // One accept loop: every connection is counted on worker 0.
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
        ask_health(&mut stream).await;
        assert_health_answered(&mut stream).await;
        streams.push(stream);
    }
    let scrape = h.client.get("/_gateway/metrics", "").await;
    let gauges = worker_connections(&String::from_utf8_lossy(&scrape.body));
    assert_eq!(gauges.len(), 1, "{gauges:?}");
    assert_eq!(gauges[0].0, "0");
    assert!(gauges[0].1 >= 8, "{gauges:?}");
    drop(streams);

    // Shutdown stops the runtime and joins its threads; a joined thread
    // may still be listed for a moment after the join returns.
    let Harness { gateway, .. } = h;
    gateway.shutdown().await.unwrap();
    let mut left = threads_named("gateway-worker");
    for _ in 0..200 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        left = threads_named("gateway-worker");
    }
    assert_eq!(left, 0, "serving threads still running after shutdown");
}
