//! Live reload of clients and the status page.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use http_body_util::Full;
use mixpeek_gateway::sim::SimConfig;
use sha2::{Digest, Sha256};
use support::*;

const ADMIN_KEY: &str = "admin_reload_1";
const NEW_KEY: &str = "gw_new_team_key";

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A config with the admin key and the given `[[clients]]` (name, key, namespace).
fn config_file(
    name: &str,
    upstream: &str,
    listen: &str,
    clients: &[(&str, &str, &str)],
) -> PathBuf {
    let mut text = format!(
        "[server]\nlisten = \"{listen}\"\nadmin_key_sha256 = \"{}\"\n\n[upstream]\nbase_url = \"{upstream}\"\napi_key_env = \"TEST_MIXPEEK_API_KEY\"\n",
        digest(ADMIN_KEY)
    );
    for (client, key, ns) in clients {
        text.push_str(&format!(
            "\n[[clients]]\nname = \"{client}\"\nkey_sha256 = \"{}\"\nnamespace = \"{ns}\"\n",
            digest(key)
        ));
    }
    let dir = std::env::temp_dir().join(format!("mixpeek-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn reload(client: &TestClient, key: &str) -> Reply {
    let request = client
        .request(Method::POST, "/_gateway/reload")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::default())
        .unwrap();
    client.send(request).await
}

#[tokio::test]
async fn reload_swaps_clients_keeps_cache_and_refuses_broken_files() {
    // Config::load reads the real key from the environment; every test in
    // this binary sets the same value.
    std::env::set_var("TEST_MIXPEEK_API_KEY", REAL_KEY);
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let path = config_file(
        "swap.toml",
        &sim.base_url(),
        "127.0.0.1:0",
        &[("search-team", SEARCH_KEY, "ns_search")],
    );
    let gateway = mixpeek_gateway::server::spawn_from_file(&path)
        .await
        .unwrap();
    let client = TestClient::new(gateway.url());
    let detail = "/v1/retrievers/executions/exec_r1";
    assert_eq!(
        client.get(detail, SEARCH_KEY).await.header("x-cache"),
        "MISS"
    );
    assert_eq!(client.get(detail, NEW_KEY).await.status, 401);

    // Only the admin key may reload; others see nothing there.
    reload(&client, SEARCH_KEY)
        .await
        .assert_error(404, "not_found");

    // Swap: search-team out, new-team (same namespace) in.
    config_file(
        "swap.toml",
        &sim.base_url(),
        "127.0.0.1:0",
        &[("new-team", NEW_KEY, "ns_search")],
    );
    let reply = reload(&client, ADMIN_KEY).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["clients"], 1);
    assert_eq!(reply.json()["restart_required"], serde_json::json!([]));
    client
        .get(detail, SEARCH_KEY)
        .await
        .assert_error(401, "unauthorized");
    let after = client.get(detail, NEW_KEY).await;
    assert_eq!(after.status, 200);
    assert_eq!(
        after.header("x-cache"),
        "HIT",
        "the cache survives a reload"
    );

    // A broken file is refused and changes nothing.
    std::fs::write(&path, "[server]\nlisten_on = 1\n").unwrap();
    let refused = reload(&client, ADMIN_KEY).await;
    refused.assert_error(400, "bad_request");
    assert!(refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("listen_on"));
    assert_eq!(client.get(detail, NEW_KEY).await.status, 200);
    client
        .get(detail, SEARCH_KEY)
        .await
        .assert_error(401, "unauthorized");

    // Keys that need a restart are reported, the clients still applied.
    config_file(
        "swap.toml",
        &sim.base_url(),
        "127.0.0.1:1",
        &[
            ("new-team", NEW_KEY, "ns_search"),
            ("search-team", SEARCH_KEY, "ns_search"),
        ],
    );
    let reply = reload(&client, ADMIN_KEY).await;
    assert_eq!(
        reply.json()["restart_required"],
        serde_json::json!(["server.listen"])
    );
    assert_eq!(client.get(detail, SEARCH_KEY).await.status, 200);
    assert_eq!(sim.count("GET /v1/retrievers/executions/{id}"), 1);
}

