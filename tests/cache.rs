//! The execution-detail cache, single flight and list coalescing, end to
//! end: the real gateway in front of the simulated API, every claim checked
//! by counting calls at the simulator.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::Method;
use http_body_util::Full;
use mixpeek_gateway::sim::SimConfig;
use support::*;

const DETAIL: &str = "GET /v1/retrievers/executions/{id}";
const RETRIEVER_DETAIL: &str = "GET /v1/retrievers/{retriever_id}/executions/{id}";
const LIST: &str = "POST /v1/retrievers/executions/list";

fn slow_sim(latency_ms: u64) -> SimConfig {
    let mut sim = SimConfig::new(REAL_KEY);
    sim.latency = Duration::from_millis(latency_ms);
    sim
}

async fn get_ns(client: &TestClient, path: &str, key: &str, namespace: &str) -> Reply {
    let request = client
        .request(Method::GET, path)
        .header("authorization", format!("Bearer {key}"))
        .header("x-namespace", namespace)
        .body(Full::default())
        .unwrap();
    client.send(request).await
}

#[tokio::test]
async fn miss_then_hit_with_one_upstream_call() {
    let h = Harness::start().await;
    let first = h
        .client
        .get("/v1/retrievers/executions/exec_1", SEARCH_KEY)
        .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!(first.json()["status"], "completed");
    let second = h
        .client
        .get("/v1/retrievers/executions/exec_1", SEARCH_KEY)
        .await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-cache"), "HIT");
    assert_eq!(second.header("content-type"), "application/json");
    assert!(second.header("age").parse::<u64>().is_ok());
    assert_eq!(second.body, first.body);
    // Equivalent spelling of the same path is the same entry.
    let third = h
        .client
        .get("/v1/retrievers/executions/exec%5F1", SEARCH_KEY)
        .await;
    assert_eq!(third.header("x-cache"), "HIT");
    assert_eq!(h.sim.count(DETAIL), 1);
    assert_eq!(h.gateway.state.cache.metrics.hits.sum(), 2);
}

#[tokio::test]
async fn retriever_scoped_detail_is_cached_too_but_status_is_not() {
    let h = Harness::start().await;
    let path = "/v1/retrievers/ret_7/executions/exec_3";
    assert_eq!(
        h.client.get(path, SEARCH_KEY).await.header("x-cache"),
        "MISS"
    );
    let hit = h.client.get(path, SEARCH_KEY).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    assert_eq!(hit.json()["retriever_id"], "ret_7");
    assert_eq!(h.sim.count(RETRIEVER_DETAIL), 1);
    // The live status route is never cached.
    for _ in 0..2 {
        let status = h.client.get(&format!("{path}/status"), SEARCH_KEY).await;
        assert_eq!(status.header("x-cache"), "BYPASS");
    }
    assert_eq!(h.sim.count("other"), 2);
}

#[tokio::test]
async fn non_terminal_execution_is_fetched_every_time_until_completed() {
    let mut sim = SimConfig::new(REAL_KEY);
    sim.complete_after = Duration::from_millis(300);
    let h = Harness::with(sim, "", "").await;
    let path = "/v1/retrievers/executions/exec_slow";
    let mut calls = 0;
    let mut seen_statuses = Vec::new();
    loop {
        let reply = h.client.get(path, SEARCH_KEY).await;
        calls += 1;
        let status = reply.json()["status"].as_str().unwrap().to_string();
        assert_eq!(
            h.sim.count(DETAIL),
            calls,
            "every non-terminal read goes upstream"
        );
        assert_eq!(reply.header("x-cache"), "MISS");
        seen_statuses.push(status.clone());
        if status == "completed" {
            break;
        }
        assert!(calls < 200, "execution never completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_statuses
        .iter()
        .any(|s| s == "pending" || s == "processing"));
    let hit = h.client.get(path, SEARCH_KEY).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    assert_eq!(hit.json()["status"], "completed");
    assert_eq!(h.sim.count(DETAIL), calls);
}

#[tokio::test]
async fn not_found_is_never_cached() {
    let h = Harness::start().await;
    for _ in 0..3 {
        let reply = h
            .client
            .get("/v1/retrievers/executions/missing_1", SEARCH_KEY)
            .await;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.header("x-cache"), "MISS");
    }
    assert_eq!(h.sim.count(DETAIL), 3);
}

