//! Operations: Prometheus metrics, structured access logs, request ids.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use http::Method;
use http_body_util::Full;
use mixpeek_gateway::sim::SimConfig;
use support::*;

/// The value of one sample line (`name{labels} value`), if present.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|line| {
            line.starts_with(name_and_labels) && line[name_and_labels.len()..].starts_with(' ')
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrapes until `check` holds (metrics are recorded when a response body
/// has been sent, an instant after the client has it), at most 2 s.
async fn scrape_until(client: &TestClient, check: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    for _ in 0..200 {
        let reply = client.get("/_gateway/metrics", "").await;
        assert_eq!(reply.status, 200);
        assert!(reply.header("content-type").starts_with("text/plain"));
        text = String::from_utf8(reply.body.to_vec()).unwrap();
        if check(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("metrics never matched:\n{text}");
}

#[tokio::test]
async fn metrics_count_requests_outcomes_upstream_calls_and_cache() {
    let mut sim = SimConfig::new(REAL_KEY);
    sim.latency = Duration::from_millis(150);
    let h = Harness::with(sim, "", "").await;
    let path = "/v1/retrievers/executions/exec_m1";
    // 1 MISS + 4 COALESCED, then 2 HITs, a pass-through and a 401.
    h.client.warm(5).await;
    join_all((0..5).map(|_| h.client.get(path, SEARCH_KEY))).await;
    h.client.get(path, SEARCH_KEY).await;
    h.client.get(path, SEARCH_KEY).await;
    h.client.get("/v1/collections", ADS_KEY).await;
    h.client.get("/v1/collections", "nope").await;
    h.gateway.state.cache.store.run_pending_tasks();

    let text = scrape_until(&h.client, |t| {
        sample(
            t,
            r#"mixpeek_gateway_requests_total{client="search-team",route="detail",status="200"}"#,
        ) == Some(7.0)
            && sample(
                t,
                r#"mixpeek_gateway_requests_total{client="-",route="passthrough",status="401"}"#,
            ) == Some(1.0)
    })
    .await;
    let s = |k: &str| sample(&text, k);
    assert_eq!(
        s(r#"mixpeek_gateway_cache_outcomes_total{outcome="HIT"}"#),
        Some(2.0)
    );
    assert_eq!(
        s(r#"mixpeek_gateway_cache_outcomes_total{outcome="MISS"}"#),
        Some(1.0)
    );
    assert_eq!(
        s(r#"mixpeek_gateway_cache_outcomes_total{outcome="COALESCED"}"#),
        Some(4.0)
    );
    assert_eq!(
        s(r#"mixpeek_gateway_cache_outcomes_total{outcome="BYPASS"}"#),
        Some(1.0)
    );
    assert_eq!(
        s(r#"mixpeek_gateway_upstream_requests_total{route="detail",status="200"}"#),
        Some(1.0)
    );
    assert_eq!(
        s(r#"mixpeek_gateway_upstream_requests_total{route="passthrough",status="200"}"#),
        Some(1.0)
    );
    assert_eq!(
        s(r#"mixpeek_gateway_upstream_calls_saved_total{client="search-team"}"#),
        Some(6.0)
    );
    assert_eq!(
        s(r#"mixpeek_gateway_requests_total{client="ads-team",route="passthrough",status="200"}"#),
        Some(1.0)
    );
    assert_eq!(s("mixpeek_gateway_cache_entries"), Some(1.0));
    assert!(s("mixpeek_gateway_cache_weighted_bytes").unwrap() > 800.0);
    assert!(
        s("mixpeek_gateway_in_flight_requests").unwrap() >= 1.0,
        "the scrape itself"
    );
    assert_eq!(
        s(r#"mixpeek_gateway_upstream_duration_seconds_count{route="detail"}"#),
        Some(1.0)
    );
    assert!(s(r#"mixpeek_gateway_upstream_duration_seconds_sum{route="detail"}"#).unwrap() >= 0.15);
    assert!(s(r#"mixpeek_gateway_request_duration_seconds_count{route="detail"}"#).unwrap() >= 7.0);
    assert_eq!(h.sim.count("GET /v1/retrievers/executions/{id}"), 1);
    // Bounded labels only: no key, id, path or namespace anywhere.
    for leaked in [
        REAL_KEY,
        SEARCH_KEY,
        ADS_KEY,
        "exec_m1",
        "/v1/",
        "ns_search",
    ] {
        assert!(!text.contains(leaked), "{leaked} in metrics");
    }
}

#[tokio::test]
async fn sane_request_ids_are_kept_forwarded_and_returned_others_replaced() {
    let h = Harness::start().await;
    let send = |id: &'static str| {
        let request = h
            .client
            .request(Method::GET, "/v1/collections")
            .header("authorization", format!("Bearer {SEARCH_KEY}"))
            .header("x-request-id", id)
            .body(Full::default())
            .unwrap();
        h.client.send(request)
    };
    let kept = send("trace-42.a:b").await;
    assert_eq!(kept.header("x-request-id"), "trace-42.a:b");
    assert_eq!(
        h.sim.requests().pop().unwrap().headers["x-request-id"],
        "trace-42.a:b"
    );
    let replaced = send("bad id\"with quotes").await;
    let fresh = replaced.header("x-request-id").to_string();
    assert!(
        fresh.len() == 32 && fresh.bytes().all(|b| b.is_ascii_hexdigit()),
        "{fresh}"
    );
    assert_eq!(
        h.sim.requests().pop().unwrap().headers["x-request-id"],
        fresh.as_str()
    );
    // Generated when absent.
    assert_eq!(
        h.client
            .get("/v1/collections", SEARCH_KEY)
            .await
            .header("x-request-id")
            .len(),
        32
    );
    // A generated id goes upstream with a cache miss's shared call too.
    let miss = h
        .client
        .get("/v1/retrievers/executions/exec_rid", SEARCH_KEY)
        .await;
    assert_eq!(miss.header("x-cache"), "MISS");
    assert_eq!(miss.header("x-request-id").len(), 32);
    assert_eq!(
        h.sim.requests().pop().unwrap().headers["x-request-id"],
        miss.header("x-request-id")
    );
    // The gateway's own error answers carry the client's id too.
    let refused = h
        .client
        .send(
            h.client
                .request(Method::GET, "/v1/collections")
                .header("x-request-id", "trace-401")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    refused.assert_error(401, "unauthorized");
    assert_eq!(refused.header("x-request-id"), "trace-401");
}

#[tokio::test]
async fn json_access_log_has_one_line_per_request_with_every_field() {
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let dir = std::env::temp_dir().join(format!("mixpeek-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("json.toml");
    std::fs::write(
        &path,
        config_toml(&sim.base_url(), "", "") + "\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    let listen = closed_port().await;
    let mut process = Process::serve(&path, Some(listen)).await;

    let client = TestClient::new(format!("http://{listen}"));
    let reply = client
        .get("/v1/retrievers/executions/exec_log", SEARCH_KEY)
        .await;
    let request_id = reply.header("x-request-id").to_string();
    let line = process
        .wait_for("\"access\"")
        .await
        .expect("an access line");
    let entry: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(entry["request_id"], request_id.as_str());
    assert_eq!(entry["client"], "search-team");
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["route"], "detail");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["cache"], "MISS");
    assert_eq!(entry["upstream_status"], 200);
    assert!(entry["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert!(entry["latency_ms"].as_f64().unwrap() >= entry["upstream_ms"].as_f64().unwrap());
    assert!(!line.contains(SEARCH_KEY) && !line.contains(REAL_KEY));

    process.signal("-TERM");
    assert_eq!(process.exit_code().await, Some(0));
}

#[tokio::test]
async fn sigterm_lets_a_slow_request_finish_then_exits_zero() {
    let mut sim_config = SimConfig::new(REAL_KEY);
    sim_config.latency = Duration::from_millis(800);
    let sim = start_sim(sim_config).await;
    let dir = std::env::temp_dir().join(format!("mixpeek-ops-term-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("term.toml");
    std::fs::write(
        &path,
        config_toml(&sim.base_url(), "shutdown_grace_ms = 10000", ""),
    )
    .unwrap();
    let listen = closed_port().await;
    let mut process = Process::serve(&path, Some(listen)).await;

    let client = TestClient::new(format!("http://{listen}"));
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.get("/v1/collections/slow", SEARCH_KEY).await }
    });
    // Once the request has reached upstream, ask the gateway to stop.
    tokio::time::timeout(Duration::from_secs(10), async {
        while sim.count("other") == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("request reached upstream");
    process.signal("-TERM");
    process
        .wait_for("shutting down")
        .await
        .expect("drain started");
    // New connections are refused while draining...
    assert!(tokio::net::TcpStream::connect(listen).await.is_err());
    // ...but the request in flight completes.
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-echo-path"), "/v1/collections/slow");
    assert_eq!(process.exit_code().await, Some(0));
}

#[tokio::test]
async fn a_client_gone_before_the_response_is_logged_as_499_and_leaves_no_in_flight_count() {
    let mut sim = SimConfig::new(REAL_KEY);
    sim.latency = Duration::from_millis(300);
    let h = Harness::with(sim, "", "").await;
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(h.gateway.addr)
            .await
            .unwrap();
        let request = format!("GET /v1/collections HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {SEARCH_KEY}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while h.sim.count("other") == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        // Dropped here, before the upstream answers.
    }
    let text = scrape_until(&h.client, |t| {
        sample(t, r#"mixpeek_gateway_requests_total{client="search-team",route="passthrough",status="499"}"#) == Some(1.0)
    })
    .await;
    // Only the scrape itself is in flight.
    assert_eq!(
        sample(&text, "mixpeek_gateway_in_flight_requests"),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn every_access_line_is_written_by_exit_in_order_per_connection_and_without_colours() {
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let dir = std::env::temp_dir().join(format!("mixpeek-ops-flush-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flush.toml");
    std::fs::write(&path, config_toml(&sim.base_url(), "", "")).unwrap();
    let listen = closed_port().await;
    let mut process = Process::serve(&path, Some(listen)).await;

    // One connection: its lines come from one worker's buffer, in order.
    let client = TestClient::new(format!("http://{listen}"));
    let mut ids = Vec::new();
    for i in 0..200 {
        let reply = client
            .request(http::Method::GET, "/v1/retrievers/executions/exec_flush")
            .header("authorization", format!("Bearer {SEARCH_KEY}"))
            .header("x-request-id", format!("flush-{i}"))
            .body(Default::default())
            .unwrap();
        assert_eq!(client.send(reply).await.status, 200);
        ids.push(format!("request_id=\"flush-{i}\""));
    }
    // Stopped at once: lines still buffered are written out on exit.
    process.signal("-TERM");
    let lines = process.remaining_lines().await;
    let access: Vec<&String> = lines.iter().filter(|l| l.contains(" access: ")).collect();
    let logged: Vec<&str> = access
        .iter()
        .filter_map(|l| {
            ids.iter()
                .find(|id| l.contains(id.as_str()))
                .map(String::as_str)
        })
        .collect();
    assert_eq!(logged, ids.iter().map(String::as_str).collect::<Vec<_>>());
    for line in &access {
        assert!(
            !line.contains('\u{1b}'),
            "no terminal colours into a pipe: {line:?}"
        );
        assert!(line.contains("INFO access: request ") && line.contains(" completed=true"));
    }
    assert_eq!(process.exit_code().await, Some(0));
}