#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let listen = closed_port().await.to_string();
    let path = config_file(
        "hup.toml",
        &sim.base_url(),
        &listen,
        &[("search-team", SEARCH_KEY, "ns_search")],
    );
    let mut process = Process::serve(&path, None).await;
    let client = TestClient::new(format!("http://{listen}"));
    assert_eq!(client.get("/v1/collections", NEW_KEY).await.status, 401);
    config_file(
        "hup.toml",
        &sim.base_url(),
        &listen,
        &[("new-team", NEW_KEY, "ns_new")],
    );
    process.signal("-HUP");
    assert!(process.wait_for("config reloaded").await.is_some());
    let reply = client.get("/v1/collections", NEW_KEY).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-echo-namespace"), "ns_new");
    assert_eq!(client.get("/v1/collections", SEARCH_KEY).await.status, 401);
    process.signal("-TERM");
    assert_eq!(process.exit_code().await, Some(0));
}

#[tokio::test]
async fn status_page_shows_the_counters() {
    let h = Harness::start().await;
    let detail = "/v1/retrievers/executions/exec_s1";
    h.client.get(detail, SEARCH_KEY).await; // MISS
    h.client.get(detail, SEARCH_KEY).await; // HIT
    h.client.get(detail, SEARCH_KEY).await; // HIT
    h.client.get("/v1/collections", ADS_KEY).await; // BYPASS
    h.gateway.state.cache.store.run_pending_tasks();
    // Figures are recorded once a response body is done; read until settled.
    let mut html = String::new();
    for _ in 0..200 {
        let page = h.client.get("/_gateway/status", "").await;
        assert_eq!(page.status, 200);
        assert!(page.header("content-type").starts_with("text/html"));
        html = String::from_utf8(page.body.to_vec()).unwrap();
        if html.contains("<td>search-team</td><td>3</td><td>2</td><td>0</td>") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cache = &h.gateway.state.cache.metrics;
    assert_eq!(cache.hits.sum(), 2);
    assert!(
        html.contains("<td>search-team</td><td>3</td><td>2</td><td>0</td>"),
        "{html}"
    );
    assert!(
        html.contains("<td>ads-team</td><td>1</td><td>0</td><td>0</td>"),
        "{html}"
    );
    assert!(html.contains(r#"<td id="hit-ratio">66.7%</td>"#), "{html}");
    assert!(html.contains(r#"<td id="saved">2</td>"#), "{html}");
    assert!(html.contains(r#"<td id="entries">1</td>"#), "{html}");
    assert!(html.contains(r#"<td id="upstream">serving</td>"#), "{html}");
    assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("https://"));
}

#[tokio::test]
async fn status_page_needs_the_admin_key_when_one_is_set() {
    let h = Harness::with(
        SimConfig::new(REAL_KEY),
        &format!("admin_key_sha256 = \"{}\"", digest(ADMIN_KEY)),
        "",
    )
    .await;
    h.client
        .get("/_gateway/status", "")
        .await
        .assert_error(404, "not_found");
    h.client
        .get("/_gateway/status", SEARCH_KEY)
        .await
        .assert_error(404, "not_found");
    assert_eq!(
        h.client.get("/_gateway/status", ADMIN_KEY).await.status,
        200
    );
}

#[tokio::test]
async fn reload_applies_rate_limits_and_keeps_unchanged_ones() {
    std::env::set_var("TEST_MIXPEEK_API_KEY", REAL_KEY);
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let path = config_file(
        "limits.toml",
        &sim.base_url(),
        "127.0.0.1:0",
        &[("search-team", SEARCH_KEY, "ns_search")],
    );
    let gateway = mixpeek_gateway::server::spawn_from_file(&path)
        .await
        .unwrap();
    let client = TestClient::new(gateway.url());
    for _ in 0..5 {
        assert_eq!(client.get("/v1/collections", SEARCH_KEY).await.status, 200);
    }
    // Give search-team a limit of 1 request per minute-ish (1 rps, burst 1).
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("rate_limit = { requests_per_second = 1, burst = 1 }\n");
    std::fs::write(&path, text).unwrap();
    assert_eq!(reload(&client, ADMIN_KEY).await.status, 200);
    assert_eq!(client.get("/v1/collections", SEARCH_KEY).await.status, 200);
    let limited = client.get("/v1/collections", SEARCH_KEY).await;
    limited.assert_error(429, "rate_limited");
    assert_eq!(limited.header("x-ratelimit-limit"), "1");
    // Reloading the same file keeps the spent burst: still limited.
    assert_eq!(reload(&client, ADMIN_KEY).await.status, 200);
    client
        .get("/v1/collections", SEARCH_KEY)
        .await
        .assert_error(429, "rate_limited");
}