#[tokio::test]
async fn namespaces_never_share_an_entry_but_teams_on_one_namespace_do() {
    let h = Harness::start().await;
    let path = "/v1/retrievers/executions/exec_5";
    let search = h.client.get(path, SEARCH_KEY).await;
    let staging = get_ns(&h.client, path, SEARCH_KEY, "staging").await;
    let ads = h.client.get(path, ADS_KEY).await;
    for reply in [&search, &staging, &ads] {
        assert_eq!(reply.header("x-cache"), "MISS");
    }
    assert_ne!(search.body, staging.body);
    assert_ne!(search.body, ads.body);
    assert!(String::from_utf8_lossy(&ads.body).contains("ns_ads"));
    assert_eq!(h.sim.count(DETAIL), 3);
    // The ads team in staging shares the search team's staging entry.
    let shared = get_ns(&h.client, path, ADS_KEY, "staging").await;
    assert_eq!(shared.header("x-cache"), "HIT");
    assert_eq!(shared.body, staging.body);
    // And the query-parameter spelling of the namespace is the same entry.
    let by_query = h
        .client
        .get(&format!("{path}?namespace=staging"), ADS_KEY)
        .await;
    assert_eq!(by_query.body, staging.body);
    assert_eq!(
        h.sim.count(DETAIL),
        3 + u64::from(by_query.header("x-cache") == "MISS")
    );
}

#[tokio::test]
async fn fifty_concurrent_gets_make_one_upstream_call() {
    let h = Harness::with(slow_sim(200), "", "").await;
    h.client.warm(50).await;
    let replies =
        join_all((0..50).map(|_| h.client.get("/v1/retrievers/executions/exec_9", SEARCH_KEY)))
            .await;
    assert_eq!(h.sim.count(DETAIL), 1);
    let mut miss = 0;
    for reply in &replies {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, replies[0].body);
        match reply.header("x-cache") {
            "MISS" => miss += 1,
            "COALESCED" => {}
            other => panic!("unexpected X-Cache {other}"),
        }
    }
    assert_eq!(miss, 1);
    assert_eq!(
        h.client
            .get("/v1/retrievers/executions/exec_9", SEARCH_KEY)
            .await
            .header("x-cache"),
        "HIT"
    );
}

#[tokio::test]
async fn concurrent_gets_in_two_namespaces_make_two_flights() {
    let h = Harness::with(slow_sim(200), "", "").await;
    let path = "/v1/retrievers/executions/exec_2";
    let search = (0..10).map(|_| get_ns(&h.client, path, SEARCH_KEY, "ns_search"));
    let staging = (0..10).map(|_| get_ns(&h.client, path, SEARCH_KEY, "staging"));
    let (a, b) = tokio::join!(join_all(search), join_all(staging));
    assert_eq!(h.sim.count(DETAIL), 2);
    assert!(a
        .iter()
        .all(|r| r.body == a[0].body && String::from_utf8_lossy(&r.body).contains("ns_search")));
    assert!(b
        .iter()
        .all(|r| r.body == b[0].body && String::from_utf8_lossy(&r.body).contains("staging")));
}

#[tokio::test]
async fn uncacheable_answers_are_shared_with_waiters_but_not_stored() {
    let h = Harness::with(slow_sim(200), "", "").await;
    let replies =
        join_all((0..10).map(|_| h.client.get("/v1/retrievers/executions/nope", SEARCH_KEY))).await;
    assert!(replies.iter().all(|r| r.status == 404));
    assert_eq!(h.sim.count(DETAIL), 1);
    assert_eq!(
        h.client
            .get("/v1/retrievers/executions/nope", SEARCH_KEY)
            .await
            .header("x-cache"),
        "MISS"
    );
    assert_eq!(h.sim.count(DETAIL), 2);
}

#[tokio::test]
async fn fifty_concurrent_identical_lists_make_one_call() {
    let h = Harness::with(slow_sim(200), "", "").await;
    h.client.warm(50).await;
    let body = r#"{"status":"completed"}"#;
    let replies = join_all((0..50).map(|_| {
        h.client
            .post("/v1/retrievers/executions/list?limit=5", SEARCH_KEY, body)
    }))
    .await;
    assert_eq!(h.sim.count(LIST), 1);
    assert!(replies
        .iter()
        .all(|r| r.status == 200 && r.body == replies[0].body));
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.header("x-cache") == "MISS")
            .count(),
        1
    );
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.header("x-cache") == "COALESCED")
            .count(),
        49
    );
    assert_eq!(replies[0].json()["results"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn key_order_whitespace_and_query_order_still_coalesce() {
    let h = Harness::with(slow_sim(200), "", "").await;
    let variants = [
        (
            "/v1/retrievers/executions/list?limit=5&offset=2",
            r#"{"status":"completed","count_only":false}"#,
        ),
        (
            "/v1/retrievers/executions/list?offset=2&limit=5",
            r#"{"count_only":false,"status":"completed"}"#,
        ),
        (
            "/v1/retrievers/executions/list?offset=2&limit=5",
            "{\n  \"status\" : \"completed\",\n  \"count_only\": false\n}",
        ),
        (
            "/v1/retrievers/executions/list?limit=5&offset=2",
            " { \"count_only\":false , \"status\":\"completed\" } ",
        ),
    ];
    h.client.warm(20).await;
    let requests = (0..20).map(|i| {
        let (path, body) = variants[i % variants.len()];
        h.client.post(path, SEARCH_KEY, body)
    });
    let replies = join_all(requests).await;
    assert_eq!(h.sim.count(LIST), 1);
    assert!(replies
        .iter()
        .all(|r| r.status == 200 && r.body == replies[0].body));
}

#[tokio::test]
async fn five_distinct_bodies_times_ten_make_five_calls() {
    let h = Harness::with(slow_sim(200), "", "").await;
    let bodies = [
        r#"{"status":"completed"}"#,
        r#"{"status":"failed"}"#,
        r#"{"count_only":true}"#,
        r#"{"status":"completed","count_only":true}"#,
        r#"{}"#,
    ];
    h.client.warm(50).await;
    let requests = (0..50).map(|i| {
        h.client
            .post("/v1/retrievers/executions/list", SEARCH_KEY, bodies[i % 5])
    });
    let replies = join_all(requests).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(h.sim.count(LIST), 5);
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(
            reply.body,
            replies[i % 5].body,
            "each request got its own query's answer"
        );
    }
}

#[tokio::test]
async fn lists_in_two_namespaces_or_two_retrievers_are_not_shared() {
    let h = Harness::with(slow_sim(200), "", "").await;
    let ads = h
        .client
        .post("/v1/retrievers/executions/list", ADS_KEY, "{}");
    let search = h
        .client
        .post("/v1/retrievers/executions/list", SEARCH_KEY, "{}");
    let r1 = h
        .client
        .post("/v1/retrievers/r1/executions/list", SEARCH_KEY, "{}");
    let r2 = h
        .client
        .post("/v1/retrievers/r2/executions/list", SEARCH_KEY, "{}");
    let (ads, search, r1, r2) = tokio::join!(ads, search, r1, r2);
    assert_eq!(h.sim.count(LIST), 2);
    assert_eq!(
        h.sim
            .count("POST /v1/retrievers/{retriever_id}/executions/list"),
        2
    );
    assert_ne!(ads.body, search.body);
    assert_ne!(r1.body, r2.body);
}

#[tokio::test]
async fn sequential_identical_lists_without_ttl_make_two_calls() {
    let h = Harness::start().await;
    for _ in 0..2 {
        let reply = h
            .client
            .post("/v1/retrievers/executions/list", SEARCH_KEY, "{}")
            .await;
        assert_eq!(reply.header("x-cache"), "MISS");
    }
    assert_eq!(h.sim.count(LIST), 2);
}

#[tokio::test]
async fn list_ttl_reuses_a_finished_result() {
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let toml = config_toml(&sim.base_url(), "", "") + "\n[coalesce]\nlist_ttl_ms = 60000\n";
    let gateway = mixpeek_gateway::server::spawn(config(&toml)).await.unwrap();
    let client = TestClient::new(gateway.url());
    assert_eq!(
        client
            .post("/v1/retrievers/executions/list", SEARCH_KEY, "{}")
            .await
            .header("x-cache"),
        "MISS"
    );
    assert_eq!(
        client
            .post("/v1/retrievers/executions/list", SEARCH_KEY, "{ }")
            .await
            .header("x-cache"),
        "HIT"
    );
    // Another namespace, another result.
    assert_eq!(
        client
            .post("/v1/retrievers/executions/list", ADS_KEY, "{}")
            .await
            .header("x-cache"),
        "MISS"
    );
    assert_eq!(sim.count(LIST), 2);
}

#[tokio::test]
async fn invalid_json_list_bodies_are_forwarded_alone() {
    let h = Harness::with(slow_sim(100), "", "").await;
    let replies = join_all((0..5).map(|_| {
        h.client
            .post("/v1/retrievers/executions/list", SEARCH_KEY, "{not json")
    }))
    .await;
    assert!(replies
        .iter()
        .all(|r| r.status == 422 && r.header("x-cache") == "BYPASS"));
    assert_eq!(h.sim.count(LIST), 5);
}

#[tokio::test]
async fn absent_body_and_empty_object_are_different_queries() {
    let h = Harness::with(slow_sim(200), "", "").await;
    let absent = h
        .client
        .post("/v1/retrievers/executions/list", SEARCH_KEY, Bytes::new());
    let empty = h
        .client
        .post("/v1/retrievers/executions/list", SEARCH_KEY, "{}");
    let (absent, empty) = tokio::join!(absent, empty);
    assert_eq!((absent.status.as_u16(), empty.status.as_u16()), (200, 200));
    assert_eq!(h.sim.count(LIST), 2);
}

#[tokio::test]
async fn leader_disconnect_does_not_cancel_the_flight() {
    let h = Harness::with(slow_sim(300), "", "").await;
    let path = "/v1/retrievers/executions/exec_77";
    // The first request arrives on a raw connection that is dropped as soon
    // as its call has reached upstream.
    {
        use tokio::io::AsyncWriteExt;
        let mut leader = tokio::net::TcpStream::connect(h.gateway.addr)
            .await
            .unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {SEARCH_KEY}\r\n\r\n"
        );
        leader.write_all(request.as_bytes()).await.unwrap();
        let reached = tokio::time::timeout(Duration::from_secs(10), async {
            while h.sim.count(DETAIL) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(reached.is_ok(), "leader's call reached upstream");
    }
    let replies = join_all((0..10).map(|_| h.client.get(path, SEARCH_KEY))).await;
    for reply in &replies {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-cache"), "COALESCED");
    }
    assert_eq!(h.sim.count(DETAIL), 1);
    // And what the orphaned flight fetched was stored.
    assert_eq!(
        h.client.get(path, SEARCH_KEY).await.header("x-cache"),
        "HIT"
    );
    assert_eq!(h.sim.count(DETAIL), 1);
}

#[tokio::test]
async fn waiters_get_504_after_the_timeout_and_no_second_call() {
    let h = Harness::with(slow_sim(2000), "", "timeout_ms = 200").await;
    let replies =
        join_all((0..10).map(|_| h.client.get("/v1/retrievers/executions/exec_4", SEARCH_KEY)))
            .await;
    for reply in &replies {
        reply.assert_error(504, "gateway_timeout");
    }
    assert_eq!(h.sim.count(DETAIL), 1);
}

#[tokio::test]
async fn mutations_invalidate_at_and_below_their_path_in_their_namespace() {
    let h = Harness::start().await;
    let detail = "/v1/retrievers/ret_1/executions/exec_1";
    let other = "/v1/retrievers/ret_2/executions/exec_1";
    for path in [detail, other] {
        h.client.get(path, SEARCH_KEY).await;
        get_ns(&h.client, path, SEARCH_KEY, "staging").await;
    }
    assert_eq!(
        h.client.get(detail, SEARCH_KEY).await.header("x-cache"),
        "HIT"
    );

    // PATCH the detail itself.
    let request = h
        .client
        .request(Method::PATCH, detail)
        .header("authorization", format!("Bearer {SEARCH_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"labels\":[\"x\"]}")))
        .unwrap();
    assert_eq!(h.client.send(request).await.status, 200);
    assert_eq!(
        h.client.get(detail, SEARCH_KEY).await.header("x-cache"),
        "MISS"
    );
    // Other namespace and other retriever untouched.
    assert_eq!(
        get_ns(&h.client, detail, SEARCH_KEY, "staging")
            .await
            .header("x-cache"),
        "HIT"
    );
    assert_eq!(
        h.client.get(other, SEARCH_KEY).await.header("x-cache"),
        "HIT"
    );

    // DELETE a retriever drops everything below it.
    let request = h
        .client
        .request(Method::DELETE, "/v1/retrievers/ret_2")
        .header("authorization", format!("Bearer {SEARCH_KEY}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(h.client.send(request).await.status, 200);
    assert_eq!(
        h.client.get(other, SEARCH_KEY).await.header("x-cache"),
        "MISS"
    );
    assert_eq!(
        h.client.get(detail, SEARCH_KEY).await.header("x-cache"),
        "HIT"
    );
    assert_eq!(
        get_ns(&h.client, other, SEARCH_KEY, "staging")
            .await
            .header("x-cache"),
        "HIT"
    );
}

#[tokio::test]
async fn list_queries_do_not_invalidate() {
    let h = Harness::start().await;
    let path = "/v1/retrievers/executions/exec_1";
    h.client.get(path, SEARCH_KEY).await;
    h.client
        .post("/v1/retrievers/executions/list", SEARCH_KEY, "{}")
        .await;
    h.client
        .post("/v1/retrievers/execute", SEARCH_KEY, "{\"inputs\":{}}")
        .await;
    assert_eq!(
        h.client.get(path, SEARCH_KEY).await.header("x-cache"),
        "HIT"
    );
}

#[tokio::test]
async fn no_cache_skips_the_lookup_and_refreshes_the_entry() {
    let h = Harness::start().await;
    let path = "/v1/retrievers/executions/exec_8";
    h.client.get(path, SEARCH_KEY).await;
    assert_eq!(
        h.client.get(path, SEARCH_KEY).await.header("x-cache"),
        "HIT"
    );
    let request = h
        .client
        .request(Method::GET, path)
        .header("authorization", format!("Bearer {SEARCH_KEY}"))
        .header("cache-control", "no-cache")
        .body(Full::default())
        .unwrap();
    let key = mixpeek_gateway::cache::CacheKey::detail("ns_search", path.to_string());
    let stored_before = h.gateway.state.cache.store.get(&key).unwrap().body;
    let refreshed = h.client.send(request).await;
    assert_eq!(refreshed.header("x-cache"), "MISS");
    assert_eq!(h.sim.count(DETAIL), 2);
    let stored_after = h.gateway.state.cache.store.get(&key).unwrap().body;
    // A refreshed entry holds a new copy (the old one is still alive here,
    // so its address cannot be reused).
    assert_eq!(stored_after, stored_before);
    assert!(
        !std::ptr::eq(stored_after.as_ptr(), stored_before.as_ptr()),
        "the entry was refreshed"
    );
    let after = h.client.get(path, SEARCH_KEY).await;
    assert_eq!(after.header("x-cache"), "HIT");
    assert_eq!(after.body, refreshed.body);
    assert_eq!(h.sim.count(DETAIL), 2);
}

#[tokio::test]
async fn byte_bound_holds_when_twice_max_bytes_are_fetched() {
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let max_bytes = 64 * 1024;
    let toml =
        config_toml(&sim.base_url(), "", "") + &format!("\n[cache]\nmax_bytes = {max_bytes}\n");
    let gateway = mixpeek_gateway::server::spawn(config(&toml)).await.unwrap();
    let client = TestClient::new(gateway.url());
    let mut fetched = 0u64;
    let mut i = 0;
    while fetched < 2 * max_bytes {
        let reply = client
            .get(&format!("/v1/retrievers/executions/exec_{i}"), SEARCH_KEY)
            .await;
        assert_eq!(reply.status, 200);
        fetched += reply.body.len() as u64;
        i += 1;
    }
    let store = &gateway.state.cache.store;
    store.run_pending_tasks();
    assert!(
        store.weighted_bytes() <= max_bytes,
        "{} > {max_bytes}",
        store.weighted_bytes()
    );
    assert!(store.evictions() > 0);
    assert!(store.entry_count() < i);
}

#[tokio::test]
async fn oversized_responses_stream_to_their_client_and_waiters_retry_alone() {
    let h = Harness::with(slow_sim(200), "", "").await;
    h.gateway.state.cache.set_share_limit(1000);
    let direct = h
        .client
        .post("/v1/retrievers/executions/list", SEARCH_KEY, "{}")
        .await;
    assert!(direct.body.len() > 1000);
    assert_eq!(h.sim.count(LIST), 1);
    let replies = join_all((0..5).map(|_| {
        h.client
            .post("/v1/retrievers/executions/list", SEARCH_KEY, "{}")
    }))
    .await;
    for reply in &replies {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, direct.body);
        assert_eq!(reply.header("x-cache"), "MISS");
    }
    // One call started the flight, each waiter then called on its own.
    assert_eq!(h.sim.count(LIST), 1 + 5);
}

#[tokio::test]
async fn admin_api_needs_the_admin_key_and_drops_entries() {
    let admin_key = "admin_3f9a1c";
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(admin_key.as_bytes()))
    };
    let h = Harness::with(
        SimConfig::new(REAL_KEY),
        &format!("admin_key_sha256 = \"{digest}\""),
        "",
    )
    .await;
    let path = "/v1/retrievers/executions/exec_1";
    h.client.get(path, SEARCH_KEY).await;
    let delete = |path: &str, key: Option<&str>| {
        let mut request = h.client.request(Method::DELETE, path);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        h.client.send(request.body(Full::default()).unwrap())
    };
    // No key, a client's key, a wrong key: 404, nothing happens.
    for key in [None, Some(SEARCH_KEY), Some("admin_wrong")] {
        delete("/_gateway/cache", key)
            .await
            .assert_error(404, "not_found");
    }
    assert_eq!(
        h.client.get(path, SEARCH_KEY).await.header("x-cache"),
        "HIT"
    );
    // One entry.
    let reply = delete(
        "/_gateway/cache/ns_search/v1/retrievers/executions/exec_1",
        Some(admin_key),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["removed"], true);
    assert_eq!(
        h.client.get(path, SEARCH_KEY).await.header("x-cache"),
        "MISS"
    );
    // A trailing slash names no entry: 404, not "everything".
    h.client.get(path, SEARCH_KEY).await;
    delete("/_gateway/cache/", Some(admin_key))
        .await
        .assert_error(404, "not_found");
    assert_eq!(
        h.client.get(path, SEARCH_KEY).await.header("x-cache"),
        "HIT"
    );
    // Everything.
    assert_eq!(delete("/_gateway/cache", Some(admin_key)).await.status, 200);
    assert_eq!(
        h.client.get(path, SEARCH_KEY).await.header("x-cache"),
        "MISS"
    );
    assert_eq!(h.sim.count(DETAIL), 3);
}

#[tokio::test]
async fn admin_api_is_404_when_not_configured() {
    let h = Harness::start().await;
    let request = h
        .client
        .request(Method::DELETE, "/_gateway/cache")
        .header("authorization", format!("Bearer {SEARCH_KEY}"))
        .body(Full::default())
        .unwrap();
    h.client.send(request).await.assert_error(404, "not_found");
    assert_eq!(h.sim.total(), 0);
}
